// One TCP connection on the raw path (src/internals.ts: rawTcp): accepted → dialling → relaying →
// ended, on two RawSockets and nothing else — no net.Socket, no stream, no events, no promise.
// It keeps the relay's contract (relay.ts) exactly:
//
// - Half-close: EOF from one side shuts down (FIN) the other side's write half after every byte
//   before it; the other direction keeps flowing. The connection ends cleanly when both FINs are out.
// - An error or RST on either side resets both (SO_LINGER 0), so a reset is seen as a reset.
// - Backpressure: a write the kernel could not take at once is queued in libuv and its source
//   stops reading until it completes: one chunk in flight per direction, the kernel's socket
//   buffers are the queue.
// - Bulk: a direction that has moved 1 MiB reads into a small ring of its own buffers (see
//   OwnBufferRing) instead of a fresh allocation per read.
// - Timers: one per connection, only while a timeout applies (idle; half-close once a direction
//   has ended). Activity (a read, or a queued write completing) stamps `lastIo`; the timer
//   re-arms for what is left.
// - While dialling, the client is read already: its first bytes wait here (at most 64 KiB, then
//   reading pauses) and are written after the PROXY header; a reset from the client aborts the
//   dial, a FIN is remembered and passed on once the container is connected.
// Over 350 lines: the connection's whole life (dial, early bytes, both directions, the bulk ring,
// timers, its end) is one state machine, kept in one file.
import { getSystemErrorName } from 'node:util';
import type { RelayEndReason, RelayResult } from '../api.js';
import { RawSocket, type RawSocketOwner } from '../internals.js';
import { FAST_AFTER_BYTES, RING_BUFFERS, RING_BUFFER_MAX, RING_BUFFER_MIN, failureReason, relayTimeoutMs, type DirectionState, type RelayOptions } from './relay.js';

/** What the connection needs from its listener. */
export interface RawConnectionHost extends RelayOptions {
  readonly connectTimeoutMs: number;
  /** Whether relaying may start (the listener is not closing). */
  accepting(): boolean;
  /** The PROXY header for this client, or null; throws when it cannot be built. */
  header(conn: RawConnection): Buffer | null;
  /** The dial failed (errno: ECONNREFUSED …, ETIMEDOUT for the timeout); the client is reset. */
  dialFailed(conn: RawConnection, errno: string): void;
  /** The header could not be built (the error); the connection is reset. */
  headerFailed(conn: RawConnection, err: unknown): void;
  /** Called once when the connection has ended: its result, or null when it never relayed (the dial failed, the client left, the listener closed). */
  ended(conn: RawConnection, result: RelayResult | null): void;
}

type Phase = 'dialling' | 'relaying' | 'ended';

/** Client bytes held while dialling before reading pauses. */
const EARLY_MAX = 64 * 1024;

/** One direction: reads `src`, writes `dst` (null until the container is connected). */
class RawDirection implements RawSocketOwner {
  state: DirectionState = 'running';
  bytes = 0;
  /** src stopped reading: a write to dst is queued (or the ring is full). */
  paused = false;
  ring: OwnBufferRing | null = null;
  private switching = false;
  dst: RawSocket | null = null;
  other!: RawDirection;

  constructor(
    readonly conn: RawConnection,
    /** Null for the container's direction until it is connected. */
    public src: RawSocket | null,
    readonly fromClient: boolean,
  ) {}

  rawData(_sock: RawSocket, buf: Buffer, n: number): Buffer | undefined {
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
    else if (this.bytes >= FAST_AFTER_BYTES && !this.switching && conn.phase === 'relaying') {
      this.switching = true;
      this.goBulk();
    }
    return undefined;
  }

  rawEnd(): void {
    if (this.dst === null) {
      this.conn.clientEof = true;
      return;
    }
    this.ended();
  }

  rawError(_sock: RawSocket, errno: number): void {
    this.conn.fail(errno, this.fromClient);
  }

  /** A queued write to our src completed: that write belongs to the other direction. */
  rawWritten(_sock: RawSocket, status: number): void {
    this.other.written(status);
  }

  /** Our src's write half is shut: the other direction (which writes to it) is done. */
  rawShutdown(_sock: RawSocket, status: number): void {
    if (status < 0) this.conn.fail(status, this.fromClient);
    else this.conn.directionChanged(this.other, 'done');
  }

  rawConnected(_sock: RawSocket, status: number): void {
    this.conn.connected(status);
  }

  written(status: number): void {
    if (status < 0) {
      this.conn.fail(status, !this.fromClient);
      return;
    }
    if (this.conn.timerMs !== 0) this.conn.lastIo = Date.now(); // a slow reader taking bytes is activity too
    if (this.ring !== null) this.ring.written();
    else if (this.paused && (this.dst as RawSocket).pendingWrites === 0) this.resume();
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
    const r = (this.dst as RawSocket).shutdown();
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
    if (ring.start()) this.ring = ring; // else bulkReads is off: fresh buffers for good
    if (!this.paused) this.src?.readStart();
  }
}

