// Addresses, the one module for them: parsing IP text to bytes, the one canonical text form
// (RFC 5952 for IPv6, `::ffff:a.b.c.d` for an IPv4-mapped address — what the kernel and libuv
// print for a dual-stack peer), families, "is this the wildcard", and how an address and port are
// written in messages and logs. Pure, no sockets. parseIP runs once per PROXY header, so it is a
// plain scan without split/regex (split/map costs ~10x more).
import net from 'node:net';
import type { Endpoint, Family } from './api.js';

/** An IP address as bytes: 4 (IPv4) or 16 (IPv6), network order. */
export interface ParsedIP {
  readonly family: Family;
  readonly bytes: Uint8Array;
}

/** 4 or 6 for an IP literal (IPv6 without brackets; a zone `%eth0` is accepted), else null. */
export function familyOf(ip: string): Family | null {
  const v = net.isIP(ip);
  return v === 4 ? 4 : v === 6 ? 6 : null;
}

/** 0.0.0.0 or the IPv6 unspecified address in any spelling (`::`, `0::0`, `0:0:0:0:0:0:0:0`). */
export function isUnspecified(ip: string): boolean {
  return ip === '0.0.0.0' || /^[0:]+$/.test(ip);
}

/** Bytes of an IP literal (no zone), or null when it is not one. */
export function parseIP(text: string): ParsedIP | null {
  if (typeof text !== 'string' || text.includes('%')) return null;
  const family = net.isIP(text);
  if (family === 4) return { family: 4, bytes: parseIPv4(text) };
  if (family === 6) return { family: 6, bytes: parseIPv6(text) };
  return null;
}

/** `ip` is a valid dotted quad (checked by net.isIP). */
function parseIPv4(ip: string): Uint8Array {
  const bytes = new Uint8Array(4);
  let part = 0;
  let value = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 0x2e) {
      bytes[part++] = value;
      value = 0;
    } else {
      value = value * 10 + (c - 0x30);
    }
  }
  bytes[part] = value;
  return bytes;
}

/** `ip` is a valid IPv6 address without zone (checked by net.isIP). One scan. */
function parseIPv6(ip: string): Uint8Array {
  const head: number[] = [];
  const tail: number[] = [];
  let groups = head;
  const n = ip.length;
  let i = 0;
  if (ip.charCodeAt(0) === 0x3a && ip.charCodeAt(1) === 0x3a) {
    groups = tail;
    i = 2;
  }
  while (i < n) {
    let j = i;
    let value = 0;
    let dotted = false;
    for (; j < n; j++) {
      const c = ip.charCodeAt(j);
      if (c === 0x3a) break;
      if (c === 0x2e) dotted = true;
      else value = value * 16 + (c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57);
    }
    if (dotted) {
      const v4 = parseIPv4(ip.slice(i, j));
      groups.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
    } else {
      groups.push(value);
    }
    i = j + 1;
    if (ip.charCodeAt(i) === 0x3a) {
      groups = tail;
      i++;
    }
  }
  const bytes = new Uint8Array(16);
  for (let g = 0; g < head.length; g++) {
    bytes[2 * g] = (head[g] ?? 0) >> 8;
    bytes[2 * g + 1] = (head[g] ?? 0) & 0xff;
  }
  for (let g = 0, at = 8 - tail.length; g < tail.length; g++, at++) {
    bytes[2 * at] = (tail[g] ?? 0) >> 8;
    bytes[2 * at + 1] = (tail[g] ?? 0) & 0xff;
  }
  return bytes;
}

/** IPv6 bytes of the form `::ffff:a.b.c.d`. */
export function isMappedIPv4(b: Uint8Array): boolean {
  if (b.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`). */
export function mapToIPv6(ip: ParsedIP): ParsedIP {
  if (ip.family === 6) return ip;
  const bytes = new Uint8Array(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  bytes.set(ip.bytes, 12);
  return { family: 6, bytes };
}

/** The canonical text: dotted quad; RFC 5952 for IPv6; `::ffff:a.b.c.d` for an IPv4-mapped one. */
export function formatIP(ip: ParsedIP): string {
  const b = ip.bytes;
  if (ip.family === 4) return `${b[0] ?? 0}.${b[1] ?? 0}.${b[2] ?? 0}.${b[3] ?? 0}`;
  if (isMappedIPv4(b)) return `::ffff:${b[12] ?? 0}.${b[13] ?? 0}.${b[14] ?? 0}.${b[15] ?? 0}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] ?? 0) << 8) | (b[i + 1] ?? 0));
  // The longest run of two or more zero groups (the first one on a tie) becomes `::`.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestStart === -1) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

/** Canonical text of an IP literal (see formatIP), or null when it is not one (zones refused). */
export function canonicalIP(text: string): string | null {
  const p = parseIP(text);
  return p === null ? null : formatIP(p);
}

/** Why `ip` (canonical text) can be no unicast destination, or null when it can be one. */
export function nonUnicastKind(ip: string): 'unspecified' | 'broadcast' | 'multicast' | null {
  if (isUnspecified(ip)) return 'unspecified';
  if (ip === '255.255.255.255') return 'broadcast';
  const p = parseIP(ip);
  if (p === null) return null;
  const first = p.bytes[0] ?? 0;
  if (p.family === 4 ? first >= 224 && first <= 239 : first === 0xff) return 'multicast';
  return null;
}

/** `1.2.3.4:80`, `[::1]:80`; a null address (no host IP: every address) as `*:80`. */
export function formatHostPort(ip: string | null, port: number | string): string {
  if (ip === null) return `*:${port}`;
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** An endpoint in messages; also for input that may not be well-formed (an ip that is no string). */
export function formatEndpoint(e: Endpoint): string {
  const ip: unknown = (e as Partial<Endpoint>).ip;
  return formatHostPort(typeof ip === 'string' ? ip : String(ip), String(e.port));
}
