// The bidirectional TCP relay: the hot path.
//
// Each direction (client→container, container→client) is a small state machine, as in tokio's
// copy_bidirectional:
//
//   running ──EOF from source──▶ shutting-down ──destination 'finish' (our FIN sent)──▶ done
//      │                               │
//      └──────── error/RST on either socket: both sockets reset, relay ends ────────────┘
//
// - EOF on one side ends the write side of the other; the other direction keeps flowing
//   (both sockets have allowHalfOpen, or Node would end the reply early).
// - An error or RST on either side resets the other (resetAndDestroy), so a reset is seen as a
//   reset, never as a clean EOF.
// - Backpressure: when the destination's buffer is over its high-water mark, the source is paused
//   until 'drain'. Memory per connection is bounded by one read chunk plus the write buffer.
// - Bulk: a direction that has moved 1 MiB switches from Node's allocate-per-read 'data' events
//   to reading into a small ring of its own buffers (src/internals.ts: bulkReads);
//   idle and small connections hold no buffer of ours.
// - Timers: one per connection, the client socket's own inactivity timer (Node refreshes it on
//   every read and write). Every byte of either direction passes through the client socket, so
//   its inactivity is exactly the connection's. It is the idle timeout while both directions run,
//   and the half-close bound (min of both) once one direction is done. With neither set, no timer.
// - When both directions are done the sockets are destroyed and the relay ends once (`onEnd`).
// - Per connection the relay allocates its two Direction objects and nothing else: socket events
//   go to shared module-level handlers that find their Direction through the socket.
import type net from 'node:net';
import type { RelayEndReason, RelayResult } from '../api.js';
import { errnoCode } from '../errors.js';
import { readIntoOwnBuffers, resumeOwnBufferReads } from '../internals.js';

export interface RelayOptions {
  /** Close the connection after this long with no byte either way. 0: never. */
  readonly idleTimeoutMs: number;
  /** Once one direction has ended, close when nothing moves for this long. 0: never. */
  readonly halfCloseTimeoutMs: number;
}

export type DirectionState = 'running' | 'shutting-down' | 'done';

/**
 * The inactivity bound in effect (0: none): idleTimeout while both directions run, the smaller
 * of it and halfCloseTimeout once one has ended. The raw path applies the same rule.
 */
export function relayTimeoutMs(o: RelayOptions, halfClosed: boolean): number {
  const { idleTimeoutMs, halfCloseTimeoutMs } = o;
  if (!halfClosed || halfCloseTimeoutMs === 0) return idleTimeoutMs;
  return idleTimeoutMs === 0 ? halfCloseTimeoutMs : Math.min(idleTimeoutMs, halfCloseTimeoutMs);
}
type Side = 'client' | 'container';

/**
 * Bulk mode, for both connection paths (this relay and raw-connection.ts): a direction that has
 * moved FAST_AFTER_BYTES reads into a ring of RING_BUFFERS buffers of its own, each starting at
 * RING_BUFFER_MIN and doubling up to RING_BUFFER_MAX while reads fill it.
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

/** On each relayed socket: the direction that reads from it. */
const kDirection = Symbol('relay direction');
type RelaySocket = net.Socket & { [kDirection]?: Direction };

/** Called once when the relay ends. */
export type RelayEndCallback = (result: RelayResult, relay: Relay) => void;

/** One direction of a relay: reads `src`, writes `dst`; running → shutting-down → done. */
class Direction {
  state: DirectionState = 'running';
  bytes = 0;
  /** Reading into its own buffers (bulk). */
  bulk = false;
  private switching = false;
  /** The opposite direction (reads our dst, writes our src). */
  other!: Direction;

  constructor(
    readonly relay: Relay,
    readonly src: net.Socket,
    readonly dst: net.Socket,
    /** The side `src` belongs to (for end reasons). */
    readonly from: Side,
  ) {}

  /** Wires src's events (and dst's events that concern this direction). */
  wire(): void {
    const { src, dst } = this;
    (src as RelaySocket)[kDirection] = this;
    src.on('data', onSrcData);
    src.on('end', onSrcEnd);
    src.on('error', onSocketError);
    src.on('close', onSocketClose);
    dst.on('drain', onDstDrain);
    dst.on('finish', onDstFinish);
  }

