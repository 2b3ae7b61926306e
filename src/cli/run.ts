// `portferry run`: load every mapping, bind every listener (or none), log `ready`, serve until
// SIGTERM/SIGINT, drain for --drain-timeout, exit 0.
import cluster from 'node:cluster';
import os from 'node:os';
import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULTS } from '../config/defaults.js';
import { createLogger, type LogFormat, type LogLevel } from '../log.js';
import { startForwarder, type Forwarder } from './forwarder.js';
import { runWithWorkers, runWorker } from './workers.js';
import { EXIT_OK, durationArg, loadFromFlags, logFormatArg, logLevelArg, mappingOptions, reportError, type MappingFlags } from './common.js';

interface RunFlags extends MappingFlags {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly drainTimeout: number;
  readonly workers: number;
}

function workersArg(value: string): number {
  if (value === 'auto') return os.availableParallelism();
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InvalidArgumentError('use a whole number from 1 to 64, or auto (one per CPU)');
  return n;
}

export function registerRunCommand(program: Command): void {
  const cmd = program
    .command('run')
    .description('forward the given mappings until SIGTERM/SIGINT');
  mappingOptions(cmd)
    .option('--drain-timeout <duration>', 'on SIGTERM/SIGINT, let open connections finish for this long', durationArg, DEFAULTS.drainTimeoutMs)
    .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent', logLevelArg, 'info')
    .option('--log-format <format>', 'json (default) or pretty', logFormatArg, 'json')
    .option('--workers <n>', 'TCP worker processes sharing each listening socket (auto: one per CPU); UDP stays in the main process', workersArg, 1)
    .action(async (flags: RunFlags) => {
      if (cluster.isWorker) {
        runWorker(createLogger({ level: flags.logLevel, format: flags.logFormat }).child({ worker: cluster.worker?.id }));
        return;
      }
      const logger = createLogger({ level: flags.logLevel, format: flags.logFormat });
      let forwarder: Forwarder;
      try {
        const mappings = await loadFromFlags(flags);
        if (flags.workers > 1 && mappings.some((m) => m.protocol === 'tcp')) {
          await runWithWorkers(mappings, { workers: flags.workers, drainTimeoutMs: flags.drainTimeout }, logger);
          return;
        }
        forwarder = await startForwarder(mappings, logger);
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
