// How a listener reaches the container: a Dialer. The direct dialer connects from this process's
// own network namespace; the namespace dialer (src/netns/helper.ts) asks a helper that lives inside
// the container's namespace to connect and hand the socket back. The conformance suite runs the
// same tests against both.
import net from 'node:net';
import dgram from 'node:dgram';
import type { Endpoint } from '../api.js';
import { canonicalIP, formatEndpoint } from '../addr.js';
import { PortferryError, errnoCode } from '../errors.js';
import { udpPort } from '../internals.js';

export interface DialOptions {
  /** Give up after this long (ms) with PF_DIAL_TIMEOUT. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

/**
 * How a dial ends: `(null, socket)` connected, or `(error, null)` with PF_DIAL_TIMEOUT,
 * PF_DIAL_FAILED (the errno in `details.errno`) or PF_NETNS_*. Called once, never after cancel().
 */
export type DialCallback = (err: Error | null, socket: net.Socket | null) => void;

/** A dial under way. cancel() ends it now and releases what it holds; its callback is not called. */
export interface DialAttempt {
  cancel(): void;
}

/**
 * A UDP socket that reaches the container. `send` goes to the container; `onMessage` receives its
 * replies. It may be a connected dgram socket (direct) or a relay through a helper (namespace).
 */
export interface UdpChannel {
  /** Sends one datagram. Fire and forget: errors of a send are not reported (no per-datagram callback). */
  send(payload: Buffer | readonly Buffer[]): void;
  /** Datagrams waiting in this process for the socket to take them (0 unless the socket was full). */
  queued(): number;
  onMessage(handler: (msg: Buffer) => void): void;
  /** Errors on the channel (ICMP-driven ECONNREFUSED included); the channel stays usable. */
  onError(handler: (err: Error) => void): void;
  close(): void;
}

export interface Dialer {
  readonly kind: 'direct' | 'netns';
  /**
   * Connect a TCP socket to the container within `timeoutMs`. The socket is handed over
   * connected, with allowHalfOpen set and reading paused (the relay starts it). A plain callback,
   * not a promise: this runs once per connection (see dialTcpAsync for a promise).
   */
  dialTcp(target: Endpoint, timeoutMs: number, done: DialCallback): DialAttempt;
  /** Open a UDP channel to the container. */
  openUdp(target: Endpoint): Promise<UdpChannel>;
  /** Release what the dialer holds (helper processes). Idempotent. */
  close(): Promise<void>;
}

/** Wraps a failed connect as a coded error naming the target. */
export function dialError(target: Endpoint, err: unknown): PortferryError {
  const code = errnoCode(err) ?? 'unknown';
  const details = { target: formatEndpoint(target), errno: code };
  if (code === 'EMFILE' || code === 'ENFILE') {
    return new PortferryError('PF_DIAL_FAILED', `cannot dial container ${formatEndpoint(target)}: no descriptor left here (${code}), a local shortage`, {
      cause: err,
      details,
      hint: 'Raise the descriptor limit (`ulimit -n`, LimitNOFILE= under systemd) or lower maxConnections; the container is not at fault.',
    });
  }
  return new PortferryError('PF_DIAL_FAILED', `connecting to container ${formatEndpoint(target)} failed: ${code}`, { cause: err, details });
}

export function dialTimeoutError(target: Endpoint, timeoutMs: number): PortferryError {
  return new PortferryError('PF_DIAL_TIMEOUT', `connecting to container ${formatEndpoint(target)} timed out after ${timeoutMs} ms`, {
    details: { target: formatEndpoint(target), timeoutMs },
  });
}


/** A dial as a promise (tests, one-off callers); `signal` cancels it with PF_DIAL_FAILED (ABORTED). */
export function dialTcpAsync(dialer: Dialer, target: Endpoint, options: DialOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const aborted = (): PortferryError => dialError(target, Object.assign(new Error('aborted'), { code: 'ABORTED' }));
    if (options.signal?.aborted === true) return reject(aborted());
    const onAbort = (): void => {
      attempt.cancel();
      reject(aborted());
    };
    const attempt = dialer.dialTcp(target, options.timeoutMs, (err, socket) => {
      options.signal?.removeEventListener('abort', onAbort);
      if (socket !== null) resolve(socket);
      else reject(err);
    });
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * One direct dial. Its socket's listeners are shared functions that find the dial through the
 * socket (`this`), and its timer gets the dial as an argument: no closure per dial.
 */
class DirectDial implements DialAttempt {
  readonly socket: DialSocket;
  private timer: NodeJS.Timeout | null;

  constructor(
    private readonly target: Endpoint,
    private readonly timeoutMs: number,
    private done: DialCallback | null,
  ) {
    const socket = new DialSocket(this);
    this.socket = socket;
    // Plain on(): once() would wrap each listener in a closure. After the dial settles
    // socket.dial is null and these do nothing (the relay adds its own 'error' listener).
    socket.on('connect', onDialConnect);
    socket.on('error', onDialError);
    this.timer = setTimeout(onDialTimeout, timeoutMs, this);
    socket.connect({ host: target.ip, port: target.port });
  }

  cancel(): void {
    if (this.settle() !== null) this.socket.destroy();
  }

  /** The callback, once: null when the dial has already ended. */
  private settle(): DialCallback | null {
    const done = this.done;
    if (done === null) return null;
    this.done = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.socket.dial = null;
    return done;
  }

  connected(): void {
    const done = this.settle();
    if (done === null) return;
    const { socket } = this;
    socket.pause(); // inside 'connect': Node then does not start reading
    done(null, socket);
  }

  failed(err: Error): void {
    const done = this.settle();
    if (done === null) return;
    this.socket.destroy();
    done(dialError(this.target, err), null);
  }

  timedOut(): void {
    this.timer = null;
    const done = this.settle();
    if (done === null) return;
    this.socket.destroy();
    done(dialTimeoutError(this.target, this.timeoutMs), null);
  }
}

class DialSocket extends net.Socket {
  constructor(public dial: DirectDial | null) {
    super({ allowHalfOpen: true });
    this.setNoDelay(true); // before connect: only a flag, applied once connected
  }
}

function onDialConnect(this: DialSocket): void {
  this.dial?.connected();
}

function onDialError(this: DialSocket, err: Error): void {
  this.dial?.failed(err);
}

function onDialTimeout(dial: DirectDial): void {
  dial.timedOut();
}

/** Dials from this process's own network namespace. */
export class DirectDialer implements Dialer {
  readonly kind = 'direct' as const;

  dialTcp(target: Endpoint, timeoutMs: number, done: DialCallback): DialAttempt {
    return new DirectDial(target, timeoutMs, done);
  }

  openUdp(target: Endpoint): Promise<UdpChannel> {
    return openConnectedUdp(target);
  }

  async close(): Promise<void> {}
}

/** A dgram socket connected to the target, wrapped as a UdpChannel. */
export function openConnectedUdp(target: Endpoint): Promise<UdpChannel> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({ type: net.isIPv6(target.ip) ? 'udp6' : 'udp4' });
    const onError = (err: Error): void => {
      socket.close();
      reject(dialError(target, err));
    };
    socket.once('error', onError);
    socket.connect(target.port, target.ip, () => {
      socket.off('error', onError);
      resolve(wrapDgram(socket));
    });
  });
}