  data(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (!this.dst.write(chunk)) {
      this.src.pause();
      return;
    }
    if (!this.switching && this.bytes >= FAST_AFTER_BYTES) {
      this.switching = true;
      this.src.pause(); // no read is delivered before the tick below: no 'data' is lost in between
      process.nextTick(switchToOwnBuffers, this);
    }
  }

  /** dst drained: reading may go on. */
  drained(): void {
    if (this.src.isPaused()) this.src.resume();
  }

  /** EOF from src: end dst's write side. */
  ended(): void {
    this.relay.directionChanged(this, 'shutting-down');
    this.dst.end();
  }

  /** Our FIN went out toward dst: complete once the source had ended. */
  finished(): void {
    if (this.state === 'shutting-down') this.relay.directionChanged(this, 'done');
  }

  switchToOwnBuffers(): void {
    const { src } = this;
    if (this.relay.ended || src.destroyed) return;
    if (src.readableLength > 0) {
      // Chunks wait in the socket's buffer (a backpressure pause left them): deliver them as
      // 'data' first and try again on a later chunk, rather than stay in event mode for good.
      this.switching = false;
      src.resume();
      return;
    }
    src.off('data', onSrcData);
    if (this.ownBufferReads()) this.bulk = true;
    else src.on('data', onSrcData); // the fast path is off: events for good
    src.resume();
  }

  /**
   * Bulk mode: src reads straight into buffers of this direction's ring and each read is written
   * to dst as a view of that buffer (no allocation, no copy). A buffer whose write completed at
   * once (the usual case) takes the next read again; one whose write is still queued stays
   * untouched while reads move on to the next buffer (allocated on first use), and when every
   * buffer of the ring waits on a write, reading stops until the oldest write completes. Writes
   * complete in order, so ring order is write order. Buffers start at RING_BUFFER_MIN and double
   * (up to RING_BUFFER_MAX) while reads fill them: fewer, larger reads for a real bulk stream,
   * little memory for a moderate one. At most RING_BUFFERS × RING_BUFFER_MAX per direction.
   */
  private ownBufferReads(): boolean {
    const { src, dst } = this;
    let size = RING_BUFFER_MIN;
    const ring: (Buffer | undefined)[] = [];
    let current = 0;
    let inFlight = 0;
    let stopped = false;
    let filled = false;
    const onWritten = (): void => {
      inFlight--;
      if (stopped && inFlight < RING_BUFFERS) {
        stopped = false;
        resumeOwnBufferReads(src);
      }
    };
    const onRead = (n: number, buf: Buffer): boolean => {
      this.bytes += n;
      filled = n === buf.length;
      inFlight++;
      dst.write(buf.subarray(0, n), onWritten);
      if (dst.writableLength === 0) return true; // written through: this buffer is free again
      current = (current + 1) % RING_BUFFERS;
      if (inFlight >= RING_BUFFERS) {
        stopped = true;
        return false;
      }
      return true;
    };
    const next = (): Buffer => {
      const b = ring[current];
      // Replace only a buffer known to be free: the one just read, whose write went through.
      if (b !== undefined && !(filled && b.length < RING_BUFFER_MAX && dst.writableLength === 0)) return b;
      if (b !== undefined) size = Math.min(b.length * 2, RING_BUFFER_MAX);
      const fresh = Buffer.allocUnsafeSlow(size);
      ring[current] = fresh;
      return fresh;
    };
    return readIntoOwnBuffers(src, onRead, next);
  }
}

// Shared socket handlers: `this` is the socket, its Direction says what to do.
function onSrcData(this: RelaySocket, chunk: Buffer): void {
  this[kDirection]?.data(chunk);
}
function onSrcEnd(this: RelaySocket): void {
  this[kDirection]?.ended();
}
/** 'drain'/'finish' on a socket concern the direction that writes to it: the other one. */
function onDstDrain(this: RelaySocket): void {
  this[kDirection]?.other.drained();
}
function onDstFinish(this: RelaySocket): void {
  this[kDirection]?.other.finished();
}
function onSocketError(this: RelaySocket, err: Error): void {
  const d = this[kDirection];
  d?.relay.failed(err, d.from);
}
function onSocketClose(this: RelaySocket): void {
  const d = this[kDirection];
  d?.relay.closedEarly(this, d.from);
}
function onClientTimeout(this: RelaySocket): void {
  this[kDirection]?.relay.timedOut();
}
function switchToOwnBuffers(d: Direction): void {
  d.switchToOwnBuffers();
}

