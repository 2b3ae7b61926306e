// `portferry run`: parse argv, then hand everything to the forwarder service (src/forwarder):
// bind every mapping (or none), restore the state file, serve the runtime API and metrics, log
// `ready`, serve until SIGTERM/SIGINT, drain for --drain-timeout, exit 0. SIGHUP reloads the
// command line's mappings (-p and the -c file) without touching the others.
import cluster from 'node:cluster';
import os from 'node:os';
import { InvalidArgumentError, type Command } from 'commander';
import type { Mapping } from '../api.js';
import { DEFAULTS } from '../config/defaults.js';
import { defaultApiSocket } from '../control/client.js';
import { startApiServer, type ApiServer } from '../control/server.js';
import { PortferryError, isPortferryError } from '../errors.js';
import { Forwarder } from '../forwarder/forwarder.js';
import { logReady } from '../forwarder/ready.js';
import { WorkerEngine, runWorker } from '../forwarder/workers.js';
import { createLogger, type LogFormat, type LogLevel, type Logger } from '../log.js';
import { EXIT_FAILURE, EXIT_OK, durationArg, loadFromFlags, logFormatArg, logLevelArg, mappingOptions, reportError, type MappingFlags } from './common.js';
import { VERSION } from '../version.js';

interface RunFlags extends MappingFlags {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly drainTimeout: number;
  readonly workers: number;
  readonly api?: string | true;
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
    .description('forward the given mappings until SIGTERM/SIGINT; with --api, take more at runtime');
  mappingOptions(cmd)
    .option('--api [path]', `serve the runtime API on this unix socket (rootlesskit-compatible /v1/ports and native /v1/mappings; default ${defaultApiSocket()})`)
    .option('--drain-timeout <duration>', 'on SIGTERM/SIGINT, let open connections finish for this long (default: 10s)', durationArg, DEFAULTS.drainTimeoutMs)
    .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent', logLevelArg, 'info')
    .option('--log-format <format>', 'json (default) or pretty', logFormatArg, 'json')
    .option('--workers <n>', 'TCP worker processes sharing each listening socket (auto: one per CPU); UDP stays in the main process', workersArg, 1)
    .action(async (flags: RunFlags) => {
      const logger = createLogger({ level: flags.logLevel, format: flags.logFormat });
      if (cluster.isWorker) {
        runWorker(logger.child({ worker: cluster.worker?.id }));
        return;
      }
      const code = await serve(flags, logger);
      if (code !== undefined) {
        process.exitCode = code;
        logger.flush();
      }
    });
}

/** With --api (or a state file) a forwarder may start empty; otherwise no mapping is an error. */
async function loadCommandLine(flags: RunFlags, mayBeEmpty: boolean): Promise<readonly Mapping[]> {
  try {
    return await loadFromFlags(flags);
  } catch (err) {
    if (mayBeEmpty && isPortferryError(err) && err.code === 'PF_NO_MAPPINGS' && flags.publish.length === 0 && flags.config === undefined) return [];
    throw err;
  }
}

/** Starts everything; returns an exit code when it could not start, undefined when serving. */
async function serve(flags: RunFlags, logger: Logger): Promise<number | undefined> {
  const apiPath = flags.api === true ? defaultApiSocket() : flags.api;
  let forwarder: Forwarder | null = null;
  let api: ApiServer | null = null;
  try {
    const mappings = await loadCommandLine(flags, apiPath !== undefined);
    const engine = flags.workers > 1 ? await WorkerEngine.start({ workers: flags.workers, drainTimeoutMs: flags.drainTimeout }, logger) : undefined;
    forwarder = new Forwarder({ logger, ...(engine !== undefined ? { engine } : {}) });
    await forwarder.add(mappings, { origin: 'cli' });
    if (apiPath !== undefined) {
      api = await startApiServer({ socketPath: apiPath, forwarder, logger, childNetns: flags.netns ?? null, version: VERSION, stateFile: null });
    }
  } catch (err) {
    forwarder?.destroy();
    await api?.close();
    return reportError(err);
  }
  const running = forwarder;
  logReady(logger, running, { ...(api !== null ? { api: api.socketPath } : {}) });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: closing every connection now');
      running.destroy();
      return;
    }
    stopping = true;
    logger.info({ signal, drainTimeoutMs: flags.drainTimeout }, 'stopping: no new connections; open ones may finish');
    void Promise.all([api?.close(), running.close(flags.drainTimeout)]).then(() => {
      logger.info('stopped');
      logger.flush();
      process.exit(EXIT_OK);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', () => {
    if (stopping) return;
    logger.info('SIGHUP: reloading the command line\'s mappings (-p, -c)');
    loadCommandLine(flags, true)
      .then((mappings) => running.replaceCommandLine(mappings))
      .then(
        (entries) => logger.info({ mappings: entries.length }, 'reloaded'),
        (err: unknown) => {
          const e = isPortferryError(err) ? err : new PortferryError('PF_CONFIG_INVALID', String(err));
          logger.error({ code: e.code, err: e.format() }, 'reload failed; the mappings stay as they were');
        },
      );
  });
  return undefined;
}

export { EXIT_FAILURE };
