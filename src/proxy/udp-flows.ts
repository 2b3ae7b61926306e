// The flows of one UDP binding: one per client address and port, each holding a UdpChannel to the
// container (for the direct dialer a dgram socket connected to the container, so the kernel only
// delivers the container's replies to it). Datagrams are passed through as the Buffers Node hands
// us: no copy, no concatenation, so boundaries are exact up to the protocol maximum.
//
// Lifecycle: a client's first datagram opens a flow (if the process-wide descriptor budget has room,
// src/limits.ts); datagrams that arrive while its channel opens wait in a bounded queue, in order.
// A flow ends when it has been idle (either direction) for udpIdleTimeout (one sweeping timer per
// binding, src/proxy/flow-table.ts), when the table is full and it is the least recently used, when
// its host address goes away, or when the binding is destroyed. An ended flow sends nothing more
// either way: its channel is closed (which also discards sends still queued in the process), its
// queue is dropped, and late datagrams for it are ignored.
//
// Overload: every queue is bounded and full means the newest datagram is dropped and counted;
// nothing blocks and nothing is reordered. The bounds: the host socket's receive buffer (the kernel
// drops), the queue of a flow being opened, and the sends a socket could not take at once
// (`QUEUED_SENDS_MAX`, checked before each send).
import type { Binding, Family } from '../api.js';
import { PortferryError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { formatEndpoint } from '../addr.js';
import { descriptors } from '../limits.js';
import { dialErrno, type Dialer, type UdpChannel } from './dialer.js';
import { FlowTable, type FlowLink } from './flow-table.js';
import { buildProxyHeader, newUniqueId } from './proxy-header.js';
import type { HostSocket } from './udp-sockets.js';
import type { RateLimitedWarner } from './warn.js';

/** The largest UDP payload: 65535 - 20 (IPv4 header) - 8 (UDP header); IPv6: 65535 - 8. */
export const MAX_DATAGRAM: Readonly<Record<Family, number>> = { 4: 65507, 6: 65527 };

// Datagrams that arrive while a flow's channel is being opened wait, in order, up to these bounds.
const PENDING_MAX_DATAGRAMS = 64;
const PENDING_MAX_BYTES = 256 * 1024;
/** Sends a socket may hold in this process (it was full: EAGAIN) before new datagrams are dropped. */
const QUEUED_SENDS_MAX = 64;

/** Error codes on a flow's channel that mean "the container is not there (now)". */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export type FlowEnd = 'expired' | 'evicted' | 'setup-failed' | 'address-gone' | 'destroyed';

export class Flow implements FlowLink<Flow> {
  lastActive = 0;
  older: Flow | null = null;
  newer: Flow | null = null;
  samePort: Flow | null = null;
  /** Null while the channel is being opened, and after the flow ended. */
  channel: UdpChannel | null = null;
  /** Datagrams waiting for the channel; null once it is open (or the flow ended). */
  pending: Buffer[] | null = [];
  pendingBytes = 0;
  closed = false;
  datagramsToContainer = 0;
  datagramsToClient = 0;
  bytesToContainer = 0;
  bytesToClient = 0;
  readonly createdAt: number;

  constructor(
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

/** Counters of one binding, read by UdpListener.stats(). */
export class UdpCounters {
  flowsCreated = 0;
  flowsExpired = 0;
  flowsEvicted = 0;
  datagramsToContainer = 0;
  datagramsToClient = 0;
  bytesToContainer = 0;
  bytesToClient = 0;
  readonly drops: Record<string, number> = {};

  drop(reason: string, n = 1): void {
    this.drops[reason] = (this.drops[reason] ?? 0) + n;
  }
}

export class UdpFlows {
  readonly table = new FlowTable<Flow>();
  readonly counters = new UdpCounters();
  private readonly maxFlows: number;
  private readonly maxPayload: number;
  /** False until the listener listens, and once it closes: then only existing flows are served. */
  accepting = false;
  /** Set by the listener: called when a flow leaves the table outside a sweep (close completion). */
  onFlowGone: () => void = () => {};
  /** Set by the listener: called when a flow is created (starts the sweep). */
  onFlowCreated: () => void = () => {};

  constructor(
    private readonly binding: Binding,
    private readonly dialer: Dialer,
    private readonly logger: Logger,
    private readonly warner: RateLimitedWarner,
    containerFamily: Family,
  ) {
    this.maxFlows = binding.mapping.udpMaxFlows;
    this.maxPayload = MAX_DATAGRAM[containerFamily];
  }

  /** A client datagram that arrived on `hs`. */
  fromClient(hs: HostSocket, msg: Buffer, address: string, port: number): void {
    const now = Date.now();
    let flow = this.table.get(address, port);
    if (flow === undefined) {
      if (!this.accepting) {
        this.counters.drop('closing');
        return;
      }
      flow = this.open(address, port, hs, now);
      if (flow === undefined) return;
    } else {
      this.table.touch(flow, now);
      if (flow.host !== hs) this.move(flow, hs);
    }
    this.toContainer(flow, msg);
  }

  private toContainer(flow: Flow, msg: Buffer): void {
    const channel = flow.channel;
    const c = this.counters;
    if (channel === null) {
      const pending = flow.pending;
      if (pending === null) return; // ended
      if (pending.length >= PENDING_MAX_DATAGRAMS || flow.pendingBytes + msg.length > PENDING_MAX_BYTES) {
        c.drop('flow-queue-full');
        return;
      }
      pending.push(msg);
      flow.pendingBytes += msg.length;
      return;
    }
    if (channel.queued() >= QUEUED_SENDS_MAX) {
      c.drop('flow-queue-full');
      return;
    }
    const header = flow.header;
    if (header !== null && header.length + msg.length > this.maxPayload) {
      this.tooBigForHeader(flow, header.length, msg.length);
      return;
    }
    flow.datagramsToContainer++;
    flow.bytesToContainer += msg.length;
    c.datagramsToContainer++;
    c.bytesToContainer += msg.length;
    // PROXY protocol v2: every datagram carries the flow's header (built once, in open()).
    if (header === null) channel.send(msg);
    else channel.send([header, msg]);
  }

  private toClient(flow: Flow, msg: Buffer): void {
    if (flow.closed) return;
    const hs = flow.host;
    const c = this.counters;
    if (hs.closed) {
      c.drop('send-error');
      return;
    }
    if (hs.port.queued() >= QUEUED_SENDS_MAX) {
      c.drop('reply-queue-full');
      return;
    }
    this.table.touch(flow, Date.now());
    flow.datagramsToClient++;
    flow.bytesToClient += msg.length;
    c.datagramsToClient++;
    c.bytesToClient += msg.length;
    // No callback: one costs a process.nextTick per datagram (see wrapDgram).
    hs.port.sendTo(msg, flow.port, flow.ip);
  }

  private tooBigForHeader(flow: Flow, headerBytes: number, payloadBytes: number): void {
    this.counters.drop('proxy-header-too-big');
    this.warner.warn(
      'proxy-too-big',
      { code: 'PF_PROXY_HEADER', client: formatEndpoint(flow), payloadBytes, headerBytes, maxDatagram: this.maxPayload },
      `udp datagram dropped: ${payloadBytes} bytes + the ${headerBytes}-byte PROXY v2 header exceed the ${this.maxPayload}-byte datagram limit`,
    );
  }

  private open(ip: string, port: number, hs: HostSocket, now: number): Flow | undefined {
    if (this.maxFlows > 0 && this.table.size >= this.maxFlows) this.evictOldest();
    // The budget first: a flood past it must not cost a PROXY header per refused datagram.
    if (!descriptors.takeUdpFlow()) {
      this.counters.drop('descriptor-budget');
      this.warner.warn(
        'budget',
        { code: 'udp-descriptor-budget', flows: this.table.size, udpFlowBudget: descriptors.udpFlowLimit(), nofile: descriptors.softLimit() },
        'udp flows hold half of the descriptor limit; new clients are refused so that TCP keeps descriptors (raise `ulimit -n`)',
      );
      return undefined;
    }
    let header: Buffer | null = null;
    if (this.binding.mapping.proxyProtocol !== null) {
      header = this.flowHeader(ip, port, hs);
      if (header === null) {
        descriptors.releaseUdpFlow();
        this.counters.drop('proxy-header');
        return undefined;
      }
    }
    const flow = new Flow(ip, port, hs, header, now);
    this.table.insert(flow, now);
    this.counters.flowsCreated++;
    this.onFlowCreated();
    this.dialer.openUdp(this.binding.container).then(
      (channel) => this.onChannelOpen(flow, channel),
      (err: unknown) => this.onChannelFailed(flow, err),
    );
    return flow;
  }

  /**
   * The PROXY v2 DGRAM header of a flow, built once when the flow is created (and again only if the
   * client moves to another host address). Source = the client, destination = the host address it
   * sent to (for a wildcard socket that address is not known: the binding's unspecified address is
   * written). Null, with a warning, when it cannot be built.
   */
  private flowHeader(ip: string, port: number, hs: HostSocket): Buffer | null {
    const m = this.binding.mapping;
    try {
      return buildProxyHeader({
        version: m.proxyProtocol ?? 'v2',
        transport: 'dgram',
        source: { ip, port },
        destination: { ip: hs.local.ip, port: hs.local.port },
        tlvs: {
          ...(m.proxyTlvs.uniqueId ? { uniqueId: newUniqueId() } : {}),
          crc32c: m.proxyTlvs.crc32c,
        },
      });
    } catch (err) {
      this.warner.warn('proxy-header', { code: errnoCode(err) ?? 'PF_PROXY_HEADER', client: `${ip}:${port}` }, 'cannot build the PROXY header for a UDP flow; its datagrams are dropped');
      return null;
    }
  }

  private move(flow: Flow, hs: HostSocket): void {
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
    if (this.logger.isLevelEnabled('debug')) this.logger.debug({ client: formatEndpoint(flow), host: formatEndpoint(flow.host.local) }, 'udp flow open');
  }

  private onChannelFailed(flow: Flow, err: unknown): void {
    if (flow.closed) return;
    this.counters.drop('flow-setup-failed', Math.max(1, flow.pending?.length ?? 0));
    this.table.remove(flow);
    this.end(flow, 'setup-failed');
    // One line with the errno (ECONNREFUSED, EMFILE …), never a stack trace.
    const coded = err instanceof PortferryError ? err : null;
    const errno = dialErrno(err);
    this.warner.warn(
      `setup:${errno}`,
      { code: coded?.code ?? 'PF_DIAL_FAILED', errno, target: formatEndpoint(this.binding.container) },
      `cannot open a udp flow to the container (${errno}); its datagrams are dropped, the next datagram tries again`,
    );
    this.onFlowGone();
  }

  private onFlowError(flow: Flow, err: Error): void {
    const code = errnoCode(err) ?? 'unknown';
    // ICMP port/host unreachable for an earlier datagram: count it and keep the flow, the next
    // datagram tries again (the container may be restarting).
    this.counters.drop(UNREACHABLE.has(code) ? 'backend-unreachable' : 'send-error');
    if (this.logger.isLevelEnabled('debug')) this.logger.debug({ client: formatEndpoint(flow), errno: code }, 'udp flow error');
  }

  /** Removes and ends every flow last active before `cutoff`. */
  sweep(cutoff: number): void {
    this.table.sweep(cutoff, (flow) => {
      this.counters.flowsExpired++;
      this.end(flow, 'expired');
    });
  }

  /** Ends the flows whose host socket went away (there is no other socket for their address). */
  hostGone(hs: HostSocket): void {
    for (const flow of this.table.snapshot()) {
      if (flow.host !== hs) continue;
      this.table.remove(flow);
      this.end(flow, 'address-gone');
    }
    this.onFlowGone();
  }

  /** Ends every flow (the binding is destroyed). */
  destroyAll(): void {
    for (const flow of this.table.snapshot()) this.end(flow, 'destroyed');
    this.table.clear();
  }

  private evictOldest(): void {
    const oldest = this.table.oldest();
    if (oldest === null) return;
    this.table.remove(oldest);
    this.counters.flowsEvicted++;
    this.end(oldest, 'evicted');
    this.warner.warn(
      'evict',
      { maxFlows: this.maxFlows, code: 'udp-flow-table-full' },
      `udp flow table full (udpMaxFlows ${this.maxFlows}); evicting the least recently used flows`,
    );
  }

  /** Ends a flow that has already left the table (or is being cleared with it): it sends nothing more. */
  private end(flow: Flow, reason: FlowEnd): void {
    if (flow.closed) return;
    flow.closed = true;
    descriptors.releaseUdpFlow();
    if (flow.pending !== null && flow.pending.length > 0 && reason !== 'setup-failed') this.counters.drop('flow-closed', flow.pending.length);
    flow.pending = null;
    flow.channel?.close();
    flow.channel = null;
    if (!this.logger.isLevelEnabled('debug')) return;
    const { datagramsToContainer, datagramsToClient, bytesToContainer, bytesToClient } = flow;
    const fields = { client: formatEndpoint(flow), reason, datagramsToContainer, datagramsToClient, bytesToContainer, bytesToClient };
    this.logger.debug({ ...fields, durationMs: Date.now() - flow.createdAt }, 'udp flow end');
  }
}
