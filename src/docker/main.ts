// portferry-docker-proxy: dockerd's userland proxy contract on portferry's data path.
//
// dockerd runs one of these per published host port and address family (moby
// daemon/libnetwork/portmapper/proxy_linux.go): argv in Go flag syntax (./argv.ts), fd 3 a pipe on
// which we write `0\n` once serving or `1\n<message>` (then exit non-zero; docker prints the
// message as "Error starting userland proxy: …"), and with -use-listen-fd (docker ≥ 28) fd 4 the
// socket dockerd bound: adopt it, bind nothing. stdout/stderr are /dev/null; SIGINT stops us and
// dockerd waits without a timeout, so the drain is bounded. One listener, the same TcpListener /
// UdpListener and DirectDialer as `portferry run`; no CLI framework, no YAML unless a config exists.
import { closeSync, fstatSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import type { Listener } from '../api.js';
import { formatEndpoint, formatHostPort } from '../addr.js';
import { expandBindings } from '../config/validate.js';
import { PortferryError } from '../errors.js';
import { selfTest } from '../internals.js';
import { createLogger, silentLogger, type Logger } from '../log.js';
import { DirectDialer } from '../proxy/dialer.js';
import { TcpListener } from '../proxy/tcp.js';
import { UdpListener } from '../proxy/udp.js';
import { parseDockerProxyArgv, USAGE, type DockerProxyArgs } from './argv.js';
import { DEFAULT_CONFIG, loadDockerProxyConfig, mappingFor, type DockerProxyConfig } from './config.js';
import { openLogSink, type LogSink } from './log-sink.js';

const STATUS_FD = 3;
const LISTEN_FD = 4;
const FLUSH_MS = 1_000;

/**
 * What fd `fd` is, when our parent passed it: 'socket', 'pipe' or 'other'; null when it is not open
 * or belongs to this process. Node marks inherited descriptors close-on-exec at startup, so that
 * flag cannot tell them apart; the kind can: libuv opens an epoll fd, eventfds and pipes of which it
 * holds both ends, never a socket and never the lone write end of a pipe (dockerd's status pipe).
 */
function passedFd(fd: number): 'socket' | 'pipe' | 'other' | null {
  const target = (n: number | string): string | null => {
    try {
      return readlinkSync(`/proc/self/fd/${n}`);
    } catch {
      return null;
    }
  };
  const mine = target(fd);
  if (mine === null) {
    if (target('self') !== null || target(0) !== null) return null; // /proc works: not open
    try {
      const st = fstatSync(fd); // no /proc: go by the file type alone
      return st.isSocket() ? 'socket' : st.isFIFO() ? 'pipe' : null;
    } catch {
      return null;
    }
  }
  if (mine.startsWith('socket:')) return 'socket';
  if (mine.startsWith('anon_inode:')) return null;
  if (!mine.startsWith('pipe:')) return 'other';
  const others = readdirSync('/proc/self/fd').filter((n) => n !== String(fd) && target(n) === mine);
  return others.length === 0 ? 'pipe' : null;
}

/** One line for dockerd ("Error starting userland proxy: <this>"). */
function statusMessage(err: PortferryError): string {
  if (err.problems.length === 0) return `${err.code}: ${err.message} (hint: ${err.hint})`;
  return `${err.code}: ${err.message}: ${err.problems.map((p) => `${p.code}: ${p.message}`).join('; ')}`;
}

function asPortferryError(err: unknown): PortferryError {
  if (err instanceof PortferryError) return err;
  return new PortferryError('PF_BIND_FAILED', err instanceof Error ? err.message : String(err), { cause: err });
}

/** Writes the status to fd 3 once (when dockerd gave us one) and closes it. */
function report(text: string): void {
  if (passedFd(STATUS_FD) === null) return;
  try {
    writeSync(STATUS_FD, text);
  } catch {
    // dockerd stopped waiting (EPIPE): nothing to tell
  }
  try {
    closeSync(STATUS_FD);
  } catch {
    // already closed
  }
}

async function failStart(err: unknown, logger: Logger, sink: LogSink | null): Promise<never> {
  const e = asPortferryError(err);
  report(`1\n${statusMessage(e)}`);
  process.stderr.write(`${e.format()}\n`);
  logger.error({ code: e.code, err: e.message }, 'portferry-docker-proxy could not start');
  await sink?.flush(FLUSH_MS);
  process.exit(1);
}

function listenFdError(message: string): PortferryError {
  return new PortferryError('PF_LISTEN_FD', message);
}

async function startListener(args: DockerProxyArgs, config: DockerProxyConfig, logger: Logger): Promise<{ listener: Listener; dialer: DirectDialer }> {
  const mapping = mappingFor(args, config);
  const binding = expandBindings(mapping)[0];
  if (binding === undefined) throw new PortferryError('PF_NO_MAPPINGS', 'no binding for the given arguments');
  const child = logger.child({ mapping: mapping.name, proto: mapping.protocol, host: formatEndpoint(binding.host), target: formatEndpoint(binding.container) });
  const dialer = new DirectDialer();
  let fd: { fd?: number } = {};
  if (args.useListenFd) {
    const kind = passedFd(LISTEN_FD);
    if (kind !== 'socket') throw listenFdError(`-use-listen-fd was given but fd ${LISTEN_FD} is ${kind === null ? 'not open' : `a ${kind}, not a socket`}`);
    fd = { fd: LISTEN_FD };
  }
  const listener: Listener = mapping.protocol === 'tcp' ? new TcpListener(binding, { dialer, logger: child, ...fd }) : new UdpListener(binding, { dialer, logger: child, ...fd });
  try {
    await listener.listen();
  } catch (err) {
    listener.destroy();
    throw args.useListenFd ? listenFdError(`cannot use the ${mapping.protocol} socket on fd ${LISTEN_FD}: ${asPortferryError(err).message}`) : err;
  }
  const bound = listener.address();
  if (args.useListenFd && bound?.port !== args.hostPort) {
    listener.destroy();
    throw listenFdError(`the socket on fd ${LISTEN_FD} is bound to ${bound === null ? 'nothing' : formatEndpoint(bound)}, not to ${formatHostPort(args.hostIP, args.hostPort)} as -host-ip/-host-port say`);
  }
  return { listener, dialer };
}

export async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  let args: DockerProxyArgs;
  try {
    const parsed = parseDockerProxyArgv(argv);
    if (parsed.kind === 'help' || parsed.kind === 'version') {
      process.stdout.write(parsed.kind === 'help' ? `${USAGE}\n` : `portferry-docker-proxy ${(await import('../version.js')).VERSION}\n`);
      return;
    }
    args = parsed.args;
  } catch (err) {
    const sink = safeSink(DEFAULT_CONFIG, env);
    return failStart(err, loggerFor(DEFAULT_CONFIG, sink), sink);
  }

  let config = DEFAULT_CONFIG;
  let sink: LogSink | null = null;
  let logger = silentLogger();
  try {
    config = await loadDockerProxyConfig(env);
    sink = openLogSink(config.log, config.file, env);
    logger = loggerFor(config, sink);
  } catch (err) {
    sink ??= safeSink(DEFAULT_CONFIG, env);
    return failStart(err, loggerFor(DEFAULT_CONFIG, sink), sink);
  }

  let started: { listener: Listener; dialer: DirectDialer };
  try {
    started = await startListener(args, config, logger);
  } catch (err) {
    return failStart(err, logger, sink);
  }
  const { listener, dialer } = started;
  const logSink = sink;
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      listener.destroy();
      return;
    }
    stopping = true;
    logger.info({ signal, drainTimeoutMs: config.drainTimeoutMs }, 'stopping');
    // Bounded whatever happens: dockerd waits for us without a timeout.
    setTimeout(() => process.exit(0), config.drainTimeoutMs + FLUSH_MS).unref();
    void listener.close(config.drainTimeoutMs).then(async () => {
      await dialer.close();
      logger.info({ stats: listener.stats() }, 'stopped');
      await logSink.flush(FLUSH_MS);
      process.exit(0);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'portferry-docker-proxy crashed');
    void logSink.flush(FLUSH_MS).then(() => process.exit(1));
  });

  // Only now: a SIGINT from dockerd right after `0\n` must find the handler installed.
  report('0\n');
  logger.info({ listening: formatEndpoint(listener.address() ?? listener.binding.host), target: formatEndpoint(listener.binding.container), config: config.file, adopted: args.useListenFd }, 'ready');
  // The data path's fast paths are checked structurally before use; the loopback probe `run` makes
  // before binding runs here after readiness, so it adds nothing to dockerd's wait.
  void selfTest().then((fastPaths) => {
    for (const [name, status] of Object.entries(fastPaths)) {
      if (!status.on) logger.warn({ fastPath: name, why: status.why }, 'a fast path of the data path is off; the public Node API is used instead (slower, same bytes)');
    }
  });
}

function loggerFor(config: DockerProxyConfig, sink: LogSink): Logger {
  return sink.destination === null ? silentLogger() : createLogger({ level: config.log.level, destination: sink.destination });
}

function safeSink(config: DockerProxyConfig, env: NodeJS.ProcessEnv): LogSink {
  try {
    return openLogSink(config.log, config.file, env);
  } catch {
    return { destination: null, flush: () => Promise.resolve() };
  }
}
