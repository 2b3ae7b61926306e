// The namespace dialer: reaches a container that exists only inside its network namespace, the way
// rootlesskit's builtin port driver does. One helper process per namespace (helper-main.ts) is
// started lazily through `nsenter`, reused for every dial, and restarted after it dies. It dials
// from inside and hands the socket back over the IPC channel; from then on the socket belongs to
// this process (it stays in the container's namespace: a socket keeps the namespace it was made
// in), so a helper's death never ends a live connection or flow.
//
// UDP: the helper binds a datagram socket inside the namespace and hands it back; this side
// connects it to the target (routing still happens in the container's namespace) and uses it as a
// direct connected socket. Relaying datagrams over IPC instead would cost a JSON message per
// datagram through one process, and every flow would die with the helper.
//
// Over 350 lines on purpose: the helper's whole lifecycle (start, IPC requests, restart, death
// reporting) and both protocols are one state machine; split, each half would need the other's
// private state.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import type { Endpoint } from '../api.js';
import { PortferryError } from '../errors.js';
import { adoptConnected, countFastPathUse, fixReceivedUdp6Connect, nsSocketsOn } from '../internals.js';
import { closeHandle, dgramFromUdpHandle, type NsFamily, type NsTcpHandle, type NsUdpHandle } from '../internals-nsd.js';
import type { Logger } from '../log.js';
import { dialError, dialTcpWith, dialTimeoutError, wrapDgram, type DialAttempt, type DialWaiter, type Dialer, type UdpChannel } from '../proxy/dialer.js';
import { isHelperReply, type HelperReply, type HelperRequest } from './helper-protocol.js';
import { validateNetnsPath } from './nsfs.js';
import { nsdServiceFor, type NsdService } from './nsd.js';

export { validateNetnsPath } from './nsfs.js';

export interface NetnsDialerOptions {
  /** The network namespace to dial from: /proc/PID/ns/net or /run/netns/NAME. */
  readonly netnsPath: string;
  readonly logger: Logger;
  /** Rootless: the user namespace that owns netnsPath (/proc/PID/ns/user); entered first. */
  readonly userns?: string;
  /** How long a helper may take to start and report ready (ms). Default 10 s. */
  readonly startTimeoutMs?: number;
}

const DEFAULT_START_TIMEOUT_MS = 10_000;
const UDP_OPEN_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 2_000;
const STDERR_TAIL = 2_048;
/** After a failed IPC write, how long to wait for the helper's exit to report the real cause. */
const SEND_FAILURE_GRACE_MS = 1_000;

/** dist/netns/helper-main.js, also when this module runs from src/ under ts-node (tests). */
export function helperMainPath(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return path.resolve(path.dirname(here), '../../dist/netns/helper-main.js');
  return path.join(path.dirname(here), 'helper-main.js');
}

interface PendingRequest {
  onReply(msg: HelperReply, handle: net.Socket | dgram.Socket | undefined): void;
  onHelperDeath(err: PortferryError): void;
}

/** One running helper: a child process inside the namespace and its open requests. */
class Helper {
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly pending = new Map<number, PendingRequest>();
  dead = false;
  /** Set by stop(): the exit that follows is expected and logged at debug. */
  private stopping = false;
  private stderrTail = '';
  private readonly closed: Promise<void>;

