// Namespace sockets from the native helper (native/pf-nsd, through the fence: src/internals-nsd.ts),
// pooled so that a connection does not wait on another process in the common case.
//
// One NsdService per user namespace (rootless; keyed by the user namespace's device and inode,
// so /proc/A/ns/user and /proc/B/ns/user of two containers in one user namespace share it) or one
// for the whole process (root: no user namespace to join). Its helper serves every network
// namespace that user namespace owns: each netns path is opened once by the helper (OPEN_NS) and
// named by an index afterwards.
//
// A pool per (network namespace, family, tcp|udp) holds sockets made ahead of demand. take()
// hands one out at once when the pool has one; only an empty pool waits for the next batch.
// Refill: when ready + requested < batch, a request for `batch` more goes out (one request per
// batch: the helper answers with that many records, each carrying its descriptor). The batch
// adapts: it doubles (up to 64) every time a take had to wait, and halves when a sweep (every
// 5 s) saw no take; after 30 s without a take the pool closes what it holds. All pools of the
// process together hold at most POOL_BUDGET descriptors (an eighth of the soft RLIMIT_NOFILE,
// 16..4096); sockets for waiting takes are always requested.
//
// A helper's death fails the takes that wait for a batch (PF_NETNS_HELPER); the sockets already
// in the pools are this process's and stay usable; the next take starts a new helper.
//
// Over 350 lines on purpose: the helper's lifecycle (start, startup records, death, restart) and
// the pools it fills are one state machine; split, each half would need the other's private state.
import { statSync } from 'node:fs';
import { PortferryError } from '../errors.js';
import { closeHandle, NSD, NsdChannel, nsdProbe, type NsdChannelOwner, type NsdRecord, type NsFamily, type NsProto, type NsTcpHandle, type NsUdpHandle } from '../internals-nsd.js';
import { countFastPathUse, disableFastPath } from '../internals.js';
import { readNofileLimit } from '../limits.js';
import type { Logger } from '../log.js';

export const MIN_BATCH = 4;
export const MAX_BATCH = NSD.MAX_BATCH;
const MAX_RESERVE = 4;
const SWEEP_MS = 5_000;
const IDLE_SWEEPS_TO_EMPTY = 6;
const START_TIMEOUT_MS = 10_000;

/** Counters of one service (tests and stats). */
export interface NsdStats {
  /** Requests sent to the helper (OPEN_NS + SOCKETS). */
  requests: number;
  /** Sockets received from the helper. */
  sockets: number;
  /** Takes served at once from a pool. */
  immediate: number;
  /** Takes that had to wait for a batch. */
  waited: number;
  /** Helpers started (the first and every restart). */
  starts: number;
}

type Handle = NsTcpHandle | NsUdpHandle;
type Taker = (err: PortferryError | null, handle: Handle | null) => void;

/** Thrown (as `cause.nsdFallback`) when the native path cannot be used at all: use the Node helper. */
export class NsdUnavailable extends Error {}

let poolBudget: number | null = null;
let pooled = 0;
function budget(): number {
  if (poolBudget === null) {
    const soft = readNofileLimit()?.soft ?? 1024;
    poolBudget = Number.isFinite(soft) ? Math.max(16, Math.min(4096, Math.floor(soft / 8))) : 4096;
  }
  return poolBudget;
}

let probed: Promise<string | null> | null = null;

class Pool {
  readonly ready: Handle[] = [];
  readonly waiters: Taker[] = [];
  /** Sockets requested and not yet received. */
  inflight = 0;
  batch = MIN_BATCH;
  /** Batches kept to spare: grows when a burst emptied the pool while a batch was on its way. */
  reserve = 1;
  takesSinceSweep = 0;
  idleSweeps = 0;
  private lastRefill = 0;

  constructor(
    readonly service: NsdService,
    readonly netns: string,
    readonly family: NsFamily,
    readonly proto: NsProto,
  ) {}

  take(cb: Taker): void {
    this.takesSinceSweep++;
    const h = this.ready.pop();
    if (h !== undefined) {
      pooled--;
      this.service.stats.immediate++;
      this.refill();
      cb(null, h);
      return;
    }
    this.service.stats.waited++;
    if (this.inflight > this.waiters.length) this.reserve = Math.min(MAX_RESERVE, this.reserve + 1);
    this.batch = Math.min(MAX_BATCH, this.batch * 2);
    this.waiters.push(cb);
    this.refill();
  }

