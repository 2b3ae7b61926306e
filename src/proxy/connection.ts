// The TCP connection engine: one state machine for every connection, whatever its sockets are.
// A connection is two TcpPorts (src/internals.ts: a bare libuv handle, or a net.Socket behind the
// same methods) and goes accepted → dialling → relaying → ended:
//
// - Dialling: the dialer (src/proxy/dialer.ts) hands over a connected port or an error (dialled);
//   the client is read already: its first bytes wait here (at most 64 KiB, then reading pauses)
//   and are written after the PROXY header; a reset from the client aborts the dial, a FIN is
//   remembered and passed on once the container is connected. A listener that is draining lets
//   dials finish and relay like established connections (issue 20.6).
// - Relaying, per direction as in tokio's copy_bidirectional:
//
//     running ──EOF from source──▶ shutting-down ──our FIN flushed to the destination──▶ done
//        │                               │
//        └──── error/RST on either socket, or a timeout: both sockets reset, connection ends ────┘
//
//   EOF on one side shuts down the other's write half after every byte before it; the other
//   direction keeps flowing. The connection ends cleanly when both FINs are out.
// - An error, RST or timeout resets BOTH sides (SO_LINGER 0), so a reset is seen as a reset and
//   both descriptors are released, whatever is still queued (the ports see to that; issue 20.2).
// - Backpressure: a write the socket could not take at once is queued and its source stops
//   reading until it completes: one chunk in flight per direction, the socket buffers are the queue.
// - Bulk: a direction that has moved 1 MiB reads into a small ring of its own buffers (see
//   OwnBufferRing) instead of a fresh allocation per read.
// - Timers: one per connection, only while a timeout applies (idle; half-close once a direction
//   has ended). Activity (a read, or a queued write completing) stamps `lastIo`; the timer
//   re-arms for what is left.
// - Per connection: the Connection, its two Directions; no closure, no promise (`done` is made
//   only for callers that ask for it).
// Over 350 lines: the connection's whole life (dial, early bytes, both directions, the bulk ring,
// timers, its end) is one state machine, kept in one file.
import { getSystemErrorName } from 'node:util';
import type { Endpoint, RelayEndReason, RelayResult } from '../api.js';
import type { TcpPort, TcpPortOwner } from '../internals.js';
import type { DialAttempt, Dialer, DialWaiter } from './dialer.js';

export interface RelayOptions {
  /** Close the connection after this long with no byte either way. 0: never. */
  readonly idleTimeoutMs: number;
  /** Once one direction has ended, close when nothing moves for this long. 0: never. */
  readonly halfCloseTimeoutMs: number;
}

export type DirectionState = 'running' | 'shutting-down' | 'done';

/** The inactivity bound in effect (0: none): idleTimeout while both directions run, the smaller of it and halfCloseTimeout once one has ended. */
export function relayTimeoutMs(o: RelayOptions, halfClosed: boolean): number {
  const { idleTimeoutMs, halfCloseTimeoutMs } = o;
  if (!halfClosed || halfCloseTimeoutMs === 0) return idleTimeoutMs;
  return idleTimeoutMs === 0 ? halfCloseTimeoutMs : Math.min(idleTimeoutMs, halfCloseTimeoutMs);
}

/**
 * Bulk mode: a direction that has moved FAST_AFTER_BYTES reads into a ring of RING_BUFFERS
 * buffers of its own, each starting at RING_BUFFER_MIN and doubling up to RING_BUFFER_MAX while
 * reads fill it.
 */
export const FAST_AFTER_BYTES = 1024 * 1024;
export const RING_BUFFERS = 4;
export const RING_BUFFER_MIN = 128 * 1024;
export const RING_BUFFER_MAX = 1024 * 1024;

/** Why a connection ended when a read, write or shutdown failed with `code` on the client's side or the container's. */
export function failureReason(code: string | undefined, client: boolean): RelayEndReason {
  const reset = code === 'ECONNRESET' || code === 'EPIPE';
  if (client) return reset ? 'client-reset' : 'client-error';
  return reset ? 'container-reset' : 'container-error';
}

/** The name of a negative errno (ECONNRESET …), or `E<n>` for one the system does not name. */
function errnoName(errno: number): string {
  try {
    return getSystemErrorName(errno);
  } catch {
    return `E${-errno}`;
  }
}

