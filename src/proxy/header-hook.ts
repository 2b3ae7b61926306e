// Where a TCP connection gets its PROXY protocol header (built once, written in one piece before
// any client byte). Kept apart from tcp.ts so the listener's hot path stays free of header logic.
import type net from 'node:net';
import type { Binding } from '../api.js';

export function buildConnectionHeader(binding: Binding, _client: net.Socket, _connId: number): Buffer | null {
  if (binding.mapping.proxyProtocol === null) return null;
  return null; // wired to proxy-header.ts when it lands
}