/**
 * A dgram socket as a UdpChannel. Connected (the usual case): plain sends, and the kernel delivers
 * only the target's datagrams and its ICMP errors. With `unconnectedTarget` (a socket that could
 * not be connected): every send names the target and datagrams from anyone else are dropped.
 */
export function wrapDgram(socket: dgram.Socket, unconnectedTarget?: Endpoint): UdpChannel {
  let closed = false;
  let errorHandler: (err: Error) => void = () => {};
  let messageHandler: (msg: Buffer) => void = () => {};
  socket.on('error', (err) => errorHandler(err));
  // No send callback: with one, dgram schedules a process.nextTick per datagram (~2 % of the
  // forwarder's CPU at full rate in a perf profile). ICMP errors still arrive, as 'error' events.
  const target = unconnectedTarget;
  // rinfo.address is canonical text; compare with the target written the same way (a sender that
  // does not match at once is canonicalised too: libuv writes a few rare forms its own way).
  const wanted = target === undefined ? '' : (canonicalIP(target.ip) ?? target.ip);
  const fromTarget = (address: string, port: number): boolean => port === target?.port && (address === wanted || canonicalIP(address) === wanted);
  // Through the socket's handle when that fast path is on (src/internals.ts: udpPort).
  const port = udpPort(socket, target === undefined ? (msg) => messageHandler(msg) : (msg, address, from) => {
    if (fromTarget(address, from)) messageHandler(msg);
  });
  return {
    send(payload) {
      if (closed) return;
      if (Buffer.isBuffer(payload)) {
        if (target === undefined) port.send(payload);
        else port.sendTo(payload, target.port, target.ip);
      } else if (target === undefined) port.sendList(payload);
      else port.sendListTo(payload, target.port, target.ip);
    },
    queued() {
      return closed ? 0 : port.queued();
    },
    onMessage(handler) {
      messageHandler = handler;
    },
    onError(handler) {
      errorHandler = handler;
    },
    close() {
      if (closed) return;
      closed = true;
      socket.close();
    },
  };
}

/** The errno behind a failed dial (ECONNREFUSED, ETIMEDOUT, EMFILE …): PF_DIAL_FAILED carries it in its details. */
export function dialErrno(err: unknown): string {
  if (err instanceof PortferryError) {
    if (err.code === 'PF_DIAL_TIMEOUT') return 'ETIMEDOUT';
    const errno = err.details['errno'];
    if (typeof errno === 'string') return errno;
  }
  return errnoCode((err as { cause?: unknown } | null)?.cause) ?? errnoCode(err) ?? 'unknown';
}
