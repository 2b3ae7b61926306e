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
// - Timers: one per connection, the client socket's own inactivity timer (Node refreshes it on
//   every read and write). Every byte of either direction passes through the client socket, so
//   its inactivity is exactly the connection's. It is the idle timeout while both directions run,
//   and the half-close bound (min of both) once one direction is done.
// - When both directions are done the sockets are destroyed and `done` resolves once.
import type net from 'node:net';
import type { RelayEndReason, RelayResult } from '../api.js';
import { errnoCode } from '../errors.js';

export interface RelayOptions {
  /** Close the connection after this long with no byte either way. 0: never. */
  readonly idleTimeoutMs: number;
  /** Once one direction has ended, close when nothing moves for this long. 0: never. */
  readonly halfCloseTimeoutMs: number;
}

type DirectionState = 'running' | 'shutting-down' | 'done';

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

  private pump(src: net.Socket, dst: net.Socket, up: boolean): void {
    const onDrain = (): void => {
      src.resume();
    };
    dst.on('drain', onDrain);
    src.on('data', (chunk: Buffer) => {
      if (up) this.bytesUp += chunk.length;
      else this.bytesDown += chunk.length;
      if (!dst.write(chunk)) src.pause();
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
      ...(errorCode !== undefined ? { errorCode } : {}),
    };
    this.resolveDone(result);
  }
}
