// `run --workers N`: TCP listeners live in N worker processes (node:cluster with SCHED_NONE: every
// worker accepts on the same listening socket and the kernel gives each connection to one of
// them); UDP stays in this process, since a flow table must live in one process or one client's
// datagrams would leave from several sockets.
//
// The engine keeps every worker in step: a change goes to every live worker and is answered once
// all have it; if any fails, it is taken back from all (all or nothing). A worker that starts
// later (a replacement) is handed every TCP mapping there is, those of a change still in flight
// included, then catches up with what changed meanwhile (catchUp). cluster creates each listening socket once, for the first worker that asks, and shares
// it; it closes it when the last worker lets go.
import cluster, { type Worker } from 'node:cluster';
import type { Listener, ListenerStats } from '../api.js';
import { CATALOGUE, PortferryError, isPortferryError, type ErrorCode } from '../errors.js';
import { selfTest } from '../internals.js';
import type { Logger } from '../log.js';
import { LocalEngine, type Engine, type EngineItem, type StatsRow } from './engine.js';

interface SerializedError {
  readonly code: string;
  readonly message: string;
  readonly hint: string;
  readonly details?: Record<string, unknown>;
  readonly problems?: SerializedError[];
}

type Op = { readonly t: 'add'; readonly items: EngineItem[] } | { readonly t: 'remove'; readonly ids: number[] } | { readonly t: 'stats' };
type ToWorker = ({ readonly seq: number } & Op) | { readonly t: 'stop'; readonly graceMs: number } | { readonly t: 'destroy' } | { readonly t: 'config'; readonly drainTimeoutMs: number };
type ToPrimary = { readonly t: 'hello' } | { readonly t: 'done'; readonly seq: number; readonly rows?: StatsRow[] } | { readonly t: 'failed'; readonly seq: number; readonly error: SerializedError };

const START_TIMEOUT_MS = 30_000;
const CHANGE_TIMEOUT_MS = 30_000;
/** After the drain grace, a worker that has not exited yet is killed (by PID) this much later. */
const EXIT_BOUND_MS = 5_000;

export function serializeError(err: unknown): SerializedError {
  if (isPortferryError(err)) {
    return { code: err.code, message: err.message, hint: err.hint, details: { ...err.details }, problems: err.problems.map(serializeError) };
  }
  return { code: 'PF_WORKER', message: err instanceof Error ? err.message : String(err), hint: CATALOGUE.PF_WORKER.fix };
}

export function deserializeError(e: SerializedError): PortferryError {
  const code: ErrorCode = e.code in CATALOGUE ? (e.code as ErrorCode) : 'PF_WORKER';
  return new PortferryError(code, e.message, { hint: e.hint, ...(e.details !== undefined ? { details: e.details } : {}), problems: (e.problems ?? []).map(deserializeError) });
}

function isToPrimary(v: unknown): v is ToPrimary {
  const t = typeof v === 'object' && v !== null ? (v as { t?: unknown }).t : undefined;
  return t === 'hello' || t === 'done' || t === 'failed';
}

function exited(w: Worker): Promise<void> {
  return new Promise((resolve) => {
    if (w.isDead()) resolve();
    else w.once('exit', () => resolve());
  });
}

interface Pending {
  readonly resolve: (rows: StatsRow[]) => void;
  readonly reject: (err: PortferryError) => void;
  readonly timer: NodeJS.Timeout;
}

