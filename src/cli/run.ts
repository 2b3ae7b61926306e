// `portferry run`: load every mapping, bind every listener (or none), log `ready`, serve until
// SIGTERM/SIGINT, drain for --drain-timeout, exit 0.
import type { Command } from 'commander';
import type { Mapping } from '../api.js';
import { DEFAULTS } from '../config/defaults.js';
import { formatHostPort, throwIfProblems } from '../config/validate.js';
import { PortferryError } from '../errors.js';
import { NetnsDialer, validateNetnsPath } from '../netns/helper.js';
import { createLogger, type Logger, type LogFormat, type LogLevel } from '../log.js';
import { DirectDialer, type Dialer } from '../proxy/dialer.js';
import { Manager } from '../proxy/manager.js';
import { EXIT_OK, describeMapping, durationArg, loadFromFlags, logFormatArg, logLevelArg, mappingOptions, reportError, type MappingFlags } from './common.js';

export interface Forwarder {
  readonly manager: Manager;
  /** Drains (graceMs) then closes everything. */
  stop(graceMs: number): Promise<void>;
}

/** Dialers per mapping: direct, or one shared namespace dialer per netns path. */
export function makeDialerFor(logger: Logger): { dialerFor: (m: Mapping) => Dialer; closeAll: () => Promise<void> } {
  const direct = new DirectDialer();
  const byNetns = new Map<string, Dialer>();
  return {
    dialerFor(m: Mapping): Dialer {
      if (m.netns === null) return direct;
      const existing = byNetns.get(m.netns);
      if (existing !== undefined) return existing;
      const userns = usernsFor(m.netns);
      const dialer = new NetnsDialer({ netnsPath: m.netns, logger, ...(userns !== undefined ? { userns } : {}) });
      byNetns.set(m.netns, dialer);
      return dialer;
    },
    async closeAll(): Promise<void> {
      await Promise.all([...byNetns.values()].map((d) => d.close()));
    },
  };
}

/**
 * Rootless: a namespace of another process (/proc/PID/ns/net) is owned by that process's user
 * namespace, which an unprivileged forwarder must enter too (as rootlesskit's child does).
 */
function usernsFor(netnsPath: string): string | undefined {
  if (process.getuid?.() === 0) return undefined;
  const m = /^\/proc\/(\d+)\/ns\/net$/.exec(netnsPath);
  return m === null ? undefined : `/proc/${m[1]}/ns/user`;
}

/** Every distinct netns path must be a network namespace before anything is bound. */
async function checkNetnsPaths(mappings: readonly Mapping[]): Promise<void> {
  const paths = [...new Set(mappings.flatMap((m) => (m.netns === null ? [] : [m.netns])))];
  const problems: PortferryError[] = [];
  for (const p of paths) {
    try {
      await validateNetnsPath(p);
    } catch (err) {
      problems.push(err instanceof PortferryError ? err : new PortferryError('PF_NETNS_INVALID', `${p}: ${String(err)}`));
    }
  }
  throwIfProblems(problems);
}

/** Binds every mapping and logs `ready`. Throws (a PortferryError) with nothing left bound. */
export async function startForwarder(mappings: readonly Mapping[], logger: Logger): Promise<Forwarder> {
  await checkNetnsPaths(mappings);
  const dialers = makeDialerFor(logger);
  const manager = new Manager({ logger, dialerFor: dialers.dialerFor });
  try {
    await manager.add(mappings);
  } catch (err) {
    await dialers.closeAll();
    throw err;
  }
  const listening = manager.listeners().map((l) => {
    const a = l.address() ?? l.binding.host;
    return `${l.binding.mapping.protocol} ${formatHostPort(a.ip, a.port)} -> ${formatHostPort(l.binding.container.ip, l.binding.container.port)}`;
  });
  logger.info({ mappings: mappings.map(describeMapping), bound: listening.length, listeners: listening.length <= 20 ? listening : [...listening.slice(0, 20), `… and ${listening.length - 20} more`] }, 'ready');
  return {
    manager,
    async stop(graceMs: number): Promise<void> {
      await manager.close(graceMs);
      await dialers.closeAll();
    },
  };
}

interface RunFlags extends MappingFlags {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly drainTimeout: number;
}

export function registerRunCommand(program: Command): void {
  const cmd = program
    .command('run')
    .description('forward the given mappings until SIGTERM/SIGINT');
  mappingOptions(cmd)
    .option('--drain-timeout <duration>', 'on SIGTERM/SIGINT, let open connections finish for this long', durationArg, DEFAULTS.drainTimeoutMs)
    .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent', logLevelArg, 'info')
    .option('--log-format <format>', 'json (default) or pretty', logFormatArg, 'json')
    .action(async (flags: RunFlags) => {
      const logger = createLogger({ level: flags.logLevel, format: flags.logFormat });
      let forwarder: Forwarder;
      try {
        forwarder = await startForwarder(await loadFromFlags(flags), logger);
      } catch (err) {
        process.exitCode = reportError(err);
        logger.flush();
        return;
      }
      let stopping = false;
      const onSignal = (signal: NodeJS.Signals): void => {
        if (stopping) {
          logger.warn({ signal }, 'second signal: closing every connection now');
          forwarder.manager.destroy();
          return;
        }
        stopping = true;
        logger.info({ signal, drainTimeoutMs: flags.drainTimeout }, 'stopping: no new connections; open ones may finish');
        void forwarder.stop(flags.drainTimeout).then(() => {
          logger.info('stopped');
          logger.flush();
          process.exit(EXIT_OK);
        });
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    });
}