  /** Asks for more when ready + requested is below the batch (or takes wait beyond what was asked). */
  refill(): void {
    // Low-water mark: a batch to spare (counting what is on its way); a request brings the spare
    // up to two batches, so in a steady stream of takes one request serves `batch` of them, and a
    // burst of up to a batch finds sockets ready while the next batch is made.
    const spare = this.ready.length + this.inflight - this.waiters.length;
    const low = this.batch * this.reserve;
    if (spare >= low) return;
    // The connection rate: refills less than a second apart double the batch (sweeps halve it).
    const now = Date.now();
    if (now - this.lastRefill < 1000) this.batch = Math.min(MAX_BATCH, this.batch * 2);
    this.lastRefill = now;
    let n = Math.min(MAX_BATCH, low + this.batch - spare);
    const room = budget() - pooled - this.service.inflightTotal();
    if (n > room) n = Math.min(MAX_BATCH, Math.max(-spare, room, 0));
    if (n <= 0) return;
    this.inflight += n;
    this.service.requestSockets(this, n);
  }

  received(h: Handle): void {
    this.inflight = Math.max(0, this.inflight - 1);
    const w = this.waiters.shift();
    if (w !== undefined) w(null, h);
    else {
      this.ready.push(h);
      pooled++;
    }
  }

  /** A batch ended short (helper error or death): its missing sockets are no longer coming. */
  batchEnded(missing: number, err: PortferryError | null): void {
    this.inflight = Math.max(0, this.inflight - missing);
    if (err === null) return;
    // Takes beyond what is still coming fail with the reason.
    while (this.waiters.length > this.inflight) (this.waiters.pop() as Taker)(err, null);
  }

  sweep(): boolean {
    if (this.takesSinceSweep > 0) {
      this.takesSinceSweep = 0;
      this.idleSweeps = 0;
      return true;
    }
    this.idleSweeps++;
    this.batch = Math.max(MIN_BATCH, this.batch >> 1);
    this.reserve = Math.max(1, this.reserve - 1);
    const keep = this.idleSweeps >= IDLE_SWEEPS_TO_EMPTY ? 0 : this.batch;
    while (this.ready.length > keep) {
      closeHandle(this.ready.pop() as object);
      pooled--;
    }
    return this.ready.length > 0 || this.inflight > 0;
  }

  close(err: PortferryError): void {
    pooled -= this.ready.length;
    for (const h of this.ready.splice(0)) closeHandle(h);
    for (const w of this.waiters.splice(0)) w(err, null);
  }
}

interface PendingBatch {
  readonly pool: Pool;
  readonly count: number;
  received: number;
}
interface PendingOpen {
  resolve(index: number): void;
  reject(err: PortferryError): void;
}

const services = new Map<string, NsdService>();

/** Stats of every live service (tests). */
export function nsdServices(): readonly NsdService[] {
  return [...services.values()];
}

/** The service for a user namespace (null: root, no user namespace to join). Hold it with acquire/release. */
export function nsdServiceFor(userns: string | null, logger: Logger): NsdService {
  let key = 'root';
  if (userns !== null) {
    try {
      const st = statSync(userns);
      key = `userns:${st.dev}:${st.ino}`;
    } catch {
      key = `userns-path:${userns}`;
    }
  }
  let s = services.get(key);
  if (s === undefined) {
    s = new NsdService(key, logger);
    services.set(key, s);
  }
  if (userns !== null) s.usernsPaths.add(userns);
  return s;
}

export class NsdService implements NsdChannelOwner {
  readonly stats: NsdStats = { requests: 0, sockets: 0, immediate: 0, waited: 0, starts: 0 };
  readonly usernsPaths = new Set<string>();
  private refs = 0;
  private readonly netnsRefs = new Map<string, number>();
  private channel: NsdChannel | null = null;
  private ready: Promise<void> | null = null;
  private readyCb: { resolve(): void; reject(err: Error): void } | null = null;
  private probeHandles: Handle[] = [];
  private readonly opens = new Map<number, PendingOpen>();
  private readonly batches = new Map<number, PendingBatch>();
  private readonly nsIndex = new Map<string, Promise<{ channel: NsdChannel; index: number }>>();
  private readonly pools = new Map<string, Pool>();
  private nextId = 1;
  private sweeper: NodeJS.Timeout | null = null;
  private stopping = false;
  private helloSeen = false;
  private readonly log: Logger;

