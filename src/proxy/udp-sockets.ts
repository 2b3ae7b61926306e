// The host sockets of one UDP binding: where client datagrams arrive and replies leave from.
//
// A specific host IP gets one socket. An unspecified one (0.0.0.0, ::) gets one socket per local
// address of its family, and no wildcard socket, none of them with SO_REUSEADDR:
//   - Replies leave from the address the client targeted. Node 20's dgram has no IP_PKTINFO, so a
//     wildcard socket would answer from whatever source the kernel picks for the client's route
//     (a client that targeted the host's second address gets a reply from its first, and drops
//     it); a socket bound to the address itself answers from it.
//   - Nobody else can take the port. Linux lets a second socket bind an address and port that is
//     already bound only when BOTH set SO_REUSEADDR (or both SO_REUSEPORT with the same uid), and
//     it then delivers to the newest. The earlier arrangement (wildcard + per-address sockets, all
//     with SO_REUSEADDR so they could share the port) let any local user bind 127.0.0.1:PORT with
//     SO_REUSEADDR and receive every datagram meant for the container (issue 14). Without
//     SO_REUSEADDR such a bind fails with EADDRINUSE, on the address and on the wildcard alike.
// The price: an address is served only while it has its own socket. Addresses added later are
// bound by the periodic re-scan (`addressRescanMs`, default 10 s; until then datagrams to them get
// ICMP port unreachable); sockets of addresses that went away are closed and their flows end.
// Addresses that are local without being configured (127.0.0.2 on lo) are not served. IPv6
// link-local addresses are bound with their scope (fe80::1%eth0). If no address of the family can
// be bound at start (none configured), the wildcard is bound alone (no SO_REUSEADDR either) and
// answers with the kernel's choice of source.
//
// Before binding anything for an unspecified host IP, the wildcard is bound as a probe (it fails
// with EADDRINUSE if any socket holds the port on any address; it also picks the port for port 0)
// and closed again.
import dgram from 'node:dgram';
import os from 'node:os';
import type { Binding, Endpoint, Family } from '../api.js';
import { PortferryError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { formatEndpoint, isUnspecified } from '../addr.js';
import { udpPort, type UdpPort } from '../internals.js';
import { bindError } from './bind-error.js';
import type { RateLimitedWarner } from './warn.js';

/** One host socket: bound to one local address (or the wildcard) and the binding's port. */
export interface HostSocket {
  readonly socket: dgram.Socket;
  readonly local: Endpoint;
  closed: boolean;
  /** The socket's datagram path (src/internals.ts: through its handle, or dgram's public API). */
  readonly port: UdpPort;
}

export interface HostSocketEvents {
  /** A client datagram (from address:port, as the kernel reports it). */
  message(hs: HostSocket, msg: Buffer, address: string, port: number): void;
  /** The socket's address went away: the socket is closed; flows on it must end. */
  gone(hs: HostSocket): void;
}

// Host sockets take the datagrams of every client of the binding. The receive buffer is a queue
// of datagrams not read yet: under overload it stays full, and whatever it holds is delivered
// late, after its client may have gone. 4 MiB (8 MiB in the kernel's accounting, ~11,000 small
// datagrams, a quarter of a second at full rate) kept feeding a finished client's flow long enough
// for the next client's server to lock onto it (issue 13/14, the iperf3 back-to-back hang). The
// size is chosen by measurement (docs/architecture.md, "UDP buffer sizes"): back-to-back iperf3
// runs hang from 512 KiB up and pass at 256 KiB and below; the kernel default (208 KiB, not
// doubled) loses the first datagrams of a burst of 50 new clients that 256 KiB (512 KiB
// accounted) absorbs. A bigger buffer only helps when the forwarder is starved of CPU (it keeps
// more of a burst for later, which is exactly the staleness above). Replies are sent at once (when the
// socket is full they are dropped and counted), so the send buffer keeps the kernel default.
const HOST_RECV_BUFFER = 256 * 1024;
const DEFAULT_RESCAN_MS = 10_000;

export class HostSockets {
  private readonly sockets = new Map<string, HostSocket>();
  private readonly type: 'udp4' | 'udp6';
  private port = 0;
  private rescanTimer: NodeJS.Timeout | null = null;
  private rescanning = false;
  private closed = false;

  /** Host addresses are literal IPs: skip dgram's dns.lookup (and the tick it costs) on every send. */
  private readonly lookup = (address: string, _options: unknown, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void => {
    callback(null, address, this.family);
  };

  constructor(
    private readonly binding: Binding,
    private readonly family: Family,
    private readonly logger: Logger,
    private readonly warner: RateLimitedWarner,
    private readonly events: HostSocketEvents,
    private readonly rescanMs = DEFAULT_RESCAN_MS,
    /** An already bound descriptor to adopt as the only socket (docker's -use-listen-fd). */
    private readonly fd?: number,
  ) {
    this.type = family === 6 ? 'udp6' : 'udp4';
  }

  /** Binds every socket of the binding; resolves with the bound port. Rejects with a PortferryError. */
  async bind(): Promise<number> {
    const { host } = this.binding;
    if (this.fd !== undefined || !isUnspecified(host.ip)) {
      this.port = (await this.bindOne(host.ip, host.port)).local.port;
      return this.port;
    }
    this.port = await this.probe(host.port);
    let bound = 0;
    for (const ip of localAddresses(this.family)) {
      try {
        await this.bindOne(ip, this.port);
        bound++;
      } catch (err) {
        // An address that is not usable yet (IPv6 still in duplicate address detection) is retried
        // by the next scan; anything else is a real failure of this binding.
        if (!(err instanceof PortferryError && err.code === 'PF_BIND_ADDRNOTAVAIL')) throw err;
        this.logger.debug({ address: ip, port: this.port }, 'local address not bindable yet; the re-scan tries again');
      }
    }
    if (bound === 0) await this.bindOne(host.ip, this.port);
    else this.startRescan();
    return this.port;
  }

  /** Every address a socket is bound to. */
  addresses(): Endpoint[] {
    return [...this.sockets.values()].map((hs) => hs.local);
  }

  /** Closes every socket and stops the re-scan. Idempotent. */
  close(): void {
    this.closed = true;
    this.stopRescan();
    for (const hs of this.sockets.values()) closeHostSocket(hs);
    this.sockets.clear();
  }

  stopRescan(): void {
    if (this.rescanTimer !== null) clearInterval(this.rescanTimer);
    this.rescanTimer = null;
  }

  /** Binds the wildcard without SO_REUSEADDR to prove nobody holds the port; returns the port. */
  private async probe(port: number): Promise<number> {
    const probe = dgram.createSocket({ type: this.type, ipv6Only: this.family === 6, lookup: this.lookup });
    try {
      await new Promise<void>((resolve, reject) => {
        probe.once('error', (err) => reject(bindError(err, this.binding, { ip: this.binding.host.ip, port })));
        probe.bind({ port, address: this.binding.host.ip, exclusive: true }, () => resolve());
      });
      return probe.address().port;
    } finally {
      closeQuietly(probe);
    }
  }

  /**
   * Binds one socket to ip:port (no SO_REUSEADDR) and starts delivering its datagrams. This is
   * the one place host sockets are made: adopting an already bound descriptor goes here too.
   */
  private bindOne(ip: string, port: number): Promise<HostSocket> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket({
        type: this.type,
        // `::` means IPv6 only: 0.0.0.0 is a binding of its own (a dual-stack socket would collide with it).
        ipv6Only: this.family === 6,
        recvBufferSize: HOST_RECV_BUFFER,
        lookup: this.lookup,
      });
      const onBindError = (err: Error): void => {
        closeQuietly(socket);
        reject(bindError(err, this.binding, { ip, port }));
      };
      socket.once('error', onBindError);
      socket.bind(this.fd !== undefined ? { fd: this.fd } : { port, address: ip, exclusive: true }, () => {
        socket.off('error', onBindError);
        const local = { ip, port: socket.address().port };
        if (this.closed) {
          closeQuietly(socket);
          reject(new PortferryError('PF_BIND_FAILED', `udp ${formatEndpoint(local)} was closed while it was being bound`));
          return;
        }
        const events = this.events;
        socket.on('error', (e) => this.warner.warn(`host:${errnoCode(e) ?? 'error'}`, { errno: errnoCode(e) ?? e.message, address: formatEndpoint(local) }, 'udp host socket error'));
        const hs: HostSocket = { socket, local, closed: false, port: udpPort(socket, (msg, address, clientPort) => events.message(hs, msg, address, clientPort)) };
        this.sockets.set(ip, hs);
        resolve(hs);
      });
    });
  }

  private startRescan(): void {
    if (this.rescanMs <= 0) return;
    this.rescanTimer = setInterval(() => {
      // rescan() catches everything it expects; this is the last line against a crash (issue 14).
      this.rescan().catch((err: unknown) => this.warner.warn('rescan', { errno: errnoCode(err) ?? String(err) }, 'udp address re-scan failed; the next one tries again'));
    }, this.rescanMs);
    this.rescanTimer.unref();
  }

  /** Binds sockets for local addresses that appeared, closes those of addresses that went away. */
  private async rescan(): Promise<void> {
    if (this.rescanning || this.closed) return;
    this.rescanning = true;
    try {
      let now: Set<string>;
      try {
        now = new Set(localAddresses(this.family));
      } catch (err) {
        // os.networkInterfaces() throws under EMFILE (it needs a netlink socket): keep what is bound.
        this.warner.warn('rescan', { errno: errnoCode(err) ?? String(err) }, 'cannot list the local addresses (out of descriptors?); keeping the udp sockets as they are');
        return;
      }
      for (const [ip, hs] of this.sockets) {
        if (now.has(ip)) continue;
        this.sockets.delete(ip);
        closeHostSocket(hs);
        this.events.gone(hs);
        this.logger.info({ address: ip, port: hs.local.port }, 'local address went away; its udp socket is closed');
      }
      for (const ip of now) {
        if (this.sockets.has(ip)) continue;
        try {
          await this.bindOne(ip, this.port);
          this.logger.info({ address: ip, port: this.port }, 'new local address; udp socket bound');
        } catch (err) {
          if (this.closed) return;
          const errno = err instanceof PortferryError ? err.details['errno'] : errnoCode(err);
          this.warner.warn(`rescan:${ip}`, { address: ip, port: this.port, errno }, 'cannot bind a new local address; it is not served (EADDRINUSE: another socket holds it)');
        }
      }
    } finally {
      this.rescanning = false;
    }
  }
}

function closeQuietly(socket: dgram.Socket): void {
  socket.on('error', () => {}); // late errors must not crash the process
  try {
    socket.close();
  } catch {
    // never bound, or closed already
  }
}

function closeHostSocket(hs: HostSocket): void {
  if (hs.closed) return;
  hs.closed = true;
  hs.socket.removeAllListeners('message');
  hs.socket.removeAllListeners('error');
  closeQuietly(hs.socket);
}

/** The host's own addresses of one family; IPv6 link-local ones with their scope (fe80::1%eth0). */
export function localAddresses(family: Family): string[] {
  const out = new Set<string>();
  for (const [name, infos] of Object.entries(os.networkInterfaces())) {
    for (const info of infos ?? []) {
      if (family === 4 && info.family === 'IPv4') out.add(info.address);
      if (family === 6 && info.family === 'IPv6') out.add(/^fe[89ab]/i.test(info.address) ? `${info.address}%${name}` : info.address);
    }
  }
  return [...out].sort();
}