/** What a connection needs from its listener. */
export interface ConnectionHost extends RelayOptions {
  readonly connectTimeoutMs: number;
  readonly dialer: Dialer;
  readonly target: Endpoint;
  /** The PROXY header for this client, or null; throws when it cannot be built. */
  header(conn: Connection): Buffer | null;
  /** The dial failed (a coded error: PF_DIAL_FAILED with the errno, PF_DIAL_TIMEOUT, PF_NETNS_*); the client is reset. */
  dialFailed(conn: Connection, err: Error): void;
  /** The header could not be built (the error); the connection is reset. */
  headerFailed(conn: Connection, err: unknown): void;
  /** Called once when the connection has ended: its result, or null when it never relayed (the dial failed, the client left, destroyed while dialling). */
  ended(conn: Connection, result: RelayResult | null): void;
}

type Phase = 'new' | 'dialling' | 'relaying' | 'ended';

/** Client bytes held while dialling before reading pauses. */
const EARLY_MAX = 64 * 1024;

/** One direction: reads `src`, writes `dst` (null until the container is connected). The owner of its src port. */
class Direction implements TcpPortOwner {
  state: DirectionState = 'running';
  bytes = 0;
  /** src stopped reading: a write to dst is queued (or the ring is full). */
  paused = false;
  ring: OwnBufferRing | null = null;
  /** Bytes after which to try bulk mode (again, if the port could not switch). */
  private bulkAt = FAST_AFTER_BYTES;
  dst: TcpPort | null = null;
  other!: Direction;

  constructor(
    readonly conn: Connection,
    /** Null for the container's direction until it is connected. */
    public src: TcpPort | null,
    readonly fromClient: boolean,
  ) {}

  onData(_port: TcpPort, buf: Buffer, n: number): Buffer | undefined {
    const { conn } = this;
    if (conn.timerMs !== 0) conn.lastIo = Date.now();
    if (this.dst === null) {
      conn.early(buf);
      return undefined;
    }
    this.bytes += n;
    if (this.ring !== null) return this.ring.read(buf, n);
    const r = this.dst.write(buf);
    if (r < 0) conn.fail(r, !this.fromClient);
    else if (r === 1) this.pause();
    else if (this.bytes >= this.bulkAt && conn.phase === 'relaying') {
      this.bulkAt = Infinity;
      this.goBulk();
    }
    return undefined;
  }

  onEnd(): void {
    if (this.dst === null) {
      this.conn.clientEof = true;
      return;
    }
    this.ended();
  }

  onError(_port: TcpPort, errno: number): void {
    this.conn.fail(errno, this.fromClient);
  }

  /** A queued write to our src completed: that write belongs to the other direction. */
  onWritten(_port: TcpPort, status: number): void {
    this.other.written(status);
  }

  /** Our src's write half is shut: the other direction (which writes to it) is done. */
  onShutdown(_port: TcpPort, status: number): void {
    if (status < 0) this.conn.fail(status, this.fromClient);
    else this.conn.directionChanged(this.other, 'done');
  }

  onConnected(): void {
    // Ports reach a connection connected (the dialer owns the connect).
  }

  written(status: number): void {
    if (status < 0) {
      this.conn.fail(status, !this.fromClient);
      return;
    }
    if (this.conn.timerMs !== 0) this.conn.lastIo = Date.now(); // a slow reader taking bytes is activity too
    if (this.ring !== null) this.ring.written();
    else if (this.paused && (this.dst as TcpPort).pendingWrites === 0) this.resume();
  }

  pause(): void {
    this.paused = true;
    this.src?.readStop();
  }

  resume(): void {
    this.paused = false;
    if (this.state === 'running') this.src?.readStart();
  }

  ended(): void {
    this.conn.directionChanged(this, 'shutting-down');
    const r = (this.dst as TcpPort).shutdown();
    if (r < 0) this.conn.fail(r, !this.fromClient);
  }

  /** Switches to own buffers on the next tick: reading stops until then (no read is lost). */
  private goBulk(): void {
    this.src?.readStop();
    process.nextTick(startRing, this);
  }

  startRing(): void {
    if (this.conn.phase !== 'relaying' || this.state !== 'running') return;
    const ring = new OwnBufferRing(this);
    if (ring.start()) this.ring = ring;
    else this.bulkAt = this.bytes + FAST_AFTER_BYTES; // not now (bytes wait in a socket's buffer) or never (bulkReads off): try again later
    if (!this.paused) this.src?.readStart();
  }
}

function startRing(d: Direction): void {
  d.startRing();
}

