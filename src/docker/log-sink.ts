// Where portferry-docker-proxy's log lines go: dockerd points stdout and stderr at /dev/null, so the
// config file names a file and/or syslog (default: syslog, when the host has one).
//
// Syslog without a library: /dev/log is a unix datagram socket and Node has no unix datagram
// sockets, so lines are handed to util-linux `logger(1)`: one short-lived process per burst of
// lines, one at a time, at most MAX_QUEUED lines waiting (more are dropped and counted). With the
// default level (error) that is nothing at all until something goes wrong.
import { commandOnPath, execCommand } from '../exec.js';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import type { DestinationStream } from 'pino';
import { PortferryError, errnoCode } from '../errors.js';
import type { LogSettings } from './config.js';

const LOGGER_TIMEOUT_MS = 5_000;
const TAG = 'portferry-docker-proxy';
const DEV_LOG = '/dev/log';
const MAX_QUEUED = 200;
/** pino level number → syslog priority. */
const PRIORITY: Readonly<Record<string, string>> = { '10': 'debug', '20': 'debug', '30': 'info', '40': 'warning', '50': 'err', '60': 'crit' };

export interface LogSink {
  /** Null: log nothing. */
  readonly destination: DestinationStream | null;
  /** Waits (bounded) until queued lines are written. */
  flush(timeoutMs: number): Promise<void>;
}

/** The `logger` program on PATH, when /dev/log exists too; else null. */
function findSyslog(env: NodeJS.ProcessEnv = process.env): string | null {
  return existsSync(DEV_LOG) && commandOnPath('logger', env['PATH']) ? 'logger' : null;
}

/** Log lines to the syslog socket `socket` through the `logger` program at `logger`. */
export class SyslogDestination implements DestinationStream {
  private readonly queue: { priority: string; line: string }[] = [];
  private running = false;
  private dropped = 0;
  private idle: (() => void)[] = [];

  constructor(
    private readonly logger: string,
    private readonly socket: string = DEV_LOG,
  ) {}

  write(line: string): void {
    if (this.queue.length >= MAX_QUEUED) {
      this.dropped++;
      return;
    }
    const level = /"level":(\d+)/.exec(line)?.[1] ?? '30';
    this.queue.push({ priority: PRIORITY[level] ?? 'info', line: line.trimEnd() });
    if (!this.running) this.next();
  }

  /** Sends the longest run of queued lines that share a priority through one `logger` process. */
  private next(): void {
    const first = this.queue[0];
    if (first === undefined) {
      this.running = false;
      for (const resolve of this.idle.splice(0)) resolve();
      return;
    }
    this.running = true;
    let n = 1;
    while (this.queue[n]?.priority === first.priority) n++;
    const lines = this.queue.splice(0, n).map((e) => e.line);
    if (this.dropped > 0) {
      lines.push(`{"msg":"${this.dropped} log lines dropped: syslog could not keep up"}`);
      this.dropped = 0;
    }
    // Bounded: a `logger` that hangs is killed, and the queue moves on.
    void execCommand([this.logger, '-u', this.socket, `--id=${process.pid}`, '-t', TAG, '-p', `daemon.${first.priority}`], { input: `${lines.join('\n')}\n`, timeoutMs: LOGGER_TIMEOUT_MS }).then(() => this.next());
  }

  flush(timeoutMs: number): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Opens the configured destinations. Throws PF_CONFIG_VALUE when the log file cannot be opened. */
export function openLogSink(settings: LogSettings, configFile: string | null, env: NodeJS.ProcessEnv = process.env): LogSink {
  const targets: DestinationStream[] = [];
  if (settings.file !== null) {
    let fd: number;
    try {
      fd = openSync(settings.file, 'a', 0o640);
    } catch (err) {
      throw new PortferryError('PF_CONFIG_VALUE', `${configFile ?? 'config'}: log.file: cannot open ${settings.file}: ${errnoCode(err) ?? String(err)}`, {
        cause: err,
        hint: "Create the file's directory and make it writable by dockerd's user, or remove log.file.",
      });
    }
    process.once('exit', () => closeSync(fd));
    targets.push({ write: (line: string) => void writeSync(fd, line) });
  }
  const syslog = settings.syslog ?? settings.file === null;
  const logger = syslog && settings.level !== 'silent' ? findSyslog(env) : null;
  const sys = logger === null ? null : new SyslogDestination(logger);
  if (sys !== null) targets.push(sys);
  const flush = (timeoutMs: number): Promise<void> => sys?.flush(timeoutMs) ?? Promise.resolve();
  if (targets.length === 0 || settings.level === 'silent') return { destination: null, flush };
  if (targets.length === 1) return { destination: targets[0] as DestinationStream, flush };
  return { destination: { write: (line: string) => targets.forEach((t) => t.write(line)) }, flush };
}