export class WorkerEngine implements Engine {
  private readonly local: LocalEngine;
  /** Workers that said hello and were handed the TCP set. */
  private readonly live = new Set<Worker>();
  private readonly all = new Set<Worker>();
  private readonly pending = new Map<string, Pending>();
  /** Every TCP item, those of a change in flight included (handed to replacement workers). */
  private readonly tcp = new Map<number, EngineItem>();
  private seq = 1;
  private stopping = false;
  /** Each worker's last answered stats (by worker id); a dead one's are folded into `retired`. */
  private readonly known = new Map<number, StatsRow[]>();
  /** The counters of dead workers, per listener row (rowKey), kept while the mapping lives. */
  private readonly retired = new Map<string, StatsRow>();
  /** stats() calls run one at a time, so a worker's counts are folded exactly once. */
  private statsQueue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly count: number,
    private readonly drainTimeoutMs: number,
    private readonly logger: Logger,
  ) {
    this.local = new LocalEngine(logger);
  }

  /** Starts the workers (each with no mapping yet). Throws with every worker gone if any fails. */
  static async start(opts: { workers: number; drainTimeoutMs: number }, logger: Logger): Promise<WorkerEngine> {
    const engine = new WorkerEngine(opts.workers, opts.drainTimeoutMs, logger);
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ exec: process.argv[1] ?? '', args: process.argv.slice(2) });
    const results = await Promise.allSettled(Array.from({ length: opts.workers }, () => engine.fork()));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure !== undefined) {
      engine.stopping = true;
      for (const w of engine.all) w.process.kill('SIGKILL');
      await Promise.all([...engine.all].map(exited));
      throw failure.reason;
    }
    return engine;
  }

  private fork(): Promise<void> {
    return new Promise((resolve, reject) => {
      const w = cluster.fork();
      this.all.add(w);
      const timer = setTimeout(() => reject(new PortferryError('PF_WORKER', `worker ${w.id} (pid ${w.process.pid ?? '?'}) did not start within ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
      w.on('message', (msg: unknown) => {
        if (!isToPrimary(msg)) return;
        if (msg.t === 'hello') {
          // A replacement that comes up while we stop is told to stop at once.
          if (this.stopping) return void w.send({ t: 'stop', graceMs: 0 } satisfies ToWorker);
          w.send({ t: 'config', drainTimeoutMs: this.drainTimeoutMs } satisfies ToWorker);
          this.catchUp(w).then(
            () => {
              clearTimeout(timer);
              resolve();
            },
            (err: unknown) => {
              clearTimeout(timer);
              reject(err);
            },
          );
          return;
        }
        const key = `${w.id}:${msg.seq}`;
        const p = this.pending.get(key);
        if (p === undefined) return;
        this.pending.delete(key);
        clearTimeout(p.timer);
        if (msg.t === 'done') p.resolve(msg.rows ?? []);
        else p.reject(deserializeError(msg.error));
      });
      w.once('exit', (code, signal) => {
        this.live.delete(w);
        this.all.delete(w);
        clearTimeout(timer);
        for (const [key, p] of this.pending) {
          if (!key.startsWith(`${w.id}:`)) continue;
          this.pending.delete(key);
          clearTimeout(p.timer);
          p.reject(new PortferryError('PF_WORKER', `worker ${w.id} (pid ${w.process.pid ?? '?'}) exited (${signal ?? code}) before it answered`));
        }
        reject(new PortferryError('PF_WORKER', `worker ${w.id} (pid ${w.process.pid ?? '?'}) exited (${signal ?? code}) before it was ready`));
        if (!this.stopping) {
          this.logger.warn({ worker: w.id, workerPid: w.process.pid, code, signal }, 'a worker died; starting a replacement (its connections were lost)');
          this.fork().then(
            () => this.logger.info({ workers: this.live.size }, 'replacement worker ready'),
            (err: unknown) => this.logger.error({ err: serializeError(err) }, 'the replacement worker failed to start'),
          );
        }
      });
    });
  }

  /**
   * Hands a new worker every TCP mapping, then what changed while it was busy: changes broadcast
   * meanwhile went to the live workers only (an add that lands, or one taken back after it had
   * been handed here). It joins the live set right after a check that finds nothing left to do,
   * with no await in between, so no change can slip past it.
   */
  private async catchUp(w: Worker): Promise<void> {
    const held = new Map<number, EngineItem>();
    for (;;) {
      const add = [...this.tcp.values()].filter((i) => held.get(i.id) !== i);
      const remove = [...held.keys()].filter((id) => this.tcp.get(id) !== held.get(id));
      if (add.length === 0 && remove.length === 0) break;
      if (remove.length > 0) {
        await this.request(w, { t: 'remove', ids: remove });
        for (const id of remove) held.delete(id);
      }
      if (add.length > 0) {
        await this.request(w, { t: 'add', items: add });
        for (const i of add) held.set(i.id, i);
      }
    }
    this.live.add(w);
  }

  private request(w: Worker, op: Op): Promise<StatsRow[]> {
    return new Promise((resolve, reject) => {
      const seq = this.seq++;
      const timer = setTimeout(() => {
        this.pending.delete(`${w.id}:${seq}`);
        reject(new PortferryError('PF_WORKER', `worker ${w.id} did not answer a ${op.t} within ${CHANGE_TIMEOUT_MS / 1000} s`));
      }, CHANGE_TIMEOUT_MS);
      this.pending.set(`${w.id}:${seq}`, { resolve, reject, timer });
      w.send({ seq, ...op } as ToWorker);
    });
  }

  private async broadcast(op: Op): Promise<PromiseSettledResult<StatsRow[]>[]> {
    return Promise.allSettled([...this.live].map((w) => this.request(w, op)));
  }

  async add(items: readonly EngineItem[]): Promise<void> {
    const tcp = items.filter((i) => i.mapping.protocol === 'tcp');
    const udp = items.filter((i) => i.mapping.protocol === 'udp');
    for (const i of tcp) this.tcp.set(i.id, i);
    const results = tcp.length > 0 ? await this.broadcast({ t: 'add', items: tcp }) : [];
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    let error: unknown = failed?.reason;
    if (error === undefined && udp.length > 0) {
      try {
        await this.local.add(udp);
      } catch (err) {
        error = err;
      }
    }
    if (error !== undefined) {
      for (const i of tcp) this.tcp.delete(i.id);
      if (tcp.length > 0) await this.broadcast({ t: 'remove', ids: tcp.map((i) => i.id) });
      throw error;
    }
  }

  async remove(ids: readonly number[]): Promise<void> {
    const tcp = ids.filter((id) => this.tcp.has(id));
    for (const id of tcp) this.tcp.delete(id);
    if (tcp.length > 0) await this.broadcast({ t: 'remove', ids: tcp });
    await this.local.remove(ids.filter((id) => !tcp.includes(id)));
  }

  /**
   * Every listener's figures. Counters never go down while this process lives (issue 20, 7f: a
   * replaced worker's counts vanished, `accepted_total` 320 → 140): each worker's last answer is
   * kept, and once it is dead its counters are added to a live worker's row of the same listener
   * (or shown in a row of their own, active 0). What a worker counted after its last answer and
   * before it died (no scrape in between) cannot be known and is lost.
   */
  stats(): Promise<StatsRow[]> {
    const next = this.statsQueue.then(() => this.collectStats());
    this.statsQueue = next.catch(() => {});
    return next;
  }

  private async collectStats(): Promise<StatsRow[]> {
    const workers = [...this.live];
    const results = await Promise.allSettled(workers.map((w) => this.request(w, { t: 'stats' })));
    const fresh = new Set<number>();
    results.forEach((r, i) => {
      const w = workers[i];
      if (w === undefined || r.status !== 'fulfilled') return;
      this.known.set(w.id, r.value);
      fresh.add(w.id);
    });
    const alive = new Set([...this.all].map((w) => w.id));
    const rows: StatsRow[] = [];
    for (const [id, known] of this.known) {
      if (!alive.has(id)) {
        // Dead (its exit handled): its last answer joins the retired counts, once.
        this.known.delete(id);
        for (const row of known) {
          const key = rowKey(row);
          const before = this.retired.get(key);
          this.retired.set(key, before === undefined ? { ...row, stats: countersOnly(row.stats) } : { ...before, stats: addCounters(before.stats, row.stats) });
        }
      } else if (fresh.has(id)) {
        rows.push(...known);
      } else {
        // Alive but did not answer this time (starting, or busy past the timeout): its last counters.
        rows.push(...known.map((r) => ({ ...r, stats: countersOnly(r.stats) })));
      }
    }
    for (const [key, dead] of this.retired) {
      // A removed mapping takes its retired counts with it (ids are never reused).
      if (!this.tcp.has(dead.id)) {
        this.retired.delete(key);
        continue;
      }
      const i = rows.findIndex((r) => rowKey(r) === key);
      const live = rows[i];
      if (live === undefined) rows.push(dead);
      else rows[i] = { ...live, stats: addCounters(live.stats, dead.stats) };
    }
    return [...rows, ...(await this.local.stats())];
  }

  async close(graceMs: number): Promise<void> {
    this.stopping = true;
    const all = [...this.all];
    for (const w of all) if (w.isConnected()) w.send({ t: 'stop', graceMs } satisfies ToWorker);
    const bound = setTimeout(() => {
      for (const w of all) {
        if (w.isDead()) continue;
        this.logger.warn({ worker: w.id, workerPid: w.process.pid }, 'a worker did not exit after the drain timeout; killed');
        w.process.kill('SIGKILL');
      }
    }, graceMs + EXIT_BOUND_MS);
    await Promise.all([...all.map(exited), this.local.close(graceMs)]);
    clearTimeout(bound);
  }

  destroy(): void {
    this.stopping = true;
    for (const w of this.all) if (w.isConnected()) w.send({ t: 'destroy' } satisfies ToWorker);
    this.local.destroy();
  }

  listeners(): Listener[] {
    return this.local.listeners();
  }

  describe(): Record<string, unknown> {
    return { workers: this.count, workerPids: [...this.live].map((w) => w.process.pid) };
  }
}

/** One listener of one mapping (a worker's row of it; every worker has the same rows). */
function rowKey(r: StatsRow): string {
  return `${r.id} ${r.host.ip} ${r.host.port} ${r.container.ip} ${r.container.port}`;
}

/** The counters of a TCP row with its gauge (open connections) at 0. Workers serve TCP only. */
function countersOnly(s: ListenerStats): ListenerStats {
  return s.protocol === 'tcp' ? { ...s, active: 0 } : s;
}

/** `a` (gauges kept) plus the counters of `b`. */
function addCounters(a: ListenerStats, b: ListenerStats): ListenerStats {
  if (a.protocol !== 'tcp' || b.protocol !== 'tcp') return a;
  return {
    ...a,
    accepted: a.accepted + b.accepted,
    refused: a.refused + b.refused,
    dialFailures: a.dialFailures + b.dialFailures,
    acceptErrors: a.acceptErrors + b.acceptErrors,
    bytesToContainer: a.bytesToContainer + b.bytesToContainer,
    bytesToClient: a.bytesToClient + b.bytesToClient,
  };
}

/** Worker process: applies the changes the main process sends, serves until told to stop. */
export function runWorker(logger: Logger): void {
  const engine = new LocalEngine(logger);
  void selfTest().then((report) => {
    for (const [name, status] of Object.entries(report)) if (!status.on) logger.warn({ fastPath: name, why: status.why }, 'a fast path is off in this worker');
  });
  let stopping = false;
  let drainTimeoutMs = 0; // until the config message says otherwise
  const send = (msg: ToPrimary): void => {
    process.send?.(msg);
  };
  const stop = (graceMs: number): void => {
    if (stopping) return;
    stopping = true;
    void engine.close(graceMs).then(() => process.exit(0));
  };
  // Ctrl-C reaches the whole process group: the main process decides, and tells us.
  process.on('SIGINT', () => {});
  // A SIGTERM sent to the whole group (a service manager) or to us alone: drain like a stop.
  process.on('SIGTERM', () => stop(drainTimeoutMs));
  process.on('SIGHUP', () => {});
  process.on('disconnect', () => {
    // The main process is gone: nobody supervises us any more.
    engine.destroy();
    process.exit(0);
  });
  process.on('message', (msg: ToWorker) => {
    if (msg.t === 'config') drainTimeoutMs = msg.drainTimeoutMs;
    else if (msg.t === 'stop') stop(msg.graceMs);
    else if (msg.t === 'destroy') {
      engine.destroy();
      process.exit(0);
    } else {
      const run = msg.t === 'add' ? engine.add(msg.items).then(() => []) : msg.t === 'remove' ? engine.remove(msg.ids).then(() => []) : engine.stats();
      run.then(
        (rows) => send({ t: 'done', seq: msg.seq, ...(msg.t === 'stats' ? { rows } : {}) }),
        (err: unknown) => send({ t: 'failed', seq: msg.seq, error: serializeError(err) }),
      );
    }
  });
  send({ t: 'hello' });
}
