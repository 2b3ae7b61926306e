// A TCP listener for one binding: accept → connection limit → dial the container (direct
// or through a namespace helper, bounded by connectTimeout) → PROXY header if configured → relay.
//
// One connection path (docs/architecture.md, "TCP data path"): every accepted connection is a
// TcpPort (src/internals.ts: a raw handle, or a net.Socket when the raw path is off) given to a
// Connection (src/proxy/connection.ts), which dials through whichever Dialer this listener has and
// relays. The listener never asks which dialer or which kind of port it has.
//
// Ownership: the listener owns its server and its connections (dialling ones included); close()
// stops accepting and lets them finish — dials under way too — for a grace period, destroy()
// aborts them all.
import net from 'node:net';
import util from 'node:util';
import type { Binding, Endpoint, Listener, RelayResult, TcpStats } from '../api.js';
import { errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { acceptRaw, adoptConnected, type TcpPort } from '../internals.js';
import { descriptors } from '../limits.js';
import { RateLimitedWarner } from './warn.js';
import { bindError, closedBeforeListening } from './bind-error.js';
import { dialErrno, type Dialer } from './dialer.js';
import { buildConnectionHeader, type ConnectionAddresses } from './header-hook.js';
import { newUniqueId } from './proxy-header.js';
import { Connection, type ConnectionHost } from './connection.js';

export interface TcpListenerDeps {
  readonly dialer: Dialer;
  /** A child logger for this mapping; per-connection lines are debug only. */
  readonly logger: Logger;
  /** Adopt this already listening (or bound) socket instead of binding the host address (docker's -use-listen-fd). */
  readonly fd?: number;
}

const LISTEN_BACKLOG = 4096;
const noop = (): void => {};

/**
 * new → binding → listening → closing → destroyed. close()/destroy() while binding reject the
 * pending listen() with PF_BIND_FAILED and close the server as soon as its bind completes (the
 * port is never left bound); listen() once closing or destroyed rejects the same way.
 */
type State = 'new' | 'binding' | 'listening' | 'closing' | 'destroyed';

export class TcpListener implements Listener {
  private state: State = 'new';
  private server: net.Server | null = null;
  private listening: Promise<void> | null = null;
  /** Rejects the pending listen() (set while binding). */
  private failListen: ((err: Error) => void) | null = null;
  /** Live connections from accept on (dialling included); with debug logging on, what their 'connection closed' line needs. */
  private readonly conns = new Map<Connection, ConnectionInfo | null>();
  private closed: Promise<void> | null = null;
  private nextId = 1;
  private counts = { accepted: 0, refused: 0, dialFailures: 0, acceptErrors: 0, bytesToContainer: 0, bytesToClient: 0 };
  /** Set by close(): re-checks whether the drain is complete; called whenever a connection ends. */
  private drainCheck: () => void = noop;

  private readonly warner: RateLimitedWarner;
  /** What connections ask of this listener (one object per listener). */
  private readonly host: ConnectionHost;

  constructor(
    readonly binding: Binding,
    private readonly deps: TcpListenerDeps,
  ) {
    this.warner = new RateLimitedWarner(deps.logger);
    const m = binding.mapping;
    this.host = {
      connectTimeoutMs: m.connectTimeoutMs,
      idleTimeoutMs: m.idleTimeoutMs,
      halfCloseTimeoutMs: m.halfCloseTimeoutMs,
      dialer: deps.dialer,
      target: binding.container,
      header: (conn) => this.header(conn),
      headerFailed: (_conn, err) => this.headerFailed(err),
      dialFailed: (conn, err) => this.dialFailed(conn.client, conn.id, dialErrno(err), errnoCode(err) ?? 'PF_DIAL_FAILED'),
      ended: (conn, result) => this.connectionEnded(conn, result),
    };
  }

  listen(): Promise<void> {
    if (this.state === 'closing' || this.state === 'destroyed') return Promise.reject(closedBeforeListening(this.binding));
    this.listening ??= this.bind();
    return this.listening;
  }

  /** What server.listen() is given: the binding's address and port. */
  private listenOptions(): net.ListenOptions & { fd?: number } {
    const { host } = this.binding;
    if (this.deps.fd !== undefined) return { fd: this.deps.fd, backlog: LISTEN_BACKLOG };
    return { host: host.ip, port: host.port, ipv6Only: host.ip.includes(':'), backlog: LISTEN_BACKLOG };
  }

  private bind(): Promise<void> {
    this.state = 'binding';
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    this.server = server;
    return new Promise((resolve, reject) => {
      this.failListen = reject;
      const onListenError = (err: Error): void => {
        this.failListen = null;
        if (this.state === 'binding') this.state = 'destroyed';
        this.server = null;
        reject(bindError(err, this.binding));
      };
      server.once('error', onListenError);
      server.listen(this.listenOptions(), () => {
        server.off('error', onListenError);
        // After listening, errors come from accept; we count and warn. Not EMFILE/ENFILE while
        // libuv has its reserve descriptor: it sheds those connections silently (checkDescriptors).
        server.on('error', (err) => this.onAcceptError(errnoCode(err) ?? err.message));
        if (this.state !== 'binding') return; // closed while binding: close() has rejected and closes the server
        this.failListen = null;
        this.state = 'listening';
        // Accepted connections arrive as ports (src/internals.ts): bare handles on the raw path,
        // net.Sockets behind the same methods otherwise.
        const raw = acceptRaw(server, (port) => this.onConnection(port), (errno) => this.onAcceptError(util.getSystemErrorName(errno)));
        if (!raw) server.on('connection', (socket) => this.onConnection(adoptConnected(socket)));
        resolve();
      });
    });
  }

  address(): Endpoint | null {
    if (this.state !== 'listening' && this.state !== 'closing') return null;
    const a = this.server?.address();
    if (a === null || a === undefined || typeof a === 'string') return null;
    return { ip: a.address, port: a.port };
  }

  stats(): TcpStats {
    let up = this.counts.bytesToContainer;
    let down = this.counts.bytesToClient;
    for (const r of this.conns.keys()) {
      up += r.bytesToContainer;
      down += r.bytesToClient;
    }
    return {
      protocol: 'tcp',
      active: this.conns.size,
      accepted: this.counts.accepted,
      refused: this.counts.refused,
      dialFailures: this.counts.dialFailures,
      acceptErrors: this.counts.acceptErrors,
      bytesToContainer: up,
      bytesToClient: down,
    };
  }

  close(graceMs: number): Promise<void> {
    if (this.closed !== null) return this.closed;
    const server = this.server;
    if (this.state === 'binding') {
      this.failListen?.(closedBeforeListening(this.binding));
      this.failListen = null;
    }
    if (this.state !== 'destroyed') this.state = 'closing';
    this.closed = new Promise<void>((resolve) => {
      let serverClosed = server === null;
      const check = (): void => {
        if (serverClosed && this.conns.size === 0) {
          clearTimeout(timer);
          this.state = 'destroyed';
          this.drainCheck = noop;
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.destroyConnections();
        check();
      }, graceMs);
      this.drainCheck = check;
      if (server !== null) closeServer(server, () => {
        serverClosed = true;
        check();
      });
      check();
    });
    return this.closed;
  }

  destroy(): void {
    void this.close(0);
    this.destroyConnections();
  }

  private destroyConnections(): void {
    for (const c of [...this.conns.keys()]) c.destroy('destroyed');
  }

  private onAcceptError(code: string): void {
    this.counts.acceptErrors++;
    this.warner.warn('accept', { err: code, acceptErrors: this.counts.acceptErrors }, 'accept failed; the listener keeps serving (raise `ulimit -n` if this is EMFILE)');
  }

  /** An accepted connection: it dials, relays and reports its end itself. */
  /**
   * An accepted connection holds descriptor `fd`. When few are left, warn (at most every 10 s):
   * once none are, libuv sheds new connections with its reserve descriptor without telling us
   * (no callback, no 'error'), so this is the only notice of an accept-side shortage. Linux hands
   * out the lowest free number, so a high one means few are left: no system call needed.
   */
  private checkDescriptors(fd: number): void {
    if (descriptors.nearLimit(fd)) {
      this.warner.warn('descriptors', { fd, nofile: descriptors.softLimit() }, 'descriptor limit nearly reached: new connections are shed without notice once none are left — raise `ulimit -n`');
    }
  }

  private onConnection(client: TcpPort): void {
    this.checkDescriptors(client.fd);
    const admit = this.admit();
    if (admit !== 'serve') {
      if (admit === 'close') client.close();
      else client.reset();
      return;
    }
    const conn = new Connection(client, this.host, this.nextId++);
    const debug = this.deps.logger.isLevelEnabled('debug');
    this.conns.set(conn, debug ? { id: conn.id, uniqueId: null, client: `${client.remoteAddress}:${client.remotePort}` } : null);
    conn.dial();
  }

  private header(conn: Connection): Buffer | null {
    const uniqueId = this.binding.mapping.proxyTlvs.uniqueId ? newUniqueId() : null;
    const info = this.conns.get(conn);
    if (info !== null && info !== undefined && uniqueId !== null) this.conns.set(conn, { ...info, uniqueId });
    return buildConnectionHeader(this.binding, conn.client, uniqueId);
  }

  private headerFailed(e: unknown): void {
    this.warner.warn('header', { err: errnoCode(e) ?? (e as Error).message }, 'cannot build the PROXY header; the connection is closed');
  }

  /** Counts an accepted connection and says what to do with it: serve it, close it (the listener is closing) or reset it (over maxConnections; counted and warned). */
  private admit(): 'serve' | 'close' | 'reset' {
    this.counts.accepted++;
    if (this.state !== 'listening') return 'close';
    const max = this.binding.mapping.maxConnections;
    if (max > 0 && this.conns.size >= max) {
      this.counts.refused++;
      this.warner.warn('limit', { maxConnections: max, refused: this.counts.refused }, 'connection limit reached; new connections are refused');
      return 'reset';
    }
    return 'serve';
  }

  /** Counts and reports a failed dial (the caller resets the client). */
  private dialFailed(client: ConnectionAddresses, id: number, errno: string, code = errno === 'ETIMEDOUT' ? 'PF_DIAL_TIMEOUT' : 'PF_DIAL_FAILED'): void {
    this.counts.dialFailures++;
    const logger = this.deps.logger;
    if (logger.isLevelEnabled('debug')) {
      logger.debug({ conn: id, client: `${client.remoteAddress}:${client.remotePort}`, err: code, errno }, 'dial to container failed');
    }
    if (errno === 'EMFILE' || errno === 'ENFILE') {
      this.warner.warn('dial-local', { err: code, errno, dialFailures: this.counts.dialFailures }, `no descriptor left here to dial the container (${errno}: a local shortage, not the container); clients are disconnected — raise \`ulimit -n\``);
    } else {
      this.warner.warn('dial', { err: code, errno, dialFailures: this.counts.dialFailures }, `connecting to the container failed (${errno}); clients are disconnected, the listener keeps serving`);
    }
  }

  /** A connection ended: `r` is null for one that never relayed (dial failed, client left). */
  private connectionEnded(conn: Connection, r: RelayResult | null): void {
    const info = this.conns.get(conn);
    this.conns.delete(conn);
    if (r === null) {
      this.drainCheck();
      return;
    }
    this.counts.bytesToContainer += r.bytesToContainer;
    this.counts.bytesToClient += r.bytesToClient;
    if (info !== null && info !== undefined) {
      this.deps.logger.debug({ conn: info.id, ...(info.uniqueId !== null ? { uniqueId: info.uniqueId.toString('hex') } : {}), client: info.client, up: r.bytesToContainer, down: r.bytesToClient, ms: r.durationMs, bulk: r.bulkDirections, reason: r.reason, ...(r.errorCode !== undefined ? { err: r.errorCode } : {}) }, 'connection closed');
    }
    this.drainCheck();
  }
}

interface ConnectionInfo {
  readonly id: number;
  readonly uniqueId: Buffer | null;
  readonly client: string;
}


/**
 * Closes a server whatever its bind's progress: a bind still under way (address lookup, listen)
 * completes and is closed then; a bind that failed has nothing to close.
 */
function closeServer(server: net.Server, done: () => void): void {
  if (server.listening) {
    server.close(() => done());
    return;
  }
  const onListening = (): void => {
    server.off('error', onError);
    server.close(() => done());
  };
  const onError = (): void => {
    server.off('listening', onListening);
    done();
  };
  server.once('listening', onListening);
  server.once('error', onError);
}