  constructor(
    readonly key: string,
    logger: Logger,
  ) {
    this.log = logger.child({ nsd: key });
  }

  acquire(netns: string): void {
    this.refs++;
    this.netnsRefs.set(netns, (this.netnsRefs.get(netns) ?? 0) + 1);
  }

  /**
   * The last dialer of a namespace let go while others keep the helper: its pools close and the
   * helper closes its file, so a gone container's namespace is not kept alive by us.
   */
  private forget(netns: string): void {
    const err = new PortferryError('PF_NETNS_HELPER', `the namespace dialer for ${netns} was closed`);
    for (const [key, p] of this.pools) {
      if (p.netns !== netns) continue;
      p.close(err);
      this.pools.delete(key);
    }
    const idx = this.nsIndex.get(netns);
    this.nsIndex.delete(netns);
    idx?.then(
      ({ channel, index }) => {
        if (channel === this.channel && !channel.closed) channel.send(this.nextId++, NSD.OP_CLOSE_NS, 0, 0, index, 0);
      },
      () => {},
    );
  }

  /** The last holder gone: the helper stops and the pools close. Resolves when it has exited. */
  release(netns: string): Promise<void> {
    const n = (this.netnsRefs.get(netns) ?? 1) - 1;
    if (n > 0) this.netnsRefs.set(netns, n);
    else this.netnsRefs.delete(netns);
    if (--this.refs > 0) {
      if (n <= 0) this.forget(netns);
      return Promise.resolve();
    }
    services.delete(this.key);
    this.stopping = true;
    const err = new PortferryError('PF_NETNS_HELPER', 'the namespace socket helper was stopped');
    for (const p of this.pools.values()) p.close(err);
    this.pools.clear();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    const ch = this.channel;
    this.channel = null;
    if (ch === null) return Promise.resolve();
    ch.close();
    return ch.exited;
  }

  /** The helper's pid while one runs. */
  pid(): number | null {
    const c = this.channel;
    return c === null || c.closed ? null : (c.pid ?? null);
  }

  inflightTotal(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.inflight;
    return n;
  }

  /** Sockets pooled for a namespace right now (tests). */
  pooledFor(netns: string): number {
    let n = 0;
    for (const p of this.pools.values()) if (p.netns === netns) n += p.ready.length;
    return n;
  }

