// PROXY protocol headers (haproxy's proxy-protocol.txt), built once per TCP connection or UDP flow
// and written before any client byte, in ONE write (haproxy and nginx drop a header split across
// two segments).
//
// proxy-protocol-js encodes the v1 line and the v2 address block; it has no TLVs, and when given
// extra bytes it leaves them out of the v2 length field. So this module asks it for the bare
// header, appends the TLVs itself and rewrites the length field. Its parser mishandles the length
// field and truncated input: it is never used here (tests parse by hand).
//
// Addresses: source = the client as the host saw it, destination = the host address and port the
// client connected to. IPv4-mapped IPv6 (`::ffff:a.b.c.d`, from a dual-stack listener) is written
// as IPv4; if the two sides still differ in family, the IPv4 one is mapped into IPv6.
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import {
  Command,
  INETProtocol,
  IPv4Address,
  IPv4ProxyAddress,
  IPv6Address,
  IPv6ProxyAddress,
  Peer,
  TransportProtocol,
  V1ProxyProtocol,
  V2ProxyProtocol,
} from 'proxy-protocol-js';
import { formatHostPort } from '../addr.js';
import type { Endpoint } from '../api.js';
import { PortferryError } from '../errors.js';
import { crc32c } from './crc32c.js';

export { crc32c } from './crc32c.js';

export interface ProxyHeaderOptions {
  readonly version: 'v1' | 'v2';
  /** `dgram` (UDP) exists only in v2. */
  readonly transport: 'stream' | 'dgram';
  /** The client as the host saw it. */
  readonly source: Endpoint;
  /** The host address and port the client connected to. */
  readonly destination: Endpoint;
  /** v2 only. */
  readonly tlvs?: {
    /** PP2_TYPE_UNIQUE_ID value, at most 128 bytes (see newUniqueId). */
    readonly uniqueId?: Buffer;
    /** Append PP2_TYPE_CRC32C, a CRC-32C of the whole header. */
    readonly crc32c?: boolean;
  };
}

/** The 12-byte v2 signature. */
export const PP2_SIGNATURE: Buffer = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
export const PP2_TYPE_CRC32C = 0x03;
export const PP2_TYPE_UNIQUE_ID = 0x05;
/** The longest value of PP2_TYPE_UNIQUE_ID the specification allows. */
export const PP2_UNIQUE_ID_MAX = 128;
/** The longest v1 line, CRLF included. */
export const PP1_MAX_LENGTH = 107;

const V2_FIXED_LENGTH = 16; // signature, version/command, family/transport, length
const V2_ADDRESS_LENGTH = { 4: 12, 6: 36 } as const;

interface ParsedIp {
  readonly family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  readonly bytes: Uint8Array;
}

/**
 * Build the PROXY header for one connection (v1 or v2 STREAM) or one UDP flow (v2 DGRAM).
 * Throws PortferryError PF_PROXY_HEADER when the options cannot be encoded.
 */
export function buildProxyHeader(o: ProxyHeaderOptions): Buffer {
  const fail = (why: string, hint?: string): never => {
    throw new PortferryError(
      'PF_PROXY_HEADER',
      `cannot build a PROXY ${o.version} ${o.transport} header for ${formatEndpoint(o.source)} -> ${formatEndpoint(o.destination)}: ${why}`,
      {
        ...(hint === undefined ? {} : { hint }),
        details: { version: o.version, transport: o.transport, source: o.source, destination: o.destination },
      },
    );
  };

  if (o.version !== 'v1' && o.version !== 'v2') fail(`unknown version ${JSON.stringify(o.version)}`, 'Use proxyProtocol v1 or v2.');
  if (o.transport !== 'stream' && o.transport !== 'dgram') fail(`unknown transport ${JSON.stringify(o.transport)}`);
  checkPort(o.source.port, 'source', fail);
  checkPort(o.destination.port, 'destination', fail);
  let src = parseIp(o.source.ip, 'source', fail);
  let dst = parseIp(o.destination.ip, 'destination', fail);
  if (src.family !== dst.family) {
    if (src.family === 4) src = mapToIPv6(src);
    else dst = mapToIPv6(dst);
  }

  if (o.version === 'v1') {
    if (o.transport === 'dgram') {
      fail('PROXY v1 carries only TCP', 'Use proxyProtocol v2 for UDP mappings: v1 has no datagram transport.');
    }
    if (o.tlvs?.uniqueId !== undefined || o.tlvs?.crc32c === true) {
      fail('PROXY v1 has no TLVs (UNIQUE_ID, CRC32C)', 'Use proxyProtocol v2 for TLVs, or turn the TLV options off.');
    }
    const line = new V1ProxyProtocol(
      src.family === 4 ? INETProtocol.TCP4 : INETProtocol.TCP6,
      new Peer(formatIp(src), o.source.port),
      new Peer(formatIp(dst), o.destination.port),
    ).build();
    // Addresses are canonical (at most 39 characters each), so this cannot trigger; it guards the limit.
    if (line.length > PP1_MAX_LENGTH) fail(`the v1 line is ${line.length} bytes, more than ${PP1_MAX_LENGTH}`);
    return Buffer.from(line, 'latin1');
  }

  const uniqueId = o.tlvs?.uniqueId;
  if (uniqueId !== undefined && uniqueId.length > PP2_UNIQUE_ID_MAX) {
    fail(`the UNIQUE_ID TLV is ${uniqueId.length} bytes, more than ${PP2_UNIQUE_ID_MAX}`, 'Use newUniqueId() (16 bytes) or an id of at most 128 bytes.');
  }
  const withCrc = o.tlvs?.crc32c === true;
  const transport = o.transport === 'stream' ? TransportProtocol.STREAM : TransportProtocol.DGRAM;
  const address =
    src.family === 4
      ? new IPv4ProxyAddress(IPv4Address.createFrom(toArray(src.bytes)), o.source.port, IPv4Address.createFrom(toArray(dst.bytes)), o.destination.port)
      : new IPv6ProxyAddress(IPv6Address.createFrom(toArray(src.bytes)), o.source.port, IPv6Address.createFrom(toArray(dst.bytes)), o.destination.port);
  const base = new V2ProxyProtocol(Command.PROXY, transport, address).build();
  const baseLength = V2_FIXED_LENGTH + V2_ADDRESS_LENGTH[src.family];
  if (base.length !== baseLength) fail(`proxy-protocol-js built ${base.length} bytes, expected ${baseLength}`);

  const tlvLength = (uniqueId === undefined ? 0 : 3 + uniqueId.length) + (withCrc ? 7 : 0);
  const header = Buffer.allocUnsafe(baseLength + tlvLength);
  header.set(base, 0);
  // The length field counts everything after the fixed 16 bytes: addresses AND TLVs.
  header.writeUInt16BE(baseLength - V2_FIXED_LENGTH + tlvLength, 14);
  let offset = baseLength;
  if (uniqueId !== undefined) {
    header[offset] = PP2_TYPE_UNIQUE_ID;
    header.writeUInt16BE(uniqueId.length, offset + 1);
    uniqueId.copy(header, offset + 3);
    offset += 3 + uniqueId.length;
  }
  if (withCrc) {
    header[offset] = PP2_TYPE_CRC32C;
    header.writeUInt16BE(4, offset + 1);
    header.writeUInt32BE(0, offset + 3);
    // Computed over the whole header with the checksum field zeroed, stored big-endian.
    header.writeUInt32BE(crc32c(header), offset + 3);
  }
  return header;
}