  constructor(
    private readonly opts: NetnsDialerOptions,
    private readonly log: Logger,
    private readonly onDeath: (helper: Helper) => void,
  ) {
    const args: string[] = [];
    if (opts.userns !== undefined) args.push(`--user=${opts.userns}`, '--preserve-credentials');
    args.push(`--net=${opts.netnsPath}`, '--', process.execPath, helperMainPath());
    this.child = spawn('nsenter', args, { stdio: ['ignore', 'inherit', 'pipe', 'ipc'], serialization: 'json' });
    const child = this.child;
    // The helper must not keep a finished forwarder alive; open requests hold their own timers.
    child.unref();
    child.channel?.unref();
    const stderr = child.stderr as net.Socket | null;
    stderr?.unref();
    stderr?.setEncoding('utf8');
    stderr?.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL);
      for (const line of chunk.split('\n')) if (line.trim() !== '') this.log.warn({ pid: child.pid, stderr: line }, 'netns helper wrote to stderr');
    });

    let resolveClosed: () => void = () => {};
    this.closed = new Promise((resolve) => (resolveClosed = resolve));
    const startTimeoutMs = opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    this.ready = new Promise<void>((resolve, reject) => {
      let started = false;
      const timer = setTimeout(() => {
        reject(this.error(`did not report ready within ${startTimeoutMs} ms`));
        this.kill('SIGKILL');
      }, startTimeoutMs);
      child.on('message', (msg: unknown, handle: unknown) => {
        if (!isHelperReply(msg)) return;
        const h = handle instanceof net.Socket || handle instanceof dgram.Socket ? handle : undefined;
        if (msg.type === 'ready') {
          started = true;
          clearTimeout(timer);
          this.log.debug({ pid: msg.pid, netnsId: msg.netns }, 'netns helper started');
          resolve();
          return;
        }
        const req = this.pending.get(msg.id);
        if (req === undefined) {
          // A reply to a request that timed out or was cancelled: nobody wants the socket.
          if (h instanceof net.Socket) h.destroy();
          else if (h instanceof dgram.Socket) h.close();
          return;
        }
        this.pending.delete(msg.id);
        req.onReply(msg, h);
      });
      const died = (code: number | null, signal: NodeJS.Signals | null, err?: Error): void => {
        if (this.dead) return;
        this.dead = true;
        clearTimeout(timer);
        const how = err !== undefined ? `could not be started (${err.message})` : signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
        const deathErr = this.error(how, err);
        const fields = { pid: child.pid, code, signal, stderr: this.stderrTail.trim() || undefined, pending: this.pending.size };
        if (this.stopping) this.log.debug(fields, `netns helper stopped (${how})`);
        else this.log.warn(fields, `netns helper ${how}; it is restarted on the next request`);
        if (!started) reject(deathErr);
        const reqs = [...this.pending.values()];
        this.pending.clear();
        for (const r of reqs) r.onHelperDeath(deathErr);
        resolveClosed();
        this.onDeath(this);
      };
      child.once('error', (err) => died(null, null, err));
      child.once('close', (code, signal) => died(code, signal));
    });
    // Nobody may be waiting yet; a failed start is reported to the requests that wait for it.
    this.ready.catch(() => {});
  }

  error(how: string, cause?: unknown): PortferryError {
    const tail = this.stderrTail.trim();
    return new PortferryError('PF_NETNS_HELPER', `netns helper for ${this.opts.netnsPath} ${how}${tail === '' ? '' : `: ${tail.split('\n').slice(-3).join(' | ')}`}`, {
      ...(cause === undefined ? {} : { cause }),
      details: { netns: this.opts.netnsPath, ...(this.opts.userns === undefined ? {} : { userns: this.opts.userns }), pid: this.child.pid },
    });
  }

  /** Sends a request; its outcome arrives through `req`. */
  send(id: number, msg: HelperRequest, req: PendingRequest | null): void {
    if (this.dead || !this.child.connected) {
      req?.onHelperDeath(this.error('is not running'));
      return;
    }
    if (req !== null) this.pending.set(id, req);
    this.child.send(msg, (err) => {
      if (err === null || err === undefined || req === null) return;
      // A broken channel (EPIPE) means the helper is going away, and its exit says why: died()
      // fails every pending request with that reason. Only if it does not go soon does this
      // request fail with the write error itself.
      setTimeout(() => {
        if (this.pending.delete(id)) req.onHelperDeath(this.error(`could not be reached (${err.message})`, err));
      }, SEND_FAILURE_GRACE_MS).unref();
    });
  }

  forget(id: number): void {
    if (this.pending.delete(id)) this.send(id, { type: 'cancel', id }, null);
  }

  kill(signal: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined || this.dead) return;
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }

  async stop(): Promise<void> {
    if (this.dead) return;
    this.stopping = true;
    this.kill('SIGTERM');
    const t = setTimeout(() => this.kill('SIGKILL'), STOP_GRACE_MS);
    await this.closed;
    clearTimeout(t);
  }
}

/** Dials from inside a network namespace through a helper process. */
export class NetnsDialer implements Dialer {
  readonly kind = 'netns' as const;
  private readonly log: Logger;
  private helper: Helper | null = null;
  private nextId = 1;
  private closed = false;
  private closing: Promise<void> | null = null;
  /** The native helper's service (one per user namespace, shared), once this dialer used it. */
  private nsd: NsdService | null = null;
  /** The path checks, once for the native path (a failed check is tried again next time). */
  private checked: Promise<void> | null = null;

  constructor(private readonly opts: NetnsDialerOptions) {
    this.log = opts.logger.child({ netns: opts.netnsPath });
  }

