// `portferry run`: load every mapping, bind every listener (or none), log `ready`, serve until
// SIGTERM/SIGINT, drain for --drain-timeout, exit 0.
import type { Command } from 'commander';
import type { Mapping } from '../api.js';
import { DEFAULTS } from '../config/defaults.js';
import { formatHostPort } from '../config/validate.js';
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
      void logger;
      throw new Error('netns dialer not wired yet');
    },
    async closeAll(): Promise<void> {
      await Promise.all([...byNetns.values()].map((d) => d.close()));
    },
  };
}

/** Binds every mapping and logs `ready`. Throws (a PortferryError) with nothing left bound. */
export async function startForwarder(mappings: readonly Mapping[], logger: Logger): Promise<Forwarder> {
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
