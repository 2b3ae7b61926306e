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
//   to reading into a small ring of its own buffers (ownBufferReads, src/proxy/fast-read.ts);
//   idle and small connections hold no buffer of ours.
// - Timers: one per connection, the client socket's own inactivity timer (Node refreshes it on
//   every read and write). Every byte of either direction passes through the client socket, so
//   its inactivity is exactly the connection's. It is the idle timeout while both directions run,
//   and the half-close bound (min of both) once one direction is done.
// - When both directions are done the sockets are destroyed and `done` resolves once.
import type net from 'node:net';
import type { RelayEndReason, RelayResult } from '../api.js';
import { errnoCode } from '../errors.js';
import { readIntoOwnBuffers, resumeOwnBufferReads } from './fast-read.js';

export interface RelayOptions {
  /** Close the connection after this long with no byte either way. 0: never. */
  readonly idleTimeoutMs: number;
  /** Once one direction has ended, close when nothing moves for this long. 0: never. */
  readonly halfCloseTimeoutMs: number;
}

type DirectionState = 'running' | 'shutting-down' | 'done';

/** A direction that has moved this much is a bulk transfer and reads into its own buffers. */
const FAST_AFTER_BYTES = 1024 * 1024;
const RING_BUFFERS = 4;
const RING_BUFFER_MIN = 128 * 1024;
const RING_BUFFER_MAX = 1024 * 1024;

const noop = (): void => {};

export class Relay {
  readonly done: Promise<RelayResult>;
  private resolveDone!: (r: RelayResult) => void;
  private readonly started = Date.now();
  private toContainer: DirectionState = 'running';
  private toClient: DirectionState = 'running';
  private bytesUp = 0;
  private bytesDown = 0;
  private finished = false;
  private bulk = 0;

  constructor(
    private readonly client: net.Socket,
    private readonly container: net.Socket,
    private readonly options: RelayOptions,
  ) {
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  get bytesToContainer(): number {
    return this.bytesUp;
  }

  get bytesToClient(): number {
    return this.bytesDown;
  }

  /** Wires both directions and starts reading. Data already buffered in either socket flows first. */
  start(): void {
    const { client, container } = this;
    client.allowHalfOpen = true;
    container.allowHalfOpen = true;
    this.pump(client, container, true);
    this.pump(container, client, false);

    client.on('error', (err) => this.fail(err, 'client'));
    container.on('error', (err) => this.fail(err, 'container'));
    // A socket closed without an error while a direction still runs (destroyed from elsewhere).
    client.on('close', () => this.closedEarly('client'));
    container.on('close', () => this.closedEarly('container'));

    this.armTimer();
    client.on('timeout', () => this.finish(this.toContainer === 'running' && this.toClient === 'running' ? 'idle-timeout' : 'half-close-timeout', true));
    client.resume();
    container.resume();
  }

  /** Aborts the relay now: both sockets are reset. Idempotent. */
  destroy(reason: RelayEndReason = 'destroyed'): void {
    this.finish(reason, true);
  }

  /**
   * One direction. It starts with 'data' events (Node allocates each read; nothing is held while
   * a connection is idle). Once it has moved FAST_AFTER_BYTES it is a bulk transfer, and it
   * switches to reading into a small ring of buffers of its own (see ownBufferReads).
   */
  private pump(src: net.Socket, dst: net.Socket, up: boolean): void {
    let switched = false;
    const onData = (chunk: Buffer): void => {
      this.count(up, chunk.length);
      if (!dst.write(chunk)) {
        src.pause();
        return;
      }
      if (!switched && (up ? this.bytesUp : this.bytesDown) >= FAST_AFTER_BYTES) {
        switched = true;
        src.pause(); // no read is delivered before the tick below: no 'data' is lost in between
        process.nextTick(switchToOwnBuffers);
      }
    };
    const switchToOwnBuffers = (): void => {
      if (this.finished || src.destroyed) return;
      src.off('data', onData);
      if (this.ownBufferReads(src, dst, up)) this.bulk++;
      else src.on('data', onData);
      src.resume();
    };
    src.on('data', onData);
    dst.on('drain', () => {
      if (src.isPaused()) src.resume();
    });
    src.on('end', () => {
      this.setState(up, 'shutting-down');
      dst.end();
    });
    dst.on('finish', () => {
      // Our FIN went out toward dst: this direction is complete once the source had ended.
      if (this.stateOf(up) === 'shutting-down') this.setState(up, 'done');
    });
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
  private ownBufferReads(src: net.Socket, dst: net.Socket, up: boolean): boolean {
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
      this.count(up, n);
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

  private count(up: boolean, n: number): void {
    if (up) this.bytesUp += n;
    else this.bytesDown += n;
  }

  private stateOf(up: boolean): DirectionState {
    return up ? this.toContainer : this.toClient;
  }

  private setState(up: boolean, state: DirectionState): void {
    if (this.finished) return;
    if (up) this.toContainer = state;
    else this.toClient = state;
    if (this.toContainer === 'done' && this.toClient === 'done') {
      this.finish('done', false);
      return;
    }
    this.armTimer();
  }

  private armTimer(): void {
    const { idleTimeoutMs, halfCloseTimeoutMs } = this.options;
    const halfClosed = this.toContainer !== 'running' || this.toClient !== 'running';
    let ms = idleTimeoutMs;
    if (halfClosed && halfCloseTimeoutMs > 0) ms = ms === 0 ? halfCloseTimeoutMs : Math.min(ms, halfCloseTimeoutMs);
    this.client.setTimeout(ms);
  }

  private fail(err: Error, side: 'client' | 'container'): void {
    if (this.finished) return;
    const code = errnoCode(err);
    const reset = code === 'ECONNRESET' || code === 'EPIPE';
    const reason: RelayEndReason = side === 'client' ? (reset ? 'client-reset' : 'client-error') : reset ? 'container-reset' : 'container-error';
    this.finish(reason, true, code);
  }

  private closedEarly(side: 'client' | 'container'): void {
    if (this.finished) return;
    // A socket that has read EOF and flushed our FIN closes by itself (autoDestroy): not an error;
    // the other socket's 'finish' completes the relay.
    const socket = side === 'client' ? this.client : this.container;
    if (socket.readableEnded && socket.writableFinished) return;
    this.finish(side === 'client' ? 'client-error' : 'container-error', true, 'ECLOSED');
  }

  private finish(reason: RelayEndReason, reset: boolean, errorCode?: string): void {
    if (this.finished) return;
    this.finished = true;
    const { client, container } = this;
    // Late errors on either socket must never crash the process.
    client.on('error', noop);
    container.on('error', noop);
    client.setTimeout(0);
    if (reset) {
      if (!client.destroyed) client.resetAndDestroy();
      if (!container.destroyed) container.resetAndDestroy();
    } else {
      client.destroy();
      container.destroy();
    }
    const result: RelayResult = {
      bytesToContainer: this.bytesUp,
      bytesToClient: this.bytesDown,
      reason,
      durationMs: Date.now() - this.started,
      bulkDirections: this.bulk,
      ...(errorCode !== undefined ? { errorCode } : {}),
    };
    this.resolveDone(result);
  }
}