  /** Which helper dials for us now: the native socket pool, or the Node helper (fallback). */
  path(): 'native' | 'node' {
    return nsSocketsOn() ? 'native' : 'node';
  }

  /** The helper's PID while one runs (tests kill it to check the restart): the native one when that path is on. */
  helperPid(): number | null {
    if (this.path() === 'native') return this.nsd?.pid() ?? null;
    const h = this.helper;
    return h === null || h.dead ? null : (h.child.pid ?? null);
  }

  /** The native service this dialer uses (tests read its counters), or null. */
  nsdService(): NsdService | null {
    return this.nsd;
  }

  private service(): NsdService {
    if (this.nsd === null) {
      this.nsd = nsdServiceFor(this.opts.userns ?? null, this.opts.logger);
      this.nsd.acquire(this.opts.netnsPath);
    }
    return this.nsd;
  }

  private check(): Promise<void> {
    if (this.checked === null) {
      const p = (async () => {
        await validateNetnsPath(this.opts.netnsPath);
        if (this.opts.userns !== undefined) await validateUserns(this.opts.userns);
      })();
      this.checked = p;
      p.catch(() => {
        if (this.checked === p) this.checked = null;
      });
    }
    return this.checked;
  }

  /**
   * An unconnected TCP socket made inside the namespace, from the pool (at once in the common
   * case). dialTcpNative connects it through the engine's dial (src/proxy/dialer.ts dialTcpWith →
   * internals rawDial: a RawSocket when rawTcp is on). The handle is the caller's:
   * close it (closeHandle) if it is not used. Only while path() is 'native'; the callback's
   * error is PF_NETNS_* (after the native path was turned off: retry through dialTcp).
   */
  takeTcp(family: NsFamily, cb: (err: PortferryError | null, handle: NsTcpHandle | null) => void): void {
    this.takeNative(family, 'tcp', cb as (err: PortferryError | null, handle: NsTcpHandle | NsUdpHandle | null) => void);
  }

  private takeNative(family: NsFamily, proto: 'tcp' | 'udp', cb: (err: PortferryError | null, handle: NsTcpHandle | NsUdpHandle | null) => void): void {
    if (this.closed) return cb(this.closedError(), null);
    const service = this.service();
    const checked = this.checked;
    // After the first check the common case takes synchronously: no promise per connection.
    if (checked !== null && this.checkedOk) return service.take(this.opts.netnsPath, family, proto, cb);
    this.check().then(
      () => {
        this.checkedOk = true;
        if (this.closed) return cb(this.closedError(), null);
        service.take(this.opts.netnsPath, family, proto, cb);
      },
      (err: unknown) => cb(err instanceof PortferryError ? err : new PortferryError('PF_NETNS_INVALID', String(err)), null),
    );
  }
  private checkedOk = false;

  private closedError(): PortferryError {
    return new PortferryError('PF_NETNS_HELPER', `the namespace dialer for ${this.opts.netnsPath} is closed`, {
      hint: 'This dialer was closed (mapping removed or shutting down); create a new one.',
      details: { netns: this.opts.netnsPath },
    });
  }

  private async ensureHelper(): Promise<Helper> {
    if (this.closed) throw this.closedError();
    let h = this.helper;
    if (h === null || h.dead) {
      await validateNetnsPath(this.opts.netnsPath);
      if (this.opts.userns !== undefined) await validateUserns(this.opts.userns);
      if (this.closed) throw this.closedError();
      h = this.helper;
      if (h === null || h.dead) {
        h = new Helper(this.opts, this.log, (dead) => {
          if (this.helper === dead) this.helper = null;
        });
        this.helper = h;
      }
    }
    await h.ready;
    return h;
  }

