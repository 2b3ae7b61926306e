// Where a TCP connection gets its PROXY protocol header: built once per connection from the
// addresses the host saw, and written by the listener in one piece before any client byte.
import type { Binding } from '../api.js';
import { buildProxyHeader } from './proxy-header.js';

/** The addresses of an accepted connection (a net.Socket or a raw socket). */
export interface ConnectionAddresses {
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  readonly localAddress?: string | undefined;
  readonly localPort?: number | undefined;
}

/**
 * The header for one accepted connection, or null when the mapping sends none. Source is the
 * client as the host saw it, destination the host address and port it connected to. Throws
 * PF_PROXY_HEADER when the socket has no addresses any more (it closed while we dialled).
 */
export function buildConnectionHeader(binding: Binding, client: ConnectionAddresses, uniqueId: Buffer | null): Buffer | null {
  const m = binding.mapping;
  if (m.proxyProtocol === null) return null;
  return buildProxyHeader({
    version: m.proxyProtocol,
    transport: 'stream',
    source: { ip: client.remoteAddress ?? '', port: client.remotePort ?? 0 },
    destination: { ip: client.localAddress ?? '', port: client.localPort ?? 0 },
    ...(m.proxyProtocol === 'v2' ? { tlvs: { ...(uniqueId !== null ? { uniqueId } : {}), crc32c: m.proxyTlvs.crc32c } } : {}),
  });
}
