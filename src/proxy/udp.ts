// The UDP listener for one binding (one host address and port).
//
// Datagrams from a client are forwarded through that client's *flow*: a UdpChannel to the
// container (for the direct dialer, a dgram socket connected to the container, so the kernel only
// delivers the container's replies to it). Replies go back to the client from the host socket the
// client's last datagram arrived on. Flows live in a table keyed by the client's `ip:port`,
// ordered by last activity in EITHER direction: one sweeping timer per listener expires idle flows,
// and when the table is full the least recently used flow is evicted.
//
// Datagrams are passed through as the Buffers Node hands us: no copy, no concatenation, so
// boundaries are exact up to the protocol maximum (65507 bytes over IPv4, 65527 over IPv6).
//
// Reply source address. A socket bound to 0.0.0.0 (or ::) answers from whatever source address
// the kernel picks for the client's route, which is not always the address the client sent to (a
// client that targeted the host's second address gets a reply from its first one, and drops it).
// Node 20's dgram has no IP_PKTINFO, so instead, for an unspecified host IP, this listener binds:
//   - one socket per local address of the binding's family (os.networkInterfaces(); IPv6
//     link-local addresses excluded, they need a scope), each with SO_REUSEADDR, and
//   - the wildcard address as a fallback, also with SO_REUSEADDR.
// Linux delivers a datagram to the most specific bound socket (an exact local address scores above
// the wildcard), so each per-address socket receives exactly the datagrams sent to its address and
// its replies leave from that address. The wildcard socket only sees traffic for addresses that
// appeared after the last scan (or addresses that are local without being configured, e.g. 127.0.0.2
// on lo): those are served, with the kernel's choice of source, until the periodic re-scan
// (`addressRescanMs`, default 10 s) binds a socket for them; sockets of addresses that went away
// are closed and their flows move to the wildcard socket.
// SO_REUSEADDR would let a second socket share the port silently, so before binding anything the
// listener binds the wildcard WITHOUT it, as a probe: that fails with EADDRINUSE if any socket
// holds the port on any address, then it is closed and the real sockets are bound.
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import type { Binding, Endpoint, Family, Listener, UdpStats } from '../api.js';
import { PortferryError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { bindError } from './bind-error.js';
import { formatEndpoint, isUnspecified } from '../addr.js';
import type { Dialer, UdpChannel } from './dialer.js';
import { FlowTable, type FlowLink } from './flow-table.js';
import { buildProxyHeader, newUniqueId } from './proxy-header.js';

export interface UdpListenerDeps {
  readonly dialer: Dialer;
  /** A child logger for this mapping, made by the caller. */
  readonly logger: Logger;
  /**
   * Unspecified host IP only: how often (ms) to look for local addresses added or removed since
   * the last scan. Default 10 s; 0 turns re-scanning off (the wildcard socket still serves them).
   */
  readonly addressRescanMs?: number;
  /** Adopt this already bound socket as the only host socket instead of binding (docker's -use-listen-fd). */
  readonly fd?: number;
}

/** The largest UDP payload: 65535 - 20 (IPv4 header) - 8 (UDP header); IPv6: 65535 - 8. */
export const MAX_DATAGRAM: Readonly<Record<Family, number>> = { 4: 65507, 6: 65527 };

// Host sockets take datagrams from every client of the binding: give them room for bursts. These
// are limits, not allocations (the kernel caps them at net.core.rmem_max / wmem_max).
const HOST_RECV_BUFFER = 4 * 1024 * 1024;
const HOST_SEND_BUFFER = 1024 * 1024;
// Datagrams that arrive while a flow's channel is being opened wait, in order, up to these bounds.
const PENDING_MAX_DATAGRAMS = 64;
const PENDING_MAX_BYTES = 256 * 1024;
/** Warnings that could repeat per datagram (table full, flow setup failing) come at most this often. */
const WARN_INTERVAL_MS = 60_000;
const DEFAULT_RESCAN_MS = 10_000;
// The sweep runs every idleTimeout/4 (clamped), so a flow goes between 1 and 1.25 timeouts after its
// last datagram (at most 5 s late for long timeouts).
const SWEEP_MIN_MS = 50;
const SWEEP_MAX_MS = 5_000;
// While closing, a flow with nothing either way for this long (or its idle timeout, if shorter) is
// done: UDP has no end-of-stream, so "finished" means "quiet"; an answer still on its way gets this
// long to arrive. The sweep then runs every CLOSING_SWEEP_MS.
const CLOSING_QUIET_MS = 1_000;
const CLOSING_SWEEP_MS = 100;

/** Error codes on a flow's channel that mean "the container is not there (now)". */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

/** One host socket: bound to one local address (or the wildcard) and the binding's port. */
interface HostSocket {
  readonly socket: dgram.Socket;
  readonly local: Endpoint;
  readonly wildcard: boolean;
  closed: boolean;
}

type FlowEnd = 'expired' | 'evicted' | 'setup-failed' | 'address-gone' | 'destroyed';

class Flow implements FlowLink<Flow> {
  lastActive = 0;
  older: Flow | null = null;
  newer: Flow | null = null;
  /** Null while the channel is being opened. */
  channel: UdpChannel | null = null;
  /** Datagrams waiting for the channel; null once it is open. */
  pending: Buffer[] | null = [];
  pendingBytes = 0;
  closed = false;
  datagramsToContainer = 0;
  datagramsToClient = 0;
  bytesToContainer = 0;
  bytesToClient = 0;
  readonly createdAt: number;

  constructor(
    readonly key: string,
    readonly ip: string,
    readonly port: number,
    /** The host socket the client's last datagram came in on: replies leave from it. */
    public host: HostSocket,
    /** The PROXY v2 header sent before every datagram of this flow, or null. */
    public header: Buffer | null,
    now: number,
  ) {
    this.createdAt = now;
  }
}

type State = 'new' | 'listening' | 'closing' | 'destroyed';

export class UdpListener implements Listener {
  readonly binding: Binding;
  private readonly family: Family;
  private readonly dialer: Dialer;
  private readonly logger: Logger;
  private readonly idleMs: number;
  private readonly maxFlows: number;
  private readonly sweepMs: number;
  private readonly rescanMs: number;
  private readonly fd: number | undefined;
  private readonly flows = new FlowTable<Flow>();
  /** By local address ('' for the wildcard socket). */
  private readonly hostSockets = new Map<string, HostSocket>();
  private wildcard: HostSocket | null = null;
  private bound: Endpoint | null = null;
  private state: State = 'new';
  private listening: Promise<void> | null = null;
  private closing: Promise<void> | null = null;
  private resolveClose: (() => void) | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private rescanTimer: NodeJS.Timeout | null = null;
  private graceTimer: NodeJS.Timeout | null = null;
  private rescanning = false;
  private readonly lastWarn = new Map<string, number>();
  private evictionsSinceWarn = 0;

  private flowsCreated = 0;
  private flowsExpired = 0;
  private flowsEvicted = 0;
  private datagramsToContainer = 0;
  private datagramsToClient = 0;
  private bytesToContainer = 0;
  private bytesToClient = 0;
  private readonly drops: Record<string, number> = {};

  private readonly afterClientSend = (err: Error | null): void => {
    if (err !== null) this.drop('send-error');
  };

  /** Host addresses are literal IPs: skip dgram's dns.lookup (and the tick it costs) on every send. */
  private readonly lookup = (address: string, _options: unknown, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void => {
    callback(null, address, this.family);
  };

  constructor(binding: Binding, deps: UdpListenerDeps) {
    this.binding = binding;
    this.family = net.isIPv6(binding.host.ip) ? 6 : 4;
    this.dialer = deps.dialer;
    this.logger = deps.logger;
    this.idleMs = binding.mapping.udpIdleTimeoutMs;
    this.maxFlows = binding.mapping.udpMaxFlows;
    this.sweepMs = Math.min(SWEEP_MAX_MS, Math.max(SWEEP_MIN_MS, Math.floor(this.idleMs / 4)));
    this.rescanMs = deps.addressRescanMs ?? DEFAULT_RESCAN_MS;
    this.fd = deps.fd;
  }

  listen(): Promise<void> {
    this.listening ??= this.bindAll();
    return this.listening;
  }

  address(): Endpoint | null {
    return this.bound;
  }

  /** Every address a host socket is bound to (the wildcard first, when there is one). */
  boundAddresses(): Endpoint[] {
    return [...this.hostSockets.values()].filter((hs) => !hs.closed).map((hs) => hs.local);
  }

  stats(): UdpStats {
    return {
      protocol: 'udp',
      flows: this.flows.size,
      flowsCreated: this.flowsCreated,
      flowsExpired: this.flowsExpired,
      flowsEvicted: this.flowsEvicted,
      datagramsToContainer: this.datagramsToContainer,
      datagramsToClient: this.datagramsToClient,
      bytesToContainer: this.bytesToContainer,
      bytesToClient: this.bytesToClient,
      drops: { ...this.drops },
    };
  }

  /**
   * Stops taking new clients (their datagrams are dropped as `closing`); existing flows keep
   * forwarding until each has been quiet for CLOSING_QUIET_MS (or its idle timeout, if shorter),
   * or until graceMs passes; then everything is destroyed.
   */
  close(graceMs: number): Promise<void> {
    if (this.closing !== null) return this.closing;
    if (this.state === 'destroyed') return (this.closing = Promise.resolve());
    this.closing = new Promise<void>((resolve) => {
      this.resolveClose = resolve;
    });
    this.state = 'closing';
    this.stopRescan();
    if (this.flows.size === 0 || graceMs <= 0) this.destroy();
    else {
      this.graceTimer = setTimeout(() => this.destroy(), graceMs);
      this.graceTimer.unref();
      this.startSweep(CLOSING_SWEEP_MS);
    }
    return this.closing;
  }

  destroy(): void {
    if (this.state === 'destroyed') return;
    this.state = 'destroyed';
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.sweepTimer = null;
    this.graceTimer = null;
    this.stopRescan();
    for (const flow of this.flows.snapshot()) this.endFlow(flow, 'destroyed');
    this.flows.clear();
    for (const hs of this.hostSockets.values()) closeHostSocket(hs);
    this.hostSockets.clear();
    this.wildcard = null;
    this.resolveClose?.();
    this.resolveClose = null;
  }

  // ---- binding ----

  private async bindAll(): Promise<void> {
    const { host } = this.binding;
    if (this.state !== 'new') throw this.notListening();
    if (this.fd !== undefined || !isUnspecified(host.ip)) {
      const hs = await this.bindHostSocket(host.ip, host.port, false);
      this.bound = { ip: host.ip, port: hs.local.port };
    } else {
      const port = await this.probePort(host.port);
      const wildcard = await this.bindHostSocket(host.ip, port, true);
      this.wildcard = wildcard;
      this.bound = { ip: host.ip, port };
      for (const ip of localAddresses(this.family)) {
        try {
          await this.bindHostSocket(ip, port, true);
        } catch (err) {
          // An address that is not usable yet (IPv6 still in duplicate address detection) is retried
          // by the next scan; anything else is a real failure of this binding.
          if (!(err instanceof PortferryError && err.code === 'PF_BIND_ADDRNOTAVAIL')) {
            this.destroy();
            throw err;
          }
          this.logger.debug({ address: ip, port }, 'local address not bindable yet; the wildcard socket serves it');
        }
      }
      this.startRescan();
    }
    // close()/destroy() while binding: destroy() has closed what was bound already.
    if (this.state !== 'new') throw this.notListening();
    this.state = 'listening';
    this.logger.debug({ addresses: this.boundAddresses().map(formatEndpoint), target: formatEndpoint(this.binding.container) }, 'udp listening');
  }

  /** Binds the wildcard without SO_REUSEADDR to prove nobody holds the port; returns the port. */
  private async probePort(port: number): Promise<number> {
    const probe = dgram.createSocket({ type: this.family === 6 ? 'udp6' : 'udp4', ipv6Only: this.family === 6, lookup: this.lookup });
    try {
      await new Promise<void>((resolve, reject) => {
        probe.once('error', (err) => reject(bindError(err, this.binding, { ip: this.binding.host.ip, port })));
        probe.bind({ port, address: this.binding.host.ip, exclusive: true }, () => resolve());
      });
      return probe.address().port;
    } finally {
      probe.on('error', () => {});
      try {
        probe.close();
      } catch {
        // never bound
      }
    }
  }

  private bindHostSocket(ip: string, port: number, reuseAddr: boolean): Promise<HostSocket> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket({
        type: this.family === 6 ? 'udp6' : 'udp4',
        reuseAddr,
        // `::` means IPv6 only: 0.0.0.0 is a binding of its own (a dual-stack socket would collide with it).
        ipv6Only: this.family === 6,
        recvBufferSize: HOST_RECV_BUFFER,
        sendBufferSize: HOST_SEND_BUFFER,
        lookup: this.lookup,
      });
      const onBindError = (err: Error): void => {
        socket.on('error', () => {});
        try {
          socket.close();
        } catch {
          // never bound
        }
        reject(bindError(err, this.binding, { ip, port }));
      };
      socket.once('error', onBindError);
      socket.bind(this.fd !== undefined ? { fd: this.fd } : { port, address: ip, exclusive: true }, () => {
        socket.off('error', onBindError);
        const hs: HostSocket = { socket, local: { ip, port: socket.address().port }, wildcard: isUnspecified(ip), closed: false };
        if (this.state === 'destroyed' || this.state === 'closing') {
          closeHostSocket(hs);
          reject(this.notListening());
          return;
        }
        socket.on('error', (e) => this.onHostSocketError(hs, e));
        socket.on('message', (msg, rinfo) => this.fromClient(hs, msg, rinfo));
        this.hostSockets.set(hs.wildcard ? '' : ip, hs);
        resolve(hs);
      });
    });
  }

  private notListening(): PortferryError {
    return new PortferryError('PF_BIND_FAILED', `udp ${formatEndpoint(this.binding.host)} for mapping "${this.binding.mapping.name}" was closed before it was listening`, {
      details: { mapping: this.binding.mapping.name, address: formatEndpoint(this.binding.host) },
      hint: 'Nothing to fix: the mapping was removed or the forwarder shut down while it was starting.',
    });
  }

  private startRescan(): void {
    if (this.rescanMs <= 0) return;
    this.rescanTimer = setInterval(() => void this.rescan(), this.rescanMs);
    this.rescanTimer.unref();
  }

  private stopRescan(): void {
    if (this.rescanTimer !== null) clearInterval(this.rescanTimer);
    this.rescanTimer = null;
  }

  /** Binds sockets for local addresses that appeared, closes those of addresses that went away. */
  private async rescan(): Promise<void> {
    if (this.rescanning || this.state !== 'listening' || this.bound === null) return;
    this.rescanning = true;
    try {
      const now = new Set(localAddresses(this.family));
      for (const [ip, hs] of this.hostSockets) {
        if (hs.wildcard || now.has(ip)) continue;
        this.hostSockets.delete(ip);
        closeHostSocket(hs);
        for (const flow of this.flows.snapshot()) if (flow.host === hs) this.moveFlow(flow, this.wildcard);
        this.logger.info({ address: ip, port: hs.local.port }, 'local address went away; its udp socket is closed');
      }
      for (const ip of now) {
        if (this.hostSockets.has(ip)) continue;
        try {
          await this.bindHostSocket(ip, this.bound.port, true);
          this.logger.info({ address: ip, port: this.bound.port }, 'new local address; udp socket bound');
        } catch (err) {
          if (this.state !== 'listening') return;
          this.warnEvery(`rescan:${ip}`, { err, address: ip }, 'cannot bind a new local address; the wildcard socket serves it');
        }
      }
    } finally {
      this.rescanning = false;
    }
  }

  private onHostSocketError(hs: HostSocket, err: Error): void {
    this.warnEvery(`host:${errnoCode(err) ?? 'error'}`, { err, address: formatEndpoint(hs.local) }, 'udp host socket error');
  }

  // ---- the data path ----

  private fromClient(hs: HostSocket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const key = `${rinfo.address}:${rinfo.port}`;
    const now = Date.now();
    let flow: Flow | null = this.flows.get(key) ?? null;
    if (flow === null) {
      if (this.state === 'closing' || this.state === 'destroyed') {
        this.drop('closing');
        return;
      }
      flow = this.openFlow(key, rinfo, hs, now);
      if (flow === null) return;
    } else {
      this.flows.touch(flow, now);
      if (flow.host !== hs) this.moveFlow(flow, hs);
    }
    this.toContainer(flow, msg);
  }

  private toContainer(flow: Flow, msg: Buffer): void {
    const channel = flow.channel;
    if (channel === null) {
      const pending = flow.pending;
      if (pending === null) return; // closed
      if (pending.length >= PENDING_MAX_DATAGRAMS || flow.pendingBytes + msg.length > PENDING_MAX_BYTES) {
        this.drop('flow-queue-full');
        return;
      }
      pending.push(msg);
      flow.pendingBytes += msg.length;
      return;
    }
    flow.datagramsToContainer++;
    flow.bytesToContainer += msg.length;
    this.datagramsToContainer++;
    this.bytesToContainer += msg.length;
    // PROXY protocol v2: every datagram carries the flow's header (built once, in openFlow).
    if (flow.header === null) channel.send(msg);
    else channel.send([flow.header, msg]);
  }

  private toClient(flow: Flow, msg: Buffer): void {
    if (flow.closed) return;
    const hs = flow.host;
    if (hs.closed) {
      this.drop('send-error');
      return;
    }
    this.flows.touch(flow, Date.now());
    flow.datagramsToClient++;
    flow.bytesToClient += msg.length;
    this.datagramsToClient++;
    this.bytesToClient += msg.length;
    // One shared callback (no closure per datagram): without a callback dgram drops send errors
    // silently; with it they are counted. Measured cost: ~0.1-0.2 µs of CPU per datagram.
    hs.socket.send(msg, flow.port, flow.ip, this.afterClientSend);
  }

  private openFlow(key: string, rinfo: dgram.RemoteInfo, hs: HostSocket, now: number): Flow | null {
    let header: Buffer | null = null;
    if (this.binding.mapping.proxyProtocol !== null) {
      header = this.flowHeader(rinfo.address, rinfo.port, hs);
      if (header === null) {
        this.drop('proxy-header');
        return null;
      }
    }
    if (this.maxFlows > 0 && this.flows.size >= this.maxFlows) this.evictOldest(now);
    const flow = new Flow(key, rinfo.address, rinfo.port, hs, header, now);
    this.flows.insert(flow, now);
    this.flowsCreated++;
    this.startSweep();
    this.dialer.openUdp(this.binding.container).then(
      (channel) => this.onChannelOpen(flow, channel),
      (err: unknown) => this.onChannelFailed(flow, err),
    );
    return flow;
  }

  /**
   * PROXY protocol hook: the v2 DGRAM header for a flow, built once when the flow is created (and
   * again only if the client moves to another host address). Source = the client, destination = the
   * host address it sent to (for the wildcard fallback socket that address is not known: the
   * binding's unspecified address is written). Null, with a warning, when it cannot be built.
   */
  private flowHeader(ip: string, port: number, hs: HostSocket): Buffer | null {
    const m = this.binding.mapping;
    try {
      return buildProxyHeader({
        version: m.proxyProtocol ?? 'v2',
        transport: 'dgram',
        source: { ip, port },
        destination: hs.local,
        tlvs: {
          ...(m.proxyTlvs.uniqueId ? { uniqueId: newUniqueId() } : {}),
          crc32c: m.proxyTlvs.crc32c,
        },
      });
    } catch (err) {
      this.warnEvery('proxy-header', { err }, 'cannot build the PROXY header for a UDP flow; its datagrams are dropped');
      return null;
    }
  }

  private moveFlow(flow: Flow, hs: HostSocket | null): void {
    if (hs === null) {
      this.endFlow(flow, 'address-gone');
      return;
    }
    flow.host = hs;
    if (flow.header !== null) flow.header = this.flowHeader(flow.ip, flow.port, hs) ?? flow.header;
  }

  private onChannelOpen(flow: Flow, channel: UdpChannel): void {
    if (flow.closed) {
      channel.close();
      return;
    }
    flow.channel = channel;
    channel.onMessage((msg) => this.toClient(flow, msg));
    channel.onError((err) => this.onFlowError(flow, err));
    const pending = flow.pending;
    flow.pending = null;
    flow.pendingBytes = 0;
    if (pending !== null) for (const msg of pending) this.toContainer(flow, msg);
    if (this.logger.isLevelEnabled('debug')) {
      this.logger.debug({ client: formatEndpoint(flow), host: formatEndpoint(flow.host.local) }, 'udp flow open');
    }
  }

  private onChannelFailed(flow: Flow, err: unknown): void {
    if (flow.closed) return;
    const lost = Math.max(1, flow.pending?.length ?? 0);
    this.drop('flow-setup-failed', lost);
    this.flows.remove(flow);
    this.endFlow(flow, 'setup-failed');
    this.warnEvery('setup', { err, client: formatEndpoint(flow), target: formatEndpoint(this.binding.container) }, 'cannot open a udp flow to the container; datagrams dropped');
    this.finishCloseIfEmpty();
  }

  private onFlowError(flow: Flow, err: Error): void {
    const code = errnoCode(err) ?? 'unknown';
    // ICMP port/host unreachable for an earlier datagram: count it and keep the flow, the next
    // datagram tries again (the container may be restarting).
    this.drop(UNREACHABLE.has(code) ? 'backend-unreachable' : 'send-error');
    if (this.logger.isLevelEnabled('debug')) this.logger.debug({ client: formatEndpoint(flow), errno: code }, 'udp flow error');
  }

  // ---- expiry, eviction, teardown ----

  /** Starts the sweep (or restarts it at `intervalMs` when closing). */
  private startSweep(intervalMs = this.sweepMs): void {
    if (this.state === 'closing') {
      if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    } else if (this.sweepTimer !== null || this.idleMs <= 0) return;
    this.sweepTimer = setInterval(() => this.sweep(), intervalMs);
    this.sweepTimer.unref();
  }

  private sweep(): void {
    let idleMs = this.idleMs;
    if (this.state === 'closing') idleMs = idleMs > 0 ? Math.min(idleMs, CLOSING_QUIET_MS) : CLOSING_QUIET_MS;
    this.flows.sweep(Date.now() - idleMs, (flow) => {
      this.flowsExpired++;
      this.endFlow(flow, 'expired');
    });
    if (this.flows.size === 0 && this.sweepTimer !== null) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = null;
    }
    this.finishCloseIfEmpty();
  }

  private evictOldest(now: number): void {
    const oldest = this.flows.oldest();
    if (oldest === null) return;
    this.flows.remove(oldest);
    this.flowsEvicted++;
    this.endFlow(oldest, 'evicted');
    this.evictionsSinceWarn++;
    const last = this.lastWarn.get('evict') ?? -Infinity;
    if (now - last >= WARN_INTERVAL_MS) {
      this.lastWarn.set('evict', now);
      this.logger.warn(
        { maxFlows: this.maxFlows, evicted: this.evictionsSinceWarn, code: 'udp-flow-table-full' },
        `udp flow table full (udpMaxFlows ${this.maxFlows}); evicting the least recently used flows`,
      );
      this.evictionsSinceWarn = 0;
    }
  }

  /** Releases a flow that has already left the table (or is being cleared with it). */
  private endFlow(flow: Flow, reason: FlowEnd): void {
    if (flow.closed) return;
    flow.closed = true;
    if (flow.pending !== null && flow.pending.length > 0 && reason !== 'setup-failed') this.drop('flow-closed', flow.pending.length);
    flow.pending = null;
    flow.channel?.close();
    flow.channel = null;
    if (reason === 'address-gone') this.flows.remove(flow);
    if (this.logger.isLevelEnabled('debug')) {
      this.logger.debug(
        {
          client: formatEndpoint(flow),
          reason,
          datagramsToContainer: flow.datagramsToContainer,
          datagramsToClient: flow.datagramsToClient,
          bytesToContainer: flow.bytesToContainer,
          bytesToClient: flow.bytesToClient,
          durationMs: Date.now() - flow.createdAt,
        },
        'udp flow end',
      );
    }
  }

  private finishCloseIfEmpty(): void {
    if (this.state === 'closing' && this.flows.size === 0) this.destroy();
  }

  private drop(reason: string, n = 1): void {
    this.drops[reason] = (this.drops[reason] ?? 0) + n;
  }

  private warnEvery(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    if (now - (this.lastWarn.get(key) ?? -Infinity) < WARN_INTERVAL_MS) return;
    this.lastWarn.set(key, now);
    this.logger.warn(fields, msg);
  }
}

function closeHostSocket(hs: HostSocket): void {
  if (hs.closed) return;
  hs.closed = true;
  hs.socket.removeAllListeners('message');
  hs.socket.removeAllListeners('error');
  hs.socket.on('error', () => {}); // late errors must not crash the process
  try {
    hs.socket.close();
  } catch {
    // already closed
  }
}


/** The host's own addresses of one family that a socket can bind to without a scope id. */
export function localAddresses(family: Family): string[] {
  const out = new Set<string>();
  for (const infos of Object.values(os.networkInterfaces())) {
    for (const info of infos ?? []) {
      if (family === 4 && info.family === 'IPv4') out.add(info.address);
      // Link-local IPv6 (fe80::/10) needs a scope id to bind; the wildcard socket serves it.
      if (family === 6 && info.family === 'IPv6' && info.scopeid === 0 && !/^fe[89ab]/i.test(info.address)) out.add(info.address);
    }
  }
  return [...out].sort();
}