function startRing(d: RawDirection): void {
  d.startRing();
}

/**
 * Bulk reads: src reads straight into this direction's ring and each read is written to dst as a
 * view (no allocation, no copy). A buffer whose write completed at once takes the next read
 * again; one whose write is queued stays untouched while reads move on to the next buffer
 * (allocated on first use); when every buffer waits on a write, reading stops until the oldest
 * completes (writes complete in order). Buffers start at 128 KiB and double up to 1 MiB while
 * reads fill them.
 */
class OwnBufferRing {
  private readonly ring: (Buffer | undefined)[] = [];
  private current = 0;
  private inFlight = 0;
  private size = RING_BUFFER_MIN;

  constructor(private readonly d: RawDirection) {}

  start(): boolean {
    const first = Buffer.allocUnsafeSlow(this.size);
    this.ring[0] = first;
    return (this.d.src as RawSocket).useOwnBuffer(first);
  }

  read(buf: Buffer, n: number): Buffer | undefined {
    const d = this.d;
    const r = (d.dst as RawSocket).write(buf.subarray(0, n));
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

export class RawConnection {
  phase: Phase = 'dialling';
  clientEof = false;
  timerMs = 0;
  lastIo = 0;
  container: RawSocket | null = null;
  private readonly up: RawDirection;
  private readonly down: RawDirection;
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private pending: Buffer[] | null = null;
  private pendingBytes = 0;

  constructor(
    readonly client: RawSocket,
    private readonly host: RawConnectionHost,
    /** Listener's number for the debug log. */
    readonly id: number,
  ) {
    this.up = new RawDirection(this, client, true);
    this.down = new RawDirection(this, null, false);
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

  /** Starts the dial, and reading the client. A dial that fails at once ends the connection (dialFailed). */
  dial(ip: string, port: number): void {
    const sock = RawSocket.connect(ip, port, this.down);
    if (typeof sock === 'number') {
      this.dialEnded(getSystemErrorName(sock));
      return;
    }
    this.container = sock;
    this.timer = setTimeout(onDialTimeout, this.host.connectTimeoutMs, this);
    this.client.readStart();
  }

  /** Client bytes read while dialling. */
  early(buf: Buffer): void {
    (this.pending ??= []).push(buf);
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= EARLY_MAX) this.up.pause();
  }

  connected(status: number): void {
    if (this.phase !== 'dialling') return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (status < 0) {
      this.dialEnded(getSystemErrorName(status));
      return;
    }
    const container = this.container as RawSocket;
    if (!this.host.accepting()) {
      this.finish('destroyed', false);
      return;
    }
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
    const r = (this.container as RawSocket).write(b);
    if (r < 0) this.fail(r, false);
    else if (r === 1 && !this.up.paused) this.up.pause();
  }

  private dialEnded(errno: string): void {
    this.phase = 'ended';
    this.container?.close();
    this.host.dialFailed(this, errno);
    this.client.reset(); // the client learns of the failure as a reset, not as an empty exchange
    this.host.ended(this, null);
  }

  dialTimedOut(): void {
    this.timer = null;
    if (this.phase === 'dialling') this.dialEnded('ETIMEDOUT');
  }

  directionChanged(d: RawDirection, state: DirectionState): void {
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

  /** A read, write or shutdown failed on the client's side (`client`) or the container's. */
  fail(errno: number, client: boolean): void {
    if (this.phase === 'ended') return;
    if (this.phase === 'dialling') {
      // the client reset (or failed) while we dialled: abort the dial
      this.finish('destroyed', true);
      return;
    }
    const code = getSystemErrorName(errno);
    this.finish(failureReason(code, client), true, code);
  }

  /** Aborts now: both sockets are reset. Idempotent. */
  destroy(reason: RelayEndReason = 'destroyed'): void {
    this.finish(reason, true);
  }

  private finish(reason: RelayEndReason, reset: boolean, errorCode?: string): void {
    if (this.phase === 'ended') return;
    const wasRelaying = this.phase === 'relaying';
    this.phase = 'ended';
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const { client, container } = this;
    if (reset) {
      client.reset();
      container?.reset();
    } else {
      client.close();
      container?.close();
    }
    const bulk = (this.up.ring !== null ? 1 : 0) + (this.down.ring !== null ? 1 : 0);
    this.host.ended(
      this,
      wasRelaying
        ? {
            bytesToContainer: this.up.bytes,
            bytesToClient: this.down.bytes,
            reason,
            durationMs: Date.now() - this.started,
            bulkDirections: bulk,
            ...(errorCode !== undefined ? { errorCode } : {}),
          }
        : null,
    );
  }
}

function onDialTimeout(conn: RawConnection): void {
  conn.dialTimedOut();
}

function onIdleTimer(conn: RawConnection): void {
  conn.idleTimer();
}