/**
 * Bulk reads: src reads straight into this direction's ring and each read is written to dst as a
 * view (no allocation, no copy). A buffer whose write completed at once takes the next read
 * again; one whose write is queued stays untouched while reads move on to the next buffer
 * (allocated on first use); when every buffer waits on a write, reading stops until the oldest
 * completes (writes complete in order). Buffers start at 128 KiB and double up to 1 MiB while
 * reads fill them. Idle and small connections hold none.
 */
class OwnBufferRing {
  private readonly ring: (Buffer | undefined)[] = [];
  private current = 0;
  private inFlight = 0;
  private size = RING_BUFFER_MIN;

  constructor(private readonly d: Direction) {}

  start(): boolean {
    const first = Buffer.allocUnsafeSlow(this.size);
    this.ring[0] = first;
    return (this.d.src as TcpPort).useOwnBuffer(first);
  }

  read(buf: Buffer, n: number): Buffer | undefined {
    const d = this.d;
    const r = (d.dst as TcpPort).write(buf.subarray(0, n));
    if (r < 0) {
      d.conn.fail(r, !d.fromClient);
      return undefined;
    }
    if (r === 0) {
      if (n < buf.length || buf.length >= RING_BUFFER_MAX) return undefined; // free again
      this.size = Math.min(buf.length * 2, RING_BUFFER_MAX); // filled: grow
      return (this.ring[this.current] = Buffer.allocUnsafeSlow(this.size));
    }
    this.inFlight++;
    this.current = (this.current + 1) % RING_BUFFERS;
    if (this.inFlight >= RING_BUFFERS) d.pause();
    return (this.ring[this.current] ??= Buffer.allocUnsafeSlow(this.size));
  }

  written(): void {
    this.inFlight--;
    if (this.d.paused && this.inFlight < RING_BUFFERS) this.d.resume();
  }
}

export class Connection implements DialWaiter {
  phase: Phase = 'new';
  clientEof = false;
  timerMs = 0;
  lastIo = 0;
  container: TcpPort | null = null;
  private readonly up: Direction;
  private readonly down: Direction;
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private attempt: DialAttempt | null = null;
  private pending: Buffer[] | null = null;
  private pendingBytes = 0;
  private result: RelayResult | null = null;
  private whenDone: Promise<RelayResult> | null = null;
  private resolveDone: ((r: RelayResult) => void) | null = null;

  constructor(
    readonly client: TcpPort,
    private readonly host: ConnectionHost,
    /** Listener's number for the debug log. */
    readonly id: number,
  ) {
    this.up = new Direction(this, client, true);
    this.down = new Direction(this, null, false);
    this.up.other = this.down;
    this.down.other = this.up;
    client.owner = this.up;
  }

  get bytesToContainer(): number {
    return this.up.bytes;
  }
  get bytesToClient(): number {
    return this.down.bytes;
  }
  get ended(): boolean {
    return this.phase === 'ended';
  }

  /** Resolves with the result once the connection has relayed and ended (tests, one-off callers); never for one that did not relay. */
  get done(): Promise<RelayResult> {
    this.whenDone ??= this.result !== null ? Promise.resolve(this.result) : new Promise((resolve) => (this.resolveDone = resolve));
    return this.whenDone;
  }

  /** Starts the dial, and reading the client. A dial that fails at once ends the connection (dialFailed). */
  dial(): void {
    this.phase = 'dialling';
    const { host } = this;
    const attempt = host.dialer.dialTcp(host.target, host.connectTimeoutMs, this);
    if (this.phase !== 'dialling') return; // it failed at once
    this.attempt = attempt;
    this.client.readStart();
  }

  /** Relays between two connected ports without a dial (tests, and callers that dial themselves). */
  relay(container: TcpPort): void {
    this.phase = 'dialling';
    this.client.readStart();
    this.dialled(null, container);
  }