export class Relay {
  /** client → container */
  private readonly up: Direction;
  /** container → client */
  private readonly down: Direction;
  private readonly started = Date.now();
  private timerMs = 0;
  private result: RelayResult | null = null;
  private whenDone: Promise<RelayResult> | null = null;
  private resolveDone: ((r: RelayResult) => void) | null = null;

  constructor(
    private readonly client: net.Socket,
    private readonly container: net.Socket,
    private readonly options: RelayOptions,
    private readonly onEnd: RelayEndCallback | null = null,
  ) {
    this.up = new Direction(this, client, container, 'client');
    this.down = new Direction(this, container, client, 'container');
    this.up.other = this.down;
    this.down.other = this.up;
  }

  get bytesToContainer(): number {
    return this.up.bytes;
  }

  get bytesToClient(): number {
    return this.down.bytes;
  }

  get ended(): boolean {
    return this.result !== null;
  }

  /** Resolves with the result once the relay has ended (for callers that prefer a promise). */
  get done(): Promise<RelayResult> {
    if (this.whenDone === null) {
      this.whenDone = this.result !== null ? Promise.resolve(this.result) : new Promise((resolve) => (this.resolveDone = resolve));
    }
    return this.whenDone;
  }

  /** Wires both directions and starts reading. Data already buffered in either socket flows first. */
  start(): void {
    const { client, container } = this;
    client.allowHalfOpen = true;
    container.allowHalfOpen = true;
    this.up.wire();
    this.down.wire();
    client.on('timeout', onClientTimeout);
    this.armTimer();
    client.resume();
    container.resume();
  }

  /** Aborts the relay now: both sockets are reset. Idempotent. */
  destroy(reason: RelayEndReason = 'destroyed'): void {
    this.finish(reason, true);
  }

  /** Directions (0-2) that became bulk transfers. */
  private bulkDirections(): number {
    return (this.up.bulk ? 1 : 0) + (this.down.bulk ? 1 : 0);
  }

  directionChanged(d: Direction, state: DirectionState): void {
    if (this.result !== null) return;
    d.state = state;
    if (this.up.state === 'done' && this.down.state === 'done') {
      this.finish('done', false);
      return;
    }
    this.armTimer();
  }

  private armTimer(): void {
    const ms = relayTimeoutMs(this.options, this.up.state !== 'running' || this.down.state !== 'running');
    if (ms === this.timerMs) return;
    this.timerMs = ms;
    this.client.setTimeout(ms);
  }

  timedOut(): void {
    this.finish(this.up.state === 'running' && this.down.state === 'running' ? 'idle-timeout' : 'half-close-timeout', true);
  }

  failed(err: Error, side: Side): void {
    if (this.result !== null) return;
    const code = errnoCode(err);
    this.finish(failureReason(code, side === 'client'), true, code);
  }

  closedEarly(socket: net.Socket, side: Side): void {
    if (this.result !== null) return;
    // A socket that has read EOF and flushed our FIN closes by itself (autoDestroy): not an error;
    // the other socket's 'finish' completes the relay.
    if (socket.readableEnded && socket.writableFinished) return;
    this.finish(side === 'client' ? 'client-error' : 'container-error', true, 'ECLOSED');
  }

  private finish(reason: RelayEndReason, reset: boolean, errorCode?: string): void {
    if (this.result !== null) return;
    const { client, container } = this;
    // Late errors on either socket must never crash the process: our 'error' listeners stay.
    if (this.timerMs !== 0) client.setTimeout(0);
    if (reset) {
      if (!client.destroyed) client.resetAndDestroy();
      if (!container.destroyed) container.resetAndDestroy();
    } else {
      client.destroy();
      container.destroy();
    }
    const result: RelayResult = {
      bytesToContainer: this.up.bytes,
      bytesToClient: this.down.bytes,
      reason,
      durationMs: Date.now() - this.started,
      bulkDirections: this.bulkDirections(),
      ...(errorCode !== undefined ? { errorCode } : {}),
    };
    this.result = result;
    this.onEnd?.(result, this);
    this.resolveDone?.(result);
  }
}