  /**
   * Runs one request: `timeoutMs` bounds helper start and the request; `onReply` turns the reply
   * into a value or throws. Late replies are disposed of by the helper.
   */
  private request<T>(
    build: (id: number) => HelperRequest,
    timeoutMs: number,
    onTimeout: () => PortferryError,
    onReply: (msg: HelperReply, handle: net.Socket | dgram.Socket | undefined) => Promise<T>,
    signal?: AbortSignal,
    onAbort?: () => PortferryError,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let sent: { helper: Helper; id: number } | null = null;
      const settle = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        if (signal !== undefined) signal.removeEventListener('abort', aborted);
        return true;
      };
      const giveUp = (err: PortferryError): void => {
        if (!settle()) return;
        if (sent !== null) sent.helper.forget(sent.id);
        reject(err);
      };
      const timer = setTimeout(() => giveUp(onTimeout()), timeoutMs);
      const aborted = (): void => giveUp(onAbort !== undefined ? onAbort() : onTimeout());
      if (signal !== undefined) {
        if (signal.aborted) return aborted();
        signal.addEventListener('abort', aborted, { once: true });
      }
      this.ensureHelper().then(
        (helper) => {
          if (settled) return;
          const id = this.nextId++;
          sent = { helper, id };
          helper.send(id, build(id), {
            onReply: (msg, handle) => {
              if (settled) {
                if (handle instanceof net.Socket) handle.destroy();
                else if (handle instanceof dgram.Socket) handle.close();
                return;
              }
              onReply(msg, handle).then(
                (v) => {
                  if (settle()) resolve(v);
                  else if (v instanceof net.Socket) v.destroy();
                  else (v as { close?: () => void }).close?.();
                },
                (err: unknown) => {
                  if (settle()) reject(err);
                },
              );
            },
            onHelperDeath: (err) => {
              sent = null;
              if (settle()) reject(err);
            },
          });
        },
        (err: unknown) => {
          if (settle()) reject(err);
        },
      );
    });
  }

  dialTcp(target: Endpoint, timeoutMs: number, waiter: DialWaiter): DialAttempt {
    if (nsSocketsOn()) return this.dialTcpNative(target, timeoutMs, waiter);
    return this.dialTcpNode(target, timeoutMs, waiter);
  }

  /**
   * A pooled socket made in the namespace, connected here like a direct dial (dialTcpWith: a
   * RawSocket when rawTcp is on). In the common case the pool hands one over at once and no
   * timer or promise is made for the wait.
   */
  private dialTcpNative(target: Endpoint, timeoutMs: number, waiter: DialWaiter): DialAttempt {
    const started = Date.now();
    let attempt: DialAttempt | null = null;
    let over = false;
    let timer: NodeJS.Timeout | null = null;
    const remaining = (): number => Math.max(1, timeoutMs - (Date.now() - started));
    // A mapping's container IP is canonical: ':' tells the family without net.isIPv6's regular
    // expression (0.7 % of the forwarder's busy time per connection in a profile).
    this.takeTcp(target.ip.includes(':') ? 6 : 4, (err, h) => {
      if (over) {
        if (h !== null) closeHandle(h);
        return;
      }
      if (timer !== null) clearTimeout(timer);
      if (err !== null || h === null) {
        // The native path was turned off under us (its helper failed the self-test, or cannot
        // start here): this dial goes through the Node helper.
        if (!nsSocketsOn() && !this.closed) {
          attempt = this.dialTcpNode(target, remaining(), waiter);
          return;
        }
        over = true;
        waiter.dialled(err ?? this.closedError(), null);
        return;
      }
      countFastPathUse('nsSockets');
      attempt = dialTcpWith(target, remaining(), waiter, h, timeoutMs);
    });
    if (attempt === null && !over) {
      // The pool was empty: bound the wait for its next batch by the connect timeout.
      timer = setTimeout(() => {
        if (attempt !== null || over) return;
        over = true;
        waiter.dialled(dialTimeoutError(target, timeoutMs), null);
      }, timeoutMs);
    }
    return {
      cancel: () => {
        if (attempt !== null) return attempt.cancel();
        over = true;
        if (timer !== null) clearTimeout(timer);
      },
    };
  }

  /**
   * The Node helper dials inside the namespace and hands the connected socket over IPC; it is
   * adopted as a TcpPort (src/internals.ts adoptConnected): its handle becomes a RawSocket when
   * rawTcp is on, else a net.Socket's port.
   */
  private dialTcpNode(target: Endpoint, timeoutMs: number, waiter: DialWaiter): DialAttempt {
    const started = Date.now();
    const ac = new AbortController();
    this.request<net.Socket>(
      (id) => ({ type: 'dial-tcp', id, ip: target.ip, port: target.port, timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)) }),
      timeoutMs,
      () => dialTimeoutError(target, timeoutMs),
      async (msg, handle) => {
        if (msg.type === 'error') throw msg.timeout ? dialTimeoutError(target, timeoutMs) : dialError(target, Object.assign(new Error(msg.message), { code: msg.errno }));
        if (msg.type !== 'tcp' || !(handle instanceof net.Socket)) {
          if (handle instanceof dgram.Socket) handle.close();
          throw dialError(target, Object.assign(new Error(`netns helper answered ${msg.type} without a TCP socket`), { code: 'EPROTO' }));
        }
        // Node builds the received socket itself, with allowHalfOpen false: set it before any
        // I/O callback can run, or Node would end our write side when the container half-closes.
        // (TCP_NODELAY was set by the helper, on the same socket.)
        handle.allowHalfOpen = true;
        handle.pause();
        return handle;
      },
      ac.signal,
    ).then(
      (socket) => {
        if (ac.signal.aborted) socket.destroy();
        else waiter.dialled(null, adoptConnected(socket));
      },
      (err: unknown) => {
        if (!ac.signal.aborted) waiter.dialled(err instanceof Error ? err : new Error(String(err)), null);
      },
    );
    return { cancel: () => ac.abort() };
  }

  openUdp(target: Endpoint): Promise<UdpChannel> {
    if (nsSocketsOn()) return this.openUdpNative(target);
    return this.openUdpNode(target);
  }

  private openUdpNative(target: Endpoint): Promise<UdpChannel> {
    const family = net.isIPv6(target.ip) ? 6 : 4;
    return new Promise<UdpChannel>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        reject(dialTimeoutError(target, UDP_OPEN_TIMEOUT_MS));
      }, UDP_OPEN_TIMEOUT_MS);
      this.takeNative(family, 'udp', (err, h) => {
        if (settled) {
          if (h !== null) closeHandle(h);
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (err !== null || h === null) {
          if (!nsSocketsOn() && !this.closed) return resolve(this.openUdpNode(target));
          return reject(err ?? this.closedError());
        }
        dgramFromUdpHandle(h as NsUdpHandle, family).then(
          (socket) => connectReceivedDgram(socket, target, family).then(resolve, reject),
          (e: unknown) => {
            closeHandle(h);
            reject(dialError(target, e));
          },
        );
      });
    });
  }

  private openUdpNode(target: Endpoint): Promise<UdpChannel> {
    const family = net.isIPv6(target.ip) ? 6 : 4;
    return this.request<UdpChannel>(
      (id) => ({ type: 'open-udp', id, family }),
      UDP_OPEN_TIMEOUT_MS,
      () => dialTimeoutError(target, UDP_OPEN_TIMEOUT_MS),
      (msg, handle) => {
        if (msg.type === 'error') return Promise.reject(dialError(target, Object.assign(new Error(msg.message), { code: msg.errno })));
        if (msg.type !== 'udp' || !(handle instanceof dgram.Socket)) {
          if (handle instanceof net.Socket) handle.destroy();
          return Promise.reject(dialError(target, Object.assign(new Error(`netns helper answered ${msg.type} without a UDP socket`), { code: 'EPROTO' })));
        }
        return connectReceivedDgram(handle, target, family);
      },
    );
  }

  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closed = true;
    const native = this.nsd?.release(this.opts.netnsPath) ?? Promise.resolve();
    const h = this.helper;
    this.helper = null;
    this.closing = Promise.all([native, h === null ? Promise.resolve() : h.stop()]).then(() => {});
    return this.closing;
  }
}

