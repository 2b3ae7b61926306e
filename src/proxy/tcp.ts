// A TCP listener for one binding: accept (paused) → connection limit → dial the container (direct
// or through a namespace helper, bounded by connectTimeout) → PROXY header if configured → relay.
//
// Ownership: the listener owns its server, the connections being dialled and the live relays;
// close() stops accepting and lets relays finish for a grace period, destroy() aborts them all.
import net from 'node:net';
import type { Binding, Endpoint, Listener, TcpStats } from '../api.js';
import { formatEndpoint } from '../addr.js';
import { errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { bindError, closedBeforeListening } from './bind-error.js';
import type { Dialer } from './dialer.js';
import { buildConnectionHeader } from './header-hook.js';
import { newUniqueId } from './proxy-header.js';
import { Relay } from './relay.js';

export interface TcpListenerDeps {
  readonly dialer: Dialer;
  /** A child logger for this mapping; per-connection lines are debug only. */
  readonly logger: Logger;
}

const LISTEN_BACKLOG = 4096;
const WARN_INTERVAL_MS = 10_000;
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
  private readonly relays = new Set<Relay>();
  private readonly dialling = new Map<net.Socket, AbortController>();
  private closed: Promise<void> | null = null;
  private nextId = 1;
  private counts = { accepted: 0, refused: 0, dialFailures: 0, acceptErrors: 0, bytesToContainer: 0, bytesToClient: 0 };
  private lastWarn = new Map<string, number>();
  /** Set by close(): re-checks whether the drain is complete; called whenever a connection ends. */
  private drainCheck: () => void = noop;

  constructor(
    readonly binding: Binding,
    private readonly deps: TcpListenerDeps,
  ) {}

  listen(): Promise<void> {
    if (this.state === 'closing' || this.state === 'destroyed') return Promise.reject(closedBeforeListening(this.binding));
    this.listening ??= this.bind();
    return this.listening;
  }

  /** What server.listen() is given: the binding's address and port. */
  private listenOptions(): net.ListenOptions {
    const { host } = this.binding;
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
        // After listening, errors come from accept (EMFILE, ENFILE …). libuv keeps the listener
        // armed and sheds the pending connection with its reserve descriptor; we count and warn.
        server.on('error', (err) => this.onAcceptError(err));
        if (this.state !== 'binding') return; // closed while binding: close() has rejected and closes the server
        this.failListen = null;
        this.state = 'listening';
        server.on('connection', (socket) => this.onConnection(socket));
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
    for (const r of this.relays) {
      up += r.bytesToContainer;
      down += r.bytesToClient;
    }
    return {
      protocol: 'tcp',
      active: this.relays.size + this.dialling.size,
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
        if (serverClosed && this.relays.size === 0 && this.dialling.size === 0) {
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
    for (const [socket, ac] of this.dialling) {
      ac.abort();
      socket.destroy();
    }
    this.dialling.clear();
    for (const r of [...this.relays]) r.destroy('destroyed');
  }

  private onAcceptError(err: Error): void {
    this.counts.acceptErrors++;
    this.warnLimited('accept', { err: errnoCode(err) ?? err.message, acceptErrors: this.counts.acceptErrors }, 'accept failed; the listener keeps serving (raise `ulimit -n` if this is EMFILE)');
  }

  private warnLimited(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    if (now - (this.lastWarn.get(key) ?? 0) < WARN_INTERVAL_MS) return;
    this.lastWarn.set(key, now);
    this.deps.logger.warn(fields, msg);
  }

  private onConnection(client: net.Socket): void {
    this.counts.accepted++;
    client.on('error', noop); // until the relay owns it; a reset while dialling just aborts the dial
    const { mapping } = this.binding;
    if (this.state !== 'listening') {
      client.destroy();
      return;
    }
    if (mapping.maxConnections > 0 && this.relays.size + this.dialling.size >= mapping.maxConnections) {
      this.counts.refused++;
      this.warnLimited('limit', { maxConnections: mapping.maxConnections, refused: this.counts.refused }, 'connection limit reached; new connections are refused');
      client.resetAndDestroy();
      return;
    }
    const id = this.nextId++;
    const ac = new AbortController();
    this.dialling.set(client, ac);
    const onClientGone = (): void => ac.abort();
    client.once('close', onClientGone);

    this.deps.dialer.dialTcp(this.binding.container, { timeoutMs: mapping.connectTimeoutMs, signal: ac.signal }).then(
      (container) => {
        this.dialling.delete(client);
        client.off('close', onClientGone);
        if (client.destroyed || this.state !== 'listening') {
          container.destroy();
          client.destroy();
          this.drainCheck();
          return;
        }
        const uniqueId = mapping.proxyTlvs.uniqueId ? newUniqueId() : null;
        let header: Buffer | null;
        try {
          header = buildConnectionHeader(this.binding, client, uniqueId);
        } catch (err) {
          this.warnLimited('header', { err: errnoCode(err) ?? (err as Error).message }, 'cannot build the PROXY header; the connection is closed');
          container.destroy();
          client.resetAndDestroy();
          this.drainCheck();
          return;
        }
        if (header !== null) container.write(header); // one write, before any client byte (the client is still paused)
        this.startRelay(id, client, container, uniqueId);
      },
      (err: unknown) => {
        this.dialling.delete(client);
        client.off('close', onClientGone);
        if (!ac.signal.aborted) {
          this.counts.dialFailures++;
          const code = errnoCode(err) ?? 'unknown';
          if (this.deps.logger.isLevelEnabled('debug')) {
            this.deps.logger.debug({ conn: id, client: `${client.remoteAddress}:${client.remotePort}`, err: code, cause: errnoCode((err as Error).cause) }, 'dial to container failed');
          }
          this.warnLimited('dial', { err: code, dialFailures: this.counts.dialFailures, target: formatEndpoint(this.binding.container) }, 'connecting to the container failed; clients are disconnected, the listener keeps serving');
        }
        // The client learns of the failure as a reset, not as an empty successful exchange.
        if (!client.destroyed) client.resetAndDestroy();
        this.drainCheck();
      },
    );
  }

  private startRelay(id: number, client: net.Socket, container: net.Socket, uniqueId: Buffer | null): void {
    const { mapping } = this.binding;
    const relay = new Relay(client, container, { idleTimeoutMs: mapping.idleTimeoutMs, halfCloseTimeoutMs: mapping.halfCloseTimeoutMs });
    this.relays.add(relay);
    const clientAddr = this.deps.logger.isLevelEnabled('debug') ? `${client.remoteAddress}:${client.remotePort}` : '';
    void relay.done.then((r) => {
      this.relays.delete(relay);
      this.counts.bytesToContainer += r.bytesToContainer;
      this.counts.bytesToClient += r.bytesToClient;
      if (clientAddr !== '') {
        this.deps.logger.debug({ conn: id, ...(uniqueId !== null ? { uniqueId: uniqueId.toString('hex') } : {}), client: clientAddr, up: r.bytesToContainer, down: r.bytesToClient, ms: r.durationMs, bulk: r.bulkDirections, reason: r.reason, ...(r.errorCode !== undefined ? { err: r.errorCode } : {}) }, 'connection closed');
      }
      this.drainCheck();
    });
    relay.start();
  }
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