  /** Client bytes read while dialling. */
  early(buf: Buffer): void {
    (this.pending ??= []).push(buf);
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= EARLY_MAX) this.up.pause();
  }

  /** The dial's outcome (DialWaiter): a connected port, or the coded error. */
  dialled(err: Error | null, container: TcpPort | null): void {
    this.attempt = null;
    if (this.phase !== 'dialling') {
      container?.close();
      return;
    }
    if (container === null) {
      this.phase = 'ended';
      this.host.dialFailed(this, err ?? new Error('dial failed'));
      this.client.reset(); // the client learns of the failure as a reset, not as an empty exchange
      this.host.ended(this, null);
      return;
    }
    this.container = container;
    container.owner = this.down;
    let header: Buffer | null;
    try {
      header = this.host.header(this);
    } catch (e) {
      this.host.headerFailed(this, e);
      this.finish('destroyed', true);
      return;
    }
    this.phase = 'relaying';
    this.up.dst = container;
    this.down.dst = this.client;
    this.down.src = container;
    if (header !== null) this.writeUp(header);
    const pending = this.pending;
    this.pending = null;
    if (pending !== null) for (const b of pending) this.up.bytes += b.length, this.writeUp(b);
    if (this.phase !== 'relaying') return; // a write failed: the connection has ended
    this.armTimer();
    if (this.clientEof) this.up.ended();
    else if (this.up.paused && container.pendingWrites === 0) this.up.resume();
    if (this.phase === 'relaying') container.readStart();
  }

  private writeUp(b: Buffer): void {
    const r = (this.container as TcpPort).write(b);
    if (r < 0) this.fail(r, false);
    else if (r === 1 && !this.up.paused) this.up.pause();
  }

  directionChanged(d: Direction, state: DirectionState): void {
    if (this.phase !== 'relaying') return;
    d.state = state;
    if (this.up.state === 'done' && this.down.state === 'done') {
      this.finish('done', false);
      return;
    }
    this.armTimer();
  }

  private armTimer(): void {
    const ms = relayTimeoutMs(this.host, this.up.state !== 'running' || this.down.state !== 'running');
    if (ms === this.timerMs) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerMs = ms;
    this.lastIo = Date.now();
    this.timer = ms === 0 ? null : setTimeout(onIdleTimer, ms, this);
  }

  idleTimer(): void {
    this.timer = null;
    if (this.phase !== 'relaying') return;
    const quiet = Date.now() - this.lastIo;
    if (quiet < this.timerMs) {
      this.timer = setTimeout(onIdleTimer, this.timerMs - quiet, this);
      return;
    }
    this.finish(this.up.state === 'running' && this.down.state === 'running' ? 'idle-timeout' : 'half-close-timeout', true);
  }

  /** A read, write or shutdown failed (negative errno) on the client's side (`client`) or the container's. */
  fail(errno: number, client: boolean): void {
    if (this.phase === 'ended') return;
    if (this.phase !== 'relaying') {
      // the client reset (or failed) while we dialled: abort the dial
      this.finish('destroyed', true);
      return;
    }
    const code = errnoName(errno);
    this.finish(failureReason(code, client), true, code);
  }

  /** Aborts now: both sockets are reset (a dial under way is cancelled). Idempotent. */
  destroy(reason: RelayEndReason = 'destroyed'): void {
    this.finish(reason, true);
  }

  private finish(reason: RelayEndReason, reset: boolean, errorCode?: string): void {
    if (this.phase === 'ended') return;
    const wasRelaying = this.phase === 'relaying';
    this.phase = 'ended';
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.attempt !== null) {
      this.attempt.cancel();
      this.attempt = null;
    }
    this.pending = null;
    const { client, container } = this;
    if (reset) {
      client.reset();
      container?.reset();
    } else {
      client.close();
      container?.close();
    }
    if (!wasRelaying) {
      this.host.ended(this, null);
      return;
    }
    const result: RelayResult = {
      bytesToContainer: this.up.bytes,
      bytesToClient: this.down.bytes,
      reason,
      durationMs: Date.now() - this.started,
      bulkDirections: (this.up.ring !== null ? 1 : 0) + (this.down.ring !== null ? 1 : 0),
      ...(errorCode !== undefined ? { errorCode } : {}),
    };
    this.result = result;
    this.host.ended(this, result);
    this.resolveDone?.(result);
  }
}

function onIdleTimer(conn: Connection): void {
  conn.idleTimer();
}

/** Relays between two connected ports (tests; callers that dial themselves): `onEnd` gets the result. */
export function relayPorts(client: TcpPort, container: TcpPort, options: RelayOptions, onEnd: (r: RelayResult) => void = () => {}): Connection {
  const host: ConnectionHost = {
    ...options,
    connectTimeoutMs: 0,
    dialer: NO_DIALER,
    target: { ip: '', port: 0 },
    header: () => null,
    dialFailed: () => {},
    headerFailed: () => {},
    ended: (_c, r) => {
      if (r !== null) onEnd(r);
    },
  };
  const conn = new Connection(client, host, 0);
  conn.relay(container);
  return conn;
}

const NO_DIALER: Dialer = {
  kind: 'direct',
  dialTcp: () => {
    throw new Error('relayPorts: no dialer');
  },
  openUdp: () => Promise.reject(new Error('relayPorts: no dialer')),
  close: () => Promise.resolve(),
};