/**
 * A UDP socket made in the namespace (bound there, not connected), connected here: the route
 * lookup still happens in the socket's own (the container's) namespace, and Node then knows the
 * socket is connected.
 */
function connectReceivedDgram(handle: dgram.Socket, target: Endpoint, family: 4 | 6): Promise<UdpChannel> {
  return new Promise<UdpChannel>((resolve, reject) => {
    const onError = (err: Error): void => {
      handle.close();
      reject(dialError(target, err));
    };
    handle.once('error', onError);
    if (family === 6 && !fixReceivedUdp6Connect(handle)) {
      handle.off('error', onError);
      resolve(wrapDgram(handle, target));
      return;
    }
    // A failed connect calls back with the error (and emits nothing).
    handle.connect(target.port, target.ip, (err?: Error) => {
      handle.off('error', onError);
      if (err !== undefined && err !== null) onError(err);
      else resolve(wrapDgram(handle));
    });
  });
}

async function validateUserns(p: string): Promise<void> {
  try {
    await fs.stat(p);
  } catch (err) {
    throw new PortferryError('PF_NETNS_INVALID', `user namespace ${JSON.stringify(p)} does not exist`, {
      cause: err,
      hint: 'Give the user namespace that owns the network namespace: /proc/<pid>/ns/user of a process inside the container.',
      details: { userns: p },
    });
  }
}
