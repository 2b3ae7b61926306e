// Address helpers shared by config, proxy and rules: pure, no sockets. One place for "is this the
// wildcard" and for how an address and port are written in messages and logs.
import type { Endpoint } from './api.js';

/** 0.0.0.0 or the IPv6 unspecified address in any spelling (`::`, `0::0`, `0:0:0:0:0:0:0:0`). */
export function isUnspecified(ip: string): boolean {
  return ip === '0.0.0.0' || /^[0:]+$/.test(ip);
}

/** `1.2.3.4:80`, `[::1]:80`; a null address (no host IP: every address) as `*:80`. */
export function formatHostPort(ip: string | null, port: number | string): string {
  if (ip === null) return `*:${port}`;
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function formatEndpoint(e: Endpoint): string {
  return formatHostPort(e.ip, e.port);
}