// Random bytes come from a pool refilled 256 ids at a time: one getrandom call per 256 connections.
const ID_RANDOM_BYTES = 10;
const idPool = Buffer.alloc(ID_RANDOM_BYTES * 256);
let idPoolOffset = idPool.length;

/**
 * A per-connection (per-flow) id for PP2_TYPE_UNIQUE_ID: 16 bytes, ULID-like (48-bit Unix time in
 * milliseconds, big-endian, then 80 random bits), so ids sort by creation time. Log it as
 * `.toString('hex')` (32 characters), which is also how haproxy's `fc_pp_unique_id,hex` shows it.
 */
export function newUniqueId(): Buffer {
  if (idPoolOffset + ID_RANDOM_BYTES > idPool.length) {
    randomFillSync(idPool);
    idPoolOffset = 0;
  }
  const id = Buffer.allocUnsafe(6 + ID_RANDOM_BYTES);
  id.writeUIntBE(Date.now(), 0, 6);
  idPool.copy(id, 6, idPoolOffset, idPoolOffset + ID_RANDOM_BYTES);
  idPoolOffset += ID_RANDOM_BYTES;
  return id;
}

/** For error messages about input that may not be well-formed (an ip that is not a string). */
function formatEndpoint(e: Endpoint): string {
  return formatHostPort(String((e as Partial<Endpoint>).ip), String(e.port));
}

function checkPort(port: number, side: string, fail: (why: string) => never): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`the ${side} port ${String(port)} is not a whole number from 0 to 65535`);
}

function parseIp(input: string, side: string, fail: (why: string) => never): ParsedIp {
  if (typeof input !== 'string') return fail(`the ${side} address is not a string`);
  // A link-local address from the kernel may carry a zone (`fe80::1%eth0`); the header has no room for it.
  const zone = input.indexOf('%');
  const ip = zone === -1 ? input : input.slice(0, zone);
  const family = net.isIP(ip);
  if (family === 4) return { family: 4, bytes: parseIPv4(ip) };
  if (family !== 6) return fail(`the ${side} address ${JSON.stringify(input)} is not an IPv4 or IPv6 address`);
  const bytes = parseIPv6(ip);
  return isMappedIPv4(bytes) ? { family: 4, bytes: bytes.slice(12) } : { family: 6, bytes };
}

/** `ip` is a valid dotted quad (checked by net.isIP). A plain loop: split/map costs ~10x more. */
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

/** `ip` is a valid IPv6 address without zone (checked by net.isIP). One scan, no split/arrays of strings. */
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

/** `::ffff:a.b.c.d` */
function isMappedIPv4(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

function toArray(bytes: Uint8Array): number[] {
  const out = new Array<number>(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] ?? 0;
  return out;
}

function mapToIPv6(ip: ParsedIp): ParsedIp {
  const bytes = new Uint8Array(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  bytes.set(ip.bytes, 12);
  return { family: 6, bytes };
}

/** Canonical text (RFC 5952 for IPv6; `::ffff:a.b.c.d` for an IPv4 mapped into IPv6). */
function formatIp(ip: ParsedIp): string {
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
