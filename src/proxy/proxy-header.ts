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
//
// proxy-protocol-js is loaded on the first header built, not at startup: most processes (the
// docker shim runs one per published port) never send a header, and loading it costs ~7 ms.
import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as ProxyProtocolJs from 'proxy-protocol-js';
import { formatEndpoint, formatIP, isMappedIPv4, mapToIPv6, parseIP, type ParsedIP } from '../addr.js';
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

let lib: typeof ProxyProtocolJs | null = null;
function pp(): typeof ProxyProtocolJs {
  return (lib ??= createRequire(import.meta.url)('proxy-protocol-js') as typeof ProxyProtocolJs);
}

const V2_FIXED_LENGTH = 16; // signature, version/command, family/transport, length
const V2_ADDRESS_LENGTH = { 4: 12, 6: 36 } as const;

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
    const { V1ProxyProtocol, INETProtocol, Peer } = pp();
    const line = new V1ProxyProtocol(
      src.family === 4 ? INETProtocol.TCP4 : INETProtocol.TCP6,
      new Peer(formatIP(src), o.source.port),
      new Peer(formatIP(dst), o.destination.port),
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
  const { Command, IPv4Address, IPv4ProxyAddress, IPv6Address, IPv6ProxyAddress, TransportProtocol, V2ProxyProtocol } = pp();
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

function checkPort(port: number, side: string, fail: (why: string) => never): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`the ${side} port ${String(port)} is not a whole number from 0 to 65535`);
}

function parseIp(input: string, side: string, fail: (why: string) => never): ParsedIP {
  if (typeof input !== 'string') return fail(`the ${side} address is not a string`);
  // A link-local address from the kernel may carry a zone (`fe80::1%eth0`); the header has no room for it.
  const zone = input.indexOf('%');
  const ip = parseIP(zone === -1 ? input : input.slice(0, zone));
  if (ip === null) return fail(`the ${side} address ${JSON.stringify(input)} is not an IPv4 or IPv6 address`);
  return isMappedIPv4(ip.bytes) ? { family: 4, bytes: ip.bytes.slice(12) } : ip;
}

function toArray(bytes: Uint8Array): number[] {
  const out = new Array<number>(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] ?? 0;
  return out;
}
