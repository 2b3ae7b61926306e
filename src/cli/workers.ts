// `portferry run --workers N`: the TCP mappings are served by N worker processes (node:cluster
// with SCHED_NONE: every worker accepts on the same listening socket and the kernel gives each
// connection to one of them, so connection setup and bulk relaying spread over the CPUs without
// the main process touching a single connection). UDP mappings stay in the main process: a flow
// table must live in one process, or one client's datagrams would leave from several sockets.
//
// The main process binds nothing for TCP itself (cluster creates each listening socket once, for
// the first worker that asks, and shares it), starts the workers, waits until every one has bound
// every TCP listener (all or nothing, as in a single process), logs the one `ready` line, and
// supervises: a worker that dies is replaced. Stop is a message from the main process (SIGTERM or
// SIGINT to it): every worker drains for the same grace period, then everything exits 0.
import cluster, { type Worker } from 'node:cluster';
import type { Mapping } from '../api.js';
import { CATALOGUE, PortferryError, isPortferryError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { bindForwarder, describeListeners, logReady, type Forwarder } from './forwarder.js';
import { EXIT_OK } from './common.js';

interface SerializedError {
  readonly code: string;
  readonly message: string;
  readonly hint: string;
}

type ToWorker = { readonly t: 'start'; readonly mappings: Mapping[]; readonly drainTimeoutMs: number } | { readonly t: 'stop'; readonly graceMs: number } | { readonly t: 'destroy' };
type ToPrimary = { readonly t: 'hello' } | { readonly t: 'ready'; readonly listening: string[] } | { readonly t: 'failed'; readonly error: SerializedError };

const START_TIMEOUT_MS = 30_000;
/** After the drain grace, a worker that has not exited yet is killed (by PID) this much later. */
const EXIT_BOUND_MS = 5_000;

function serialize(err: unknown): SerializedError {
  if (isPortferryError(err)) return { code: err.code, message: err.message, hint: err.hint };
  return { code: 'PF_WORKER', message: err instanceof Error ? err.message : String(err), hint: CATALOGUE.PF_WORKER.fix };
}

function deserialize(e: SerializedError): PortferryError {
  const code: ErrorCode = e.code in CATALOGUE ? (e.code as ErrorCode) : 'PF_WORKER';
  return new PortferryError(code, e.message, { hint: e.hint });
}

function isToPrimary(v: unknown): v is ToPrimary {
  const t = typeof v === 'object' && v !== null ? (v as { t?: unknown }).t : undefined;
  return t === 'hello' || t === 'ready' || t === 'failed';
}

function exited(w: Worker): Promise<void> {
  return new Promise((resolve) => {
    if (w.isDead()) resolve();
    else w.once('exit', () => resolve());
  });
}

/**
 * Main process. Resolves once everything is bound and `ready` is logged; throws a PortferryError
 * (with every worker gone and nothing left bound) when any part fails to start.
 */
export async function runWithWorkers(mappings: readonly Mapping[], opts: { workers: number; drainTimeoutMs: number }, logger: Logger): Promise<void> {
  const tcp = mappings.filter((m) => m.protocol === 'tcp');
  const udp = mappings.filter((m) => m.protocol === 'udp');
  const local: Forwarder | null = udp.length > 0 ? await bindForwarder(udp, logger) : null;

  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: process.argv[1] ?? '', args: process.argv.slice(2) });
  const workers = new Set<Worker>();
  let stopping = false;
  let started = false;

  const start = (): Promise<string[]> =>
    new Promise((resolve, reject) => {
      const w = cluster.fork();
      workers.add(w);
      const timer = setTimeout(() => reject(new PortferryError('PF_WORKER', `worker ${w.id} (pid ${w.process.pid ?? '?'}) did not bind its listeners within ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
      w.on('message', (msg: unknown) => {
        if (!isToPrimary(msg)) return;
        // 'online' comes before the worker's own code listens: it says hello when it does.
        if (msg.t === 'hello') {
          // A worker that comes up while we stop (a replacement) is told to stop at once: a
          // message sent before its hello would have been lost.
          w.send((stopping ? { t: 'stop', graceMs: 0 } : { t: 'start', mappings: [...tcp], drainTimeoutMs: opts.drainTimeoutMs }) satisfies ToWorker);
          return;
        }
        clearTimeout(timer);
        if (msg.t === 'ready') resolve(msg.listening);
        else reject(deserialize(msg.error));
      });
      w.once('exit', (code, signal) => {
        workers.delete(w);
        clearTimeout(timer);
        reject(new PortferryError('PF_WORKER', `worker ${w.id} (pid ${w.process.pid ?? '?'}) exited (${signal ?? code}) before it was ready`));
        if (started && !stopping) {
          logger.warn({ worker: w.id, workerPid: w.process.pid, code, signal }, 'a worker died; starting a replacement (its connections were lost)');
          void start().then(
            () => logger.info({ workers: workers.size }, 'replacement worker ready'),
            (err: unknown) => logger.error({ err: serialize(err) }, 'the replacement worker failed to start'),
          );
        }
      });
    });

  const results = await Promise.allSettled(Array.from({ length: opts.workers }, start));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure !== undefined) {
    stopping = true;
    for (const w of workers) w.process.kill('SIGKILL');
    await Promise.all([...workers].map(exited));
    local?.manager.destroy();
    throw failure.reason;
  }
  started = true;
  const first = results[0];
  const listening = [...(first?.status === 'fulfilled' ? first.value : []), ...(local === null ? [] : describeListeners(local.manager))];
  logReady(logger, mappings, listening, { workers: opts.workers, workerPids: [...workers].map((w) => w.process.pid) });

  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: closing every connection now');
      for (const w of workers) if (w.isConnected()) w.send({ t: 'destroy' } satisfies ToWorker);
      local?.manager.destroy();
      return;
    }
    stopping = true;
    logger.info({ signal, drainTimeoutMs: opts.drainTimeoutMs }, 'stopping: no new connections; open ones may finish');
    const all = [...workers];
    for (const w of all) if (w.isConnected()) w.send({ t: 'stop', graceMs: opts.drainTimeoutMs } satisfies ToWorker);
    const bound = setTimeout(() => {
      for (const w of all) {
        if (w.isDead()) continue;
        logger.warn({ worker: w.id, workerPid: w.process.pid }, 'a worker did not exit after the drain timeout; killed');
        w.process.kill('SIGKILL');
      }
    }, opts.drainTimeoutMs + EXIT_BOUND_MS);
    void Promise.all([...all.map(exited), local?.stop(opts.drainTimeoutMs)]).then(() => {
      clearTimeout(bound);
      logger.info('stopped');
      logger.flush();
      process.exit(EXIT_OK);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Worker process: waits for its mappings, binds them, reports, serves until told to stop. */
export function runWorker(logger: Logger): void {
  let forwarder: Forwarder | null = null;
  let stopping = false;
  let drainTimeoutMs = 0; // until the start message says otherwise (a SIGTERM before it: nothing to drain)
  const send = (msg: ToPrimary): void => {
    process.send?.(msg);
  };
  const stop = (graceMs: number): void => {
    if (stopping) return;
    stopping = true;
    void (forwarder?.stop(graceMs) ?? Promise.resolve()).then(() => process.exit(EXIT_OK));
  };
  // Ctrl-C reaches the whole process group: the main process decides, and tells us.
  process.on('SIGINT', () => {});
  // A SIGTERM sent to the whole group (a service manager) or to us alone: drain like a stop.
  process.on('SIGTERM', () => stop(drainTimeoutMs));
  process.on('disconnect', () => {
    // The main process is gone: nobody supervises us any more.
    forwarder?.manager.destroy();
    process.exit(EXIT_OK);
  });
  process.on('message', (msg: ToWorker) => {
    if (msg.t === 'start') {
      drainTimeoutMs = msg.drainTimeoutMs;
      bindForwarder(msg.mappings, logger).then(
        (f) => {
          forwarder = f;
          send({ t: 'ready', listening: describeListeners(f.manager) });
        },
        (err: unknown) => send({ t: 'failed', error: serialize(err) }),
      );
    } else if (msg.t === 'stop') {
      stop(msg.graceMs);
    } else if (msg.t === 'destroy') {
      forwarder?.manager.destroy();
      process.exit(EXIT_OK);
    }
  });
  send({ t: 'hello' });
}
