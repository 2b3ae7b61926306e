// `portferry run`: parse argv, then hand everything to the forwarder service (src/forwarder):
// bind every mapping (or none), restore the state file, serve the runtime API and metrics, log
// `ready`, serve until SIGTERM/SIGINT, drain for --drain-timeout, exit 0. SIGHUP reloads the
// command line's mappings (-p and every -c file) without touching the others. The signals are
// handled from the start (before ready: SIGHUP is deferred, SIGTERM/SIGINT stop the start-up).
import { execFile } from 'node:child_process';
import cluster from 'node:cluster';
import os from 'node:os';
import { InvalidArgumentError, type Command } from 'commander';
import type { Mapping } from '../api.js';
import { DEFAULTS } from '../config/defaults.js';
import { defaultApiSocket } from '../control/client.js';
import { parseMetricsAddress, startMetricsServer, type MetricsRow, type MetricsServer } from '../control/metrics.js';
import { startApiServer, type ApiServer } from '../control/server.js';
import { loadState, lockState, saveState, type StateEntry, type StateLock } from '../control/state.js';
import { mappingToObject } from '../config/index.js';
import { formatHostPort } from '../addr.js';
import type { StatsRow } from '../forwarder/engine.js';
import { PortferryError, isPortferryError } from '../errors.js';
import { Forwarder, type Entry } from '../forwarder/forwarder.js';
import { selfTest } from '../internals.js';
import { raiseNofileLimit } from '../limits.js';
import { logReady } from '../forwarder/ready.js';
import { WorkerEngine, runWorker } from '../forwarder/workers.js';
import { createLogger, type LogFormat, type LogLevel, type Logger } from '../log.js';
import { EXIT_FAILURE, EXIT_OK, durationOption, loadFromFlags, logFormatArg, logLevelArg, mappingOptions, reportError, type MappingFlags } from './common.js';
import { VERSION } from '../version.js';

interface RunFlags extends MappingFlags {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly drainTimeout: number;
  readonly workers: number;
  readonly api?: string | true;
  readonly metrics?: { host: string; port: number };
  readonly state?: string;
}

function metricsArg(value: string): { host: string; port: number } {
  try {
    return parseMetricsAddress(value);
  } catch (err) {
    throw new InvalidArgumentError(isPortferryError(err) ? err.message : String(err));
  }
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
    .addOption(durationOption('--drain-timeout <duration>', 'on SIGTERM/SIGINT, let open connections finish for this long', DEFAULTS.drainTimeoutMs ?? 10_000))
    .option('--api [path]', `serve the runtime API on this unix socket (rootlesskit-compatible /v1/ports and native /v1/mappings; default ${defaultApiSocket()})`)
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464)', metricsArg)
    .option('--state <file>', 'keep the mappings added at runtime in this file (atomic writes) and restore them, same ids, on the next start')
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
    if (mayBeEmpty && isPortferryError(err) && err.code === 'PF_NO_MAPPINGS' && (flags.publish ?? []).length === 0 && (flags.config ?? []).length === 0) return [];
    throw err;
  }
}

/** Thrown at the next step of the start-up once SIGTERM/SIGINT came: the start stops there. */
class StopDuringStart extends Error {}

