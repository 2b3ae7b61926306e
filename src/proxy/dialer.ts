// How a listener reaches the container: a Dialer. The direct dialer connects from this process's
// own network namespace; the namespace dialer (src/netns/helper.ts) asks a helper that lives inside
// the container's namespace to connect and hand the socket back. The conformance suite runs the
// same tests against both.
import net from 'node:net';
import dgram from 'node:dgram';
import type { Endpoint } from '../api.js';
import { canonicalIP, formatEndpoint } from '../addr.js';
import { PortferryError, errnoCode } from '../errors.js';
import util from 'node:util';
import { rawDial, udpPort, type TcpPort, type TcpPortOwner } from '../internals.js';

export interface DialOptions {
  /** Give up after this long (ms) with PF_DIAL_TIMEOUT. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

/**
 * Who waits on a dial: told once how it ended — `(null, port)` connected (a TcpPort: a raw handle
 * or a net.Socket behind the same methods; set its owner at once, nothing is read until then), or
 * `(error, null)` with PF_DIAL_TIMEOUT, PF_DIAL_FAILED (the errno in `details.errno`) or
 * PF_NETNS_*. Never after cancel(); possibly before dialTcp returns (a dial that fails at once).
 * An object, not a callback: the connection engine is its own waiter (no closure per connection).
 */
export interface DialWaiter {
  dialled(err: Error | null, port: TcpPort | null): void;
}

/** A dial under way. cancel() ends it now and releases what it holds; its waiter is not told. */
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
   * Connect a TCP socket to the container within `timeoutMs` and hand it to `waiter` as a
   * TcpPort, connected and not reading (the connection engine starts it). Not a promise: this
   * runs once per connection (see dialTcpAsync for a promise).
   */
  dialTcp(target: Endpoint, timeoutMs: number, waiter: DialWaiter): DialAttempt;
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


/**
 * A dial as a promise of a net.Socket (tests, one-off callers: the port is detached into a
 * paused net.Socket with allowHalfOpen); `signal` cancels it with PF_DIAL_FAILED (ABORTED).
 */
export function dialTcpAsync(dialer: Dialer, target: Endpoint, options: DialOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const aborted = (): PortferryError => dialError(target, Object.assign(new Error('aborted'), { code: 'ABORTED' }));
    if (options.signal?.aborted === true) return reject(aborted());
    const onAbort = (): void => {
      attempt.cancel();
      reject(aborted());
    };
    const attempt = dialer.dialTcp(target, options.timeoutMs, {
      dialled(err, port) {
        options.signal?.removeEventListener('abort', onAbort);
        if (port !== null) resolve(port.detach());
        else reject(err);
      },
    });
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A failed system call's errno as an error (code: its name). */
export function errnoError(errno: number): NodeJS.ErrnoException {
  let code = `E${-errno}`;
  try {
    code = util.getSystemErrorName(errno);
  } catch {
    // not a system errno
  }
  return Object.assign(new Error(code), { code, errno });
}

/**
 * One direct dial: the port's owner while it connects (rawDial: a raw handle, or a net.Socket
 * when rawTcp is off), with the dial's timer. Its timer gets the dial as an argument: no closure.
 */
class DirectDial implements DialAttempt, TcpPortOwner {
  private port: TcpPort | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly target: Endpoint,
    private readonly timeoutMs: number,
    private waiter: DialWaiter | null,
    /** The connect timeout the error names: the whole dial's, when part of it went by before this (a pool's wait). */
    private readonly reportedTimeoutMs = timeoutMs,
  ) {}

  /** Dials a new socket, or `handle`: an unconnected TCP handle made elsewhere (a namespace's pooled socket). */
  start(handle?: unknown): void {
    const p = rawDial(this.target.ip, this.target.port, this, handle);
    if (typeof p === 'number') {
      this.settle()?.dialled(dialError(this.target, errnoError(p)), null);
      return;
    }
    this.port = p;
    this.timer = setTimeout(onDialTimeout, this.timeoutMs, this);
  }

  cancel(): void {
    // A reset, not a close: the connect may have completed in the kernel already, and the
    // container must not take an abandoned connection for an empty but complete one.
    if (this.settle() !== null) this.port?.reset();
  }

  /** The waiter, once: null when the dial has already ended. */
  private settle(): DialWaiter | null {
    const w = this.waiter;
    if (w === null) return null;
    this.waiter = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    return w;
  }

  onConnected(port: TcpPort, status: number): void {
    const w = this.settle();
    if (w === null) return;
    if (status < 0) {
      port.close();
      w.dialled(dialError(this.target, errnoError(status)), null);
      return;
    }
    w.dialled(null, port);
  }

  timedOut(): void {
    this.timer = null;
    const w = this.settle();
    if (w === null) return;
    this.port?.close();
    w.dialled(dialTimeoutError(this.target, this.reportedTimeoutMs), null);
  }

  // Nothing else reaches a port that is connecting and not reading; if it did, the dial failed.
  onData(port: TcpPort): undefined {
    this.onConnected(port, UV_EPIPE);
    return undefined;
  }
  onEnd(port: TcpPort): void {
    this.onConnected(port, UV_EPIPE);
  }
  onError(port: TcpPort, errno: number): void {
    this.onConnected(port, errno);
  }
  onWritten(): void {}
  onShutdown(): void {}
}

const UV_EPIPE = -32;

function onDialTimeout(dial: DirectDial): void {
  dial.timedOut();
}

/**
 * Connects `handle`, an unconnected TCP socket made in another network namespace (src/netns: the
 * native helper's pool), exactly as a direct dial: the socket keeps its namespace, the connect is
 * this process's.
 */
export function dialTcpWith(target: Endpoint, timeoutMs: number, waiter: DialWaiter, handle: unknown, reportedTimeoutMs = timeoutMs): DialAttempt {
  const dial = new DirectDial(target, timeoutMs, waiter, reportedTimeoutMs);
  dial.start(handle);
  return dial;
}

/** Dials from this process's own network namespace. */
export class DirectDialer implements Dialer {
  readonly kind = 'direct' as const;

  dialTcp(target: Endpoint, timeoutMs: number, waiter: DialWaiter): DialAttempt {
    const dial = new DirectDial(target, timeoutMs, waiter);
    dial.start();
    return dial;
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
