// The UDP listener for one binding (one host address and port): its host sockets
// (src/proxy/udp-sockets.ts: which sockets, bound how, re-scanned when addresses change) and its
// flows (src/proxy/udp-flows.ts: one per client, to the container and back). This file holds the
// listener's own lifecycle: listen, the sweeping timer, close with a grace period, destroy, stats.
//
// Expiry: one sweeping timer per listener runs every idleTimeout/4 (clamped), so a flow goes
// between 1 and 1.25 timeouts after its last datagram either way (at most 5 s late for long
// timeouts). Close: new clients are dropped (`closing`); an existing flow ends once it has been
// quiet for CLOSING_QUIET_MS (UDP has no end-of-stream: "finished" means "quiet"), or when the grace
// runs out.
import net from 'node:net';
import type { Binding, Endpoint, Listener, UdpStats } from '../api.js';
import { closedBeforeListening } from './bind-error.js';
import type { Logger } from '../log.js';
import { formatEndpoint } from '../addr.js';
import type { Dialer } from './dialer.js';
import { UdpFlows } from './udp-flows.js';
import { HostSockets } from './udp-sockets.js';
import { RateLimitedWarner } from './warn.js';

export { MAX_DATAGRAM } from './udp-flows.js';

export interface UdpListenerDeps {
  readonly dialer: Dialer;
  /** A child logger for this mapping, made by the caller. */
  readonly logger: Logger;
  /**
   * Unspecified host IP only: how often (ms) to look for local addresses added or removed since
   * the last scan. Default 10 s; 0 turns re-scanning off.
   */
  readonly addressRescanMs?: number;
  /** Adopt this already bound socket as the only host socket instead of binding (docker's -use-listen-fd). */
  readonly fd?: number;
}

const SWEEP_MIN_MS = 50;
const SWEEP_MAX_MS = 5_000;
const CLOSING_QUIET_MS = 1_000;
const CLOSING_SWEEP_MS = 100;

type State = 'new' | 'listening' | 'closing' | 'destroyed';

export class UdpListener implements Listener {
  readonly binding: Binding;
  private readonly logger: Logger;
  private readonly idleMs: number;
  private readonly sweepMs: number;
  private readonly sockets: HostSockets;
  private readonly flows: UdpFlows;
  private bound: Endpoint | null = null;
  private state: State = 'new';
  private listening: Promise<void> | null = null;
  private closing: Promise<void> | null = null;
  private resolveClose: (() => void) | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private graceTimer: NodeJS.Timeout | null = null;

  constructor(binding: Binding, deps: UdpListenerDeps) {
    this.binding = binding;
    this.logger = deps.logger;
    this.idleMs = binding.mapping.udpIdleTimeoutMs;
    this.sweepMs = Math.min(SWEEP_MAX_MS, Math.max(SWEEP_MIN_MS, Math.floor(this.idleMs / 4)));
    const warner = new RateLimitedWarner(deps.logger);
    this.flows = new UdpFlows(binding, deps.dialer, deps.logger, warner, net.isIPv6(binding.container.ip) ? 6 : 4);
    this.flows.onFlowGone = () => this.finishCloseIfEmpty();
    this.flows.onFlowCreated = () => this.startSweep();
    const flows = this.flows;
    this.sockets = new HostSockets(
      binding,
      net.isIPv6(binding.host.ip) ? 6 : 4,
      deps.logger,
      warner,
      { message: (hs, msg, address, port) => flows.fromClient(hs, msg, address, port), gone: (hs) => flows.hostGone(hs) },
      deps.addressRescanMs,
      deps.fd,
    );
  }

  listen(): Promise<void> {
    this.listening ??= this.bindAll();
    return this.listening;
  }

  address(): Endpoint | null {
    return this.bound;
  }

  /** Every address a host socket is bound to. */
  boundAddresses(): Endpoint[] {
    return this.sockets.addresses();
  }

  stats(): UdpStats {
    const c = this.flows.counters;
    return {
      protocol: 'udp',
      flows: this.flows.table.size,
      flowsCreated: c.flowsCreated,
      flowsExpired: c.flowsExpired,
      flowsEvicted: c.flowsEvicted,
      datagramsToContainer: c.datagramsToContainer,
      datagramsToClient: c.datagramsToClient,
      bytesToContainer: c.bytesToContainer,
      bytesToClient: c.bytesToClient,
      drops: { ...c.drops },
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
    this.flows.accepting = false;
    this.sockets.stopRescan();
    if (this.flows.table.size === 0 || graceMs <= 0) this.destroy();
    else {
      this.graceTimer = setTimeout(() => this.destroy(), graceMs);
      this.graceTimer.unref();
      this.startSweep();
    }
    return this.closing;
  }

  destroy(): void {
    if (this.state === 'destroyed') return;
    this.state = 'destroyed';
    this.flows.accepting = false;
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.sweepTimer = null;
    this.graceTimer = null;
    this.flows.destroyAll();
    this.sockets.close();
    this.resolveClose?.();
    this.resolveClose = null;
  }

  private async bindAll(): Promise<void> {
    if (this.state !== 'new') throw closedBeforeListening(this.binding);
    try {
      const port = await this.sockets.bind();
      this.bound = { ip: this.binding.host.ip, port };
    } catch (err) {
      const closedMeanwhile = this.state !== 'new';
      this.destroy();
      throw closedMeanwhile ? closedBeforeListening(this.binding) : err;
    }
    // close()/destroy() while binding: destroy() has closed what was bound already.
    if (this.state !== 'new') throw closedBeforeListening(this.binding);
    this.state = 'listening';
    this.flows.accepting = true;
    this.logger.debug({ addresses: this.boundAddresses().map(formatEndpoint), target: formatEndpoint(this.binding.container) }, 'udp listening');
  }

  /** Starts the sweep; while closing, restarts it at the closing pace. */
  private startSweep(): void {
    const closing = this.state === 'closing';
    if (!closing && (this.sweepTimer !== null || this.idleMs <= 0)) return;
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = setInterval(() => this.sweep(), closing ? CLOSING_SWEEP_MS : this.sweepMs);
    this.sweepTimer.unref();
  }

  private sweep(): void {
    let idleMs = this.idleMs;
    if (this.state === 'closing') idleMs = idleMs > 0 ? Math.min(idleMs, CLOSING_QUIET_MS) : CLOSING_QUIET_MS;
    this.flows.sweep(Date.now() - idleMs);
    if (this.flows.table.size === 0 && this.sweepTimer !== null) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = null;
    }
    this.finishCloseIfEmpty();
  }

  private finishCloseIfEmpty(): void {
    if (this.state === 'closing' && this.flows.table.size === 0) this.destroy();
  }
}
