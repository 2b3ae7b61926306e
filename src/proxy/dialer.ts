// How a listener reaches the container: a Dialer. The direct dialer connects from this process's
// own network namespace; the namespace dialer (src/netns/helper.ts) asks a helper that lives inside
// the container's namespace to connect and hand the socket back. The conformance suite runs the
// same tests against both.
import net from 'node:net';
import dgram from 'node:dgram';
import type { Endpoint } from '../api.js';
import { canonicalIP, formatEndpoint } from '../addr.js';
import { PortferryError, errnoCode } from '../errors.js';

export interface DialOptions {
  /** Give up after this long (ms) with PF_DIAL_TIMEOUT. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

/**
 * A UDP socket that reaches the container. `send` goes to the container; `onMessage` receives its
 * replies. It may be a connected dgram socket (direct) or a relay through a helper (namespace).
 */
export interface UdpChannel {
  send(payload: Buffer | readonly Buffer[]): void;
  onMessage(handler: (msg: Buffer) => void): void;
  /** Errors on the channel (ICMP-driven ECONNREFUSED included); the channel stays usable. */
  onError(handler: (err: Error) => void): void;
  close(): void;
}

export interface Dialer {
  readonly kind: 'direct' | 'netns';
  /**
   * Connect a TCP socket to the container. The socket is returned connected, with
   * allowHalfOpen set and reading paused (the relay starts it). Rejects with PF_DIAL_TIMEOUT or
   * PF_DIAL_FAILED; the caller's listener keeps serving either way.
   */
  dialTcp(target: Endpoint, options: DialOptions): Promise<net.Socket>;
  /** Open a UDP channel to the container. */
  openUdp(target: Endpoint): Promise<UdpChannel>;
  /** Release what the dialer holds (helper processes). Idempotent. */
  close(): Promise<void>;
}

/** Wraps a failed connect as a coded error naming the target. */
export function dialError(target: Endpoint, err: unknown): PortferryError {
  const code = errnoCode(err) ?? 'unknown';
  return new PortferryError('PF_DIAL_FAILED', `connecting to container ${formatEndpoint(target)} failed: ${code}`, {
    cause: err,
    details: { target: formatEndpoint(target), errno: code },
  });
}

export function dialTimeoutError(target: Endpoint, timeoutMs: number): PortferryError {
  return new PortferryError('PF_DIAL_TIMEOUT', `connecting to container ${formatEndpoint(target)} timed out after ${timeoutMs} ms`, {
    details: { target: formatEndpoint(target), timeoutMs },
  });
}


/** Dials from this process's own network namespace. */
export class DirectDialer implements Dialer {
  readonly kind = 'direct' as const;

  dialTcp(target: Endpoint, options: DialOptions): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: target.ip, port: target.port, allowHalfOpen: true, noDelay: true });
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        socket.destroy();
        reject(dialTimeoutError(target, options.timeoutMs));
      }, options.timeoutMs);
      const onAbort = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(dialError(target, Object.assign(new Error('aborted'), { code: 'ABORTED' })));
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('connect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        socket.removeAllListeners('error');
        socket.pause();
        resolve(socket);
      });
      socket.once('error', (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        socket.destroy();
        reject(dialError(target, err));
      });
    });
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
  socket.on('error', (err) => errorHandler(err));
  // One callback for every send (no closure per datagram): send errors reach the error handler.
  const afterSend = (err: Error | null): void => {
    if (err) errorHandler(err);
  };
  const target = unconnectedTarget;
  // rinfo.address is canonical text; compare with the target written the same way (a sender that
  // does not match at once is canonicalised too: libuv writes a few rare forms its own way).
  const wanted = target === undefined ? '' : (canonicalIP(target.ip) ?? target.ip);
  return {
    send(payload) {
      if (closed) return;
      if (target === undefined) socket.send(payload as Buffer[], afterSend);
      else socket.send(payload as Buffer[], target.port, target.ip, afterSend);
    },
    onMessage(handler) {
      if (target === undefined) socket.on('message', handler);
      else socket.on('message', (msg, rinfo) => {
        if (rinfo.port === target.port && (rinfo.address === wanted || canonicalIP(rinfo.address) === wanted)) handler(msg);
      });
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