  /**
   * Takes an unconnected socket made in `netns` (family, proto): from the pool at once, or after
   * the next batch. `cb(err)` with PF_NETNS_HELPER (or NsdUnavailable as cause: use the fallback).
   */
  take(netns: string, family: NsFamily, proto: NsProto, cb: Taker): void {
    if (this.stopping) return cb(new PortferryError('PF_NETNS_HELPER', 'the namespace socket helper was stopped'), null);
    const key = `${family}|${proto}|${netns}`;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(this, netns, family, proto);
      this.pools.set(key, pool);
    }
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS).unref();
    // A dead helper is restarted by the next take, also one the pool can serve.
    if (this.channel === null || this.channel.closed) void this.start().catch(() => {});
    pool.take(cb);
  }

  private sweep(): void {
    let busy = false;
    for (const p of this.pools.values()) if (p.sweep()) busy = true;
    if (!busy && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  /** Starts a helper when none runs; resolves when it is ready (probe passed, user namespace joined). */
  start(): Promise<void> {
    if (this.ready !== null && this.channel !== null && !this.channel.closed) return this.ready;
    this.nsIndex.clear();
    const usernsPath = this.usernsPath();
    let channel: NsdChannel;
    try {
      channel = new NsdChannel(usernsPath, this);
    } catch (err) {
      // No private directory for its socket (tmp full or not writable): this start fails, the next take tries again.
      this.ready = null;
      return Promise.reject(this.helperError(`could not be started (${err instanceof Error ? err.message : String(err)})`, err));
    }
    this.channel = channel;
    this.stats.starts++;
    this.probeHandles = [];
    this.helloSeen = false;
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(this.helperError(`did not report ready within ${START_TIMEOUT_MS} ms`));
        channel.kill('SIGKILL');
      }, START_TIMEOUT_MS);
      this.readyCb = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
    this.ready.catch(() => {});
    return this.ready;
  }

  private usernsPath(): string | null {
    if (this.key === 'root') return null;
    // The first path that still names this user namespace (a container that owned it may be gone).
    for (const p of this.usernsPaths) {
      try {
        const st = statSync(p);
        if (this.key === `userns:${st.dev}:${st.ino}` || this.key === `userns-path:${p}`) return p;
      } catch {
        this.usernsPaths.delete(p);
      }
    }
    return [...this.usernsPaths][0] ?? null;
  }

  private helperError(how: string, cause?: unknown): PortferryError {
    const tail = this.channel?.stderrTail.trim() ?? '';
    return new PortferryError('PF_NETNS_HELPER', `the namespace socket helper ${how}${tail === '' ? '' : `: ${tail.split('\n').slice(-3).join(' | ')}`}`, {
      ...(cause === undefined ? {} : { cause }),
      details: { helper: 'pf-nsd', key: this.key, pid: this.channel?.pid },
    });
  }

  /** The index of a network namespace in the helper (OPEN_NS once per helper). */
  private indexOf(netns: string): Promise<{ channel: NsdChannel; index: number }> {
    let p = this.nsIndex.get(netns);
    if (p !== undefined && (this.channel === null || this.channel.closed)) p = undefined;
    if (p === undefined) {
      p = this.start().then(
        () =>
          new Promise<{ channel: NsdChannel; index: number }>((resolve, reject) => {
            const id = this.nextId++;
            const channel = this.channel as NsdChannel;
            if (Buffer.byteLength(netns) > NSD.MAX_PATH || !netns.startsWith('/')) {
              reject(new PortferryError('PF_NETNS_INVALID', `netns ${JSON.stringify(netns)} is not an absolute path of at most ${NSD.MAX_PATH} bytes`, { details: { netns } }));
              return;
            }
            this.opens.set(id, { resolve: (index) => resolve({ channel, index }), reject });
            this.stats.requests++;
            if (!channel.send(id, NSD.OP_OPEN_NS, 0, 0, 0, 0, netns)) {
              this.opens.delete(id);
              reject(this.helperError('could not be reached'));
            }
            else channel.ref(true);
          }),
      );
      const mine = p;
      // A failed open is not cached: the next take tries again (the namespace may appear).
      p.catch(() => {
        if (this.nsIndex.get(netns) === mine) this.nsIndex.delete(netns);
      });
      this.nsIndex.set(netns, p);
    }
    return p;
  }

  requestSockets(pool: Pool, count: number): void {
    this.indexOf(pool.netns).then(
      ({ channel, index }) => this.sendBatch(channel, index, pool, count),
      (err: unknown) => pool.batchEnded(count, asHelperError(err)),
    );
  }

  /** A namespace index is only meaningful to the helper that gave it: the batch goes to that one. */
  private sendBatch(ch: NsdChannel, index: number, pool: Pool, count: number): void {
    const id = this.nextId++;
    this.stats.requests++;
    this.batches.set(id, { pool, count, received: 0 });
    if (ch !== this.channel || !ch.send(id, NSD.OP_SOCKETS, pool.family, pool.proto === 'tcp' ? 1 : 2, index, count)) {
      this.batches.delete(id);
      pool.batchEnded(count, this.helperError('could not be reached'));
      return;
    }
    ch.ref(true);
  }

  nsdRecord(rec: NsdRecord, handle: Handle | null): void {
    if (rec.id === 0) return this.startupRecord(rec, handle);
    if (rec.kind === NSD.SOCKET) {
      const b = this.batches.get(rec.id);
      if (b === undefined || handle === null) {
        if (handle !== null) closeHandle(handle);
        return;
      }
      b.received++;
      this.stats.sockets++;
      b.pool.received(handle);
      return;
    }
    const open = this.opens.get(rec.id);
    if (open !== undefined) {
      this.opens.delete(rec.id);
      if (rec.kind === NSD.DONE) open.resolve(rec.value);
      else open.reject(new PortferryError('PF_NETNS_HELPER', `the namespace socket helper cannot enter the network namespace: ${errnoName(rec.value)}`, { details: { errno: errnoName(rec.value) } }));
      this.unrefWhenIdle();
      return;
    }
    const b = this.batches.get(rec.id);
    if (b === undefined) return;
    this.batches.delete(rec.id);
    const err = rec.kind === NSD.ERROR ? new PortferryError('PF_NETNS_HELPER', `the namespace socket helper could not make a socket in ${b.pool.netns}: ${errnoName(rec.value)}`, { details: { errno: errnoName(rec.value), netns: b.pool.netns } }) : null;
    b.pool.batchEnded(b.count - b.received, err);
    this.unrefWhenIdle();
  }

  private unrefWhenIdle(): void {
    if (this.batches.size === 0 && this.opens.size === 0) this.channel?.ref(false);
  }

  /** HELLO, the two probe sockets, then READY (or ERROR: the user namespace join failed). */
  private startupRecord(rec: NsdRecord, handle: Handle | null): void {
    if (rec.kind === NSD.HELLO) {
      this.helloSeen = true;
      this.log.debug({ pid: rec.value }, 'namespace socket helper started');
      return;
    }
    if (rec.kind === NSD.SOCKET && handle !== null) {
      this.probeHandles.push(handle);
      return;
    }
    const cb = this.readyCb;
    if (rec.kind === NSD.ERROR) {
      this.readyCb = null;
      const how = rec.type === 0 ? `could not join the user namespace ${this.usernsPath() ?? ''} (${errnoName(rec.value)})` : `could not make its probe sockets (${errnoName(rec.value)})`;
      this.log.warn({ pid: this.channel?.pid, reason: how }, `namespace socket helper ${how}`);
      cb?.reject(this.helperError(how));
      this.channel?.close(); // it waits for this before it exits (native/pf-nsd.c, exit_after_reply)
      return;
    }
    if (rec.kind !== NSD.READY) return;
    const [tcp, udp] = this.probeHandles;
    this.probeHandles = [];
    if (tcp === undefined || udp === undefined) {
      this.readyCb = null;
      cb?.reject(this.failNative('sent no probe sockets'));
      return;
    }
    // The full self-test once per process; later helpers only have to send their probes.
    if (probed === null) {
      probed = nsdProbe(tcp as NsTcpHandle, udp as NsUdpHandle).then((problem) => {
        countFastPathUse('nsSockets', -2);
        if (problem !== null) probed = null; // a later helper (another binary) is probed again
        return problem;
      });
    } else {
      closeHandle(tcp);
      closeHandle(udp);
    }
    void probed.then((problem) => {
      this.readyCb = null;
      if (problem !== null) cb?.reject(this.failNative(`failed its self-test: ${problem}`));
      else cb?.resolve();
      this.unrefWhenIdle();
    });
  }

  /** The native path cannot work here: turn it off (the dialers fall back to the Node helper). */
  private failNative(why: string): Error {
    disableFastPath('nsSockets', `the native helper ${why}`);
    this.log.warn({ reason: why }, 'the native namespace socket helper is off; namespaces use the Node helper');
    this.channel?.close();
    return new NsdUnavailable(`the native helper ${why}`);
  }

  nsdClosed(why: string): void {
    const channel = this.channel;
    const pid = channel?.pid;
    const err = this.helperError(why);
    if (!this.stopping) this.log.warn({ pid, reason: why, stderr: channel?.stderrTail.trim() || undefined }, `namespace socket helper ${why}; it is restarted on the next dial`);
    // Started but never ready: a spawn failure (no binary, not executable) means the native path
    // cannot work here at all.
    const cb = this.readyCb;
    this.readyCb = null;
    if (cb !== null) {
      // Gone before its hello (not started, not listening, crashed): this binary does not work here.
      if (!this.helloSeen) cb.reject(this.failNative(why));
      else cb.reject(err);
    }
    for (const h of this.probeHandles.splice(0)) closeHandle(h);
    for (const o of this.opens.values()) o.reject(err);
    this.opens.clear();
    const batches = [...this.batches.values()];
    this.batches.clear();
    for (const b of batches) b.pool.batchEnded(b.count - b.received, err);
    this.nsIndex.clear();
  }

  /** Kills the helper (tests). */
  killHelper(signal: NodeJS.Signals): void {
    this.channel?.kill(signal);
  }
}

function asHelperError(err: unknown): PortferryError {
  if (err instanceof PortferryError) return err;
  if (err instanceof NsdUnavailable) return new PortferryError('PF_NETNS_HELPER', err.message, { cause: err });
  return new PortferryError('PF_NETNS_HELPER', `the namespace socket helper failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

function errnoName(errno: number): string {
  const names: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 9: 'EBADF', 13: 'EACCES', 22: 'EINVAL', 21: 'EISDIR', 23: 'ENFILE', 24: 'EMFILE', 97: 'EAFNOSUPPORT', 105: 'ENOBUFS', 12: 'ENOMEM' };
  return names[errno] ?? `errno ${errno}`;
}