/** Starts everything; returns an exit code when it could not start, undefined when serving. */
async function serve(flags: RunFlags, logger: Logger): Promise<number | undefined> {
  const apiPath = flags.api === true ? defaultApiSocket() : flags.api;
  let engine: WorkerEngine | undefined;
  let forwarder: Forwarder | null = null;
  let api: ApiServer | null = null;
  let metrics: MetricsServer | null = null;
  let lock: StateLock | null = null;

  // Signals are ours from the very start: restoring a big state file takes a while, and before
  // ready the default action of SIGHUP (end the process, no log line) would still apply.
  // Before ready: SIGHUP is logged and the reload runs once ready; SIGTERM/SIGINT stop the start
  // at its next step (and abort a restore that is binding), then exit 0.
  let phase: 'starting' | 'running' | 'stopping' = 'starting';
  let stopRequested = false;
  let reloadPending = false;
  const stopping = (): boolean => phase === 'stopping' || stopRequested;
  const reload = (running: Forwarder): void => {
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
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (phase === 'starting') {
      if (stopRequested) logger.warn({ signal }, 'second signal during start-up: stopping now');
      else logger.info({ signal }, 'stopping during start-up: nothing more is bound');
      stopRequested = true;
      forwarder?.destroy();
      return;
    }
    const running = forwarder;
    if (running === null) return;
    if (phase === 'stopping') {
      logger.warn({ signal }, 'second signal: closing every connection now');
      running.destroy();
      return;
    }
    phase = 'stopping';
    logger.info({ signal, drainTimeoutMs: flags.drainTimeout }, 'stopping: no new connections; open ones may finish');
    void Promise.all([api?.close(), metrics?.close(), running.close(flags.drainTimeout)]).then(() => {
      logger.info('stopped');
      logger.flush();
      process.exit(EXIT_OK);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', () => {
    if (stopping()) return;
    if (phase === 'starting') {
      if (!reloadPending) logger.info({ signal: 'SIGHUP' }, 'SIGHUP before ready: the command line\'s mappings are reloaded once start-up is done');
      reloadPending = true;
      return;
    }
    if (forwarder !== null) reload(forwarder);
  });
  /** After each step of the start-up: stop there once SIGTERM/SIGINT came (what the step made is kept for the clean-up). */
  const checkStop = (): void => {
    if (stopRequested) throw new StopDuringStart();
  };
  const step = async <T>(work: Promise<T>): Promise<T> => {
    const value = await work;
    checkStop();
    return value;
  };

  raiseNofileLimit(logger);
  let fastPaths: Awaited<ReturnType<typeof selfTest>>;
  try {
    fastPaths = await step(selfTest());
    for (const [name, status] of Object.entries(fastPaths)) {
      if (!status.on) logger.warn({ fastPath: name, why: status.why }, 'a fast path of the data path is off; the public Node API is used instead (slower, same bytes)');
    }
    const mappings = await step(loadCommandLine(flags, apiPath !== undefined || flags.state !== undefined));
    // One daemon per state file (the lock names its pid); released when this process exits.
    if (flags.state !== undefined) {
      const held = await lockState(flags.state);
      lock = held;
      process.once('exit', () => held.release());
      checkStop();
    }
    // A state file that cannot be used stops the start before anything is bound.
    const restored = flags.state === undefined ? null : await step(loadState(flags.state));
    engine = flags.workers > 1 ? await WorkerEngine.start({ workers: flags.workers, drainTimeoutMs: flags.drainTimeout }, logger) : undefined;
    checkStop();
    forwarder = new Forwarder({ logger, ...(engine !== undefined ? { engine } : {}), ...(restored !== null ? { nextId: restored.state.nextId } : {}) });
    if (restored !== null && restored.mappings.length > 0) {
      logger.info({ mappings: restored.mappings.length, state: flags.state }, 'restoring the mappings of the state file');
      await step(forwarder.add(restored.mappings, { origin: 'state', ids: restored.state.entries.map((e) => e.id), owners: restored.state.entries.map((e) => e.owner) }));
    }
    await step(forwarder.add(mappings, { origin: 'cli' }));
    if (flags.state !== undefined && lock !== null) keepState(forwarder, flags.state, lock);
    if (apiPath !== undefined) {
      api = await startApiServer({ socketPath: apiPath, forwarder, logger, childNetns: flags.netns ?? null, version: VERSION, stateFile: flags.state ?? null });
      checkStop();
    }
    if (flags.metrics !== undefined) {
      const source = forwarder;
      metrics = await startMetricsServer({ ...flags.metrics, logger, collect: async () => metricsRows(source, await source.stats()) });
      checkStop();
    }
  } catch (err) {
    if (forwarder !== null) forwarder.destroy();
    else engine?.destroy();
    await Promise.all([api?.close(), metrics?.close()]);
    lock?.release();
    if (stopRequested) {
      logger.info('stopped');
      logger.flush();
      process.exit(EXIT_OK);
    }
    return reportError(err);
  }
  const running = forwarder;
  phase = 'running';
  logReady(logger, running, { node: process.version, fastPaths: Object.fromEntries(Object.entries(fastPaths).map(([k, v]) => [k, v.on])), ...(api !== null ? { api: api.socketPath } : {}), ...(metrics !== null ? { metrics: formatHostPort(metrics.address.ip, metrics.address.port) } : {}), ...(flags.state !== undefined ? { state: flags.state } : {}) });
  notifySystemd(logger);
  if (reloadPending) reload(running);
  return undefined;
}

/**
 * Every change is recorded in the state file (the runtime mappings, not the command line's)
 * before it is answered; a change that cannot be (a full file system, the lock lost) is undone by
 * the forwarder and fails with PF_STATE_WRITE — the API answers 507.
 */
function keepState(forwarder: Forwarder, file: string, lock: StateLock): void {
  const keptOf = (entries: readonly Entry[]): StateEntry[] => entries.filter((e) => e.origin !== 'cli').map((e) => ({ id: e.id, owner: e.owner, mapping: mappingToObject(e.mapping) }));
  let saved = JSON.stringify(keptOf(forwarder.list()));
  forwarder.recordWith(async ({ nextId, entries }) => {
    const kept = keptOf(entries);
    // A change of the command line's mappings alone (SIGHUP) changes nothing the file keeps but
    // nextId (their ids are new on every start anyway): no write, so a reload works on a full disk.
    const text = JSON.stringify(kept);
    if (text === saved) return;
    try {
      await lock.check();
      // nextId is the forwarder's: it never goes back, so neither does the file's.
      await saveState(file, { version: 1, nextId, entries: kept });
      saved = text;
    } catch (err) {
      const e = isPortferryError(err) ? err : new PortferryError('PF_STATE_WRITE', `cannot write state file ${file}: ${String(err)}`, { cause: err });
      const why = e.code === 'PF_STATE_WRITE' ? e.message : `cannot save to state file ${file}: ${e.code}: ${e.message}`;
      throw new PortferryError('PF_STATE_WRITE', `${why}; the change was undone`, { cause: e, details: { file, ...e.details }, ...(e.code === 'PF_STATE_WRITE' ? {} : { hint: e.hint }) });
    }
  });
}

/** One metrics row per listener (per worker): the metrics module sums rows of one mapping. */
function metricsRows(forwarder: Forwarder, rows: readonly StatsRow[]): MetricsRow[] {
  return rows.flatMap((r) => {
    const e = forwarder.get(r.id);
    return e === undefined ? [] : [{ mapping: e.mapping.name, protocol: e.mapping.protocol, stats: r.stats }];
  });
}

/**
 * Under systemd (Type=notify, NotifyAccess=all) tell it we are ready. Node cannot send on a unix
 * datagram socket, so systemd's own systemd-notify does it for our pid.
 */
function notifySystemd(logger: Logger): void {
  if (process.env['NOTIFY_SOCKET'] === undefined) return;
  execFile('systemd-notify', ['--ready', `--pid=${process.pid}`], (err) => {
    if (err !== null) logger.warn({ err: err.message }, 'could not tell systemd we are ready (systemd-notify failed); use Type=exec in the unit');
  });
}

export { EXIT_FAILURE };
