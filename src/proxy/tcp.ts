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
import { bindError } from './bind-error.js';
import type { Dialer } from './dialer.js';
import { buildConnectionHeader } from './header-hook.js';
import { newUniqueId } from './proxy-header.js';
import { Relay } from './relay.js';

export interface TcpListenerDeps {
  readonly dialer: Dialer;
  /** A child logger for this mapping; per-connection lines are debug only. */
  readonly logger: Logger;
  /** Adopt this already listening (or bound) socket instead of binding the host address (docker's -use-listen-fd). */
  readonly fd?: number;
}

const LISTEN_BACKLOG = 4096;
const WARN_INTERVAL_MS = 10_000;
const noop = (): void => {};

export class TcpListener implements Listener {
  private server: net.Server | null = null;
  private readonly relays = new Set<Relay>();
  private readonly dialling = new Map<net.Socket, AbortController>();
  private closing = false;
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
    if (this.server !== null) return Promise.resolve();
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    this.server = server;
    const { host } = this.binding;
    return new Promise((resolve, reject) => {
      const onListenError = (err: Error): void => {
        this.server = null;
        server.close();
        reject(bindError(err, this.binding));
      };
      server.once('error', onListenError);
      const where = this.deps.fd !== undefined ? { fd: this.deps.fd } : { host: host.ip, port: host.port, ipv6Only: host.ip.includes(':') };
      server.listen({ ...where, backlog: LISTEN_BACKLOG }, () => {
        server.off('error', onListenError);
        // After listening, errors come from accept (EMFILE, ENFILE …). libuv keeps the listener
        // armed and sheds the pending connection with its reserve descriptor; we count and warn.
        server.on('error', (err) => this.onAcceptError(err));
        server.on('connection', (socket) => this.onConnection(socket));
        resolve();
      });
    });
  }

  address(): Endpoint | null {
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
    this.closing = true;
    this.closed = new Promise<void>((resolve) => {
      const server = this.server;
      let serverClosed = server === null;
      const check = (): void => {
        if (serverClosed && this.relays.size === 0 && this.dialling.size === 0) {
          clearTimeout(timer);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.destroyConnections();
        check();
      }, graceMs);
      this.drainCheck = check;
      if (server !== null) server.close(() => {
        serverClosed = true;
        check();
      });
      check();
    });
    return this.closed;
  }

  destroy(): void {
    this.closing = true;
    if (this.closed === null) void this.close(0);
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
    if (this.closing) {
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
        if (client.destroyed || this.closing) {
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
