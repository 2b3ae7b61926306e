// PROXY header building: byte-exact against fixtures laid out from the specification (not produced
// by the module), family normalisation, TLVs and the v2 length field, and the errors.
import t, { type Test } from 'tap';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Endpoint } from '../../src/api.js';
import { PortferryError } from '../../src/errors.js';
import {
  buildProxyHeader,
  crc32c,
  newUniqueId,
  PP1_MAX_LENGTH,
  PP2_SIGNATURE,
  type ProxyHeaderOptions,
} from '../../src/proxy/proxy-header.js';

const fixture = (name: string): Buffer => readFileSync(fileURLToPath(new URL(`../fixtures/proxy/${name}`, import.meta.url)));
/** A `.hex` fixture: hex digits, whitespace and `#` comments. */
const hexFixture = (name: string): Buffer =>
  Buffer.from(
    fixture(name)
      .toString('utf8')
      .split('\n')
      .map((line) => line.replace(/#.*/, '').replace(/\s+/g, ''))
      .join(''),
    'hex',
  );

const UID = Buffer.from('0123456789abcdeffedcba9876543210', 'hex');
const v4 = { source: { ip: '127.0.0.23', port: 40001 }, destination: { ip: '127.0.0.1', port: 8080 } };
const v6 = { source: { ip: '2001:db8::23', port: 40001 }, destination: { ip: '::1', port: 8443 } };

/** An independent reading of a v2 header: fixed part, addresses, and the TLV list up to `length`. */
function parseV2(t: Test, h: Buffer): { famTransport: number; length: number; tlvs: { type: number; value: Buffer; offset: number }[] } {
  t.same(h.subarray(0, 12), PP2_SIGNATURE, 'v2 signature');
  t.equal(h[12], 0x21, 'version 2, PROXY');
  const famTransport = h[13] ?? -1;
  const length = h.readUInt16BE(14);
  t.equal(h.length, 16 + length, 'length field covers everything after the first 16 bytes');
  const addressLength = famTransport >> 4 === 1 ? 12 : 36;
  const tlvs: { type: number; value: Buffer; offset: number }[] = [];
  let off = 16 + addressLength;
  while (off < h.length) {
    const type = h[off] ?? -1;
    const len = h.readUInt16BE(off + 1);
    tlvs.push({ type, value: h.subarray(off + 3, off + 3 + len), offset: off });
    off += 3 + len;
  }
  t.equal(off, h.length, 'TLVs end exactly at the end of the header');
  return { famTransport, length, tlvs };
}

t.test('v1 golden: TCP4 and TCP6', async (t) => {
  t.same(buildProxyHeader({ version: 'v1', transport: 'stream', ...v4 }), fixture('v1-tcp4.txt'));
  t.same(buildProxyHeader({ version: 'v1', transport: 'stream', ...v6 }), fixture('v1-tcp6.txt'));
  t.equal(fixture('v1-tcp4.txt').toString('latin1'), 'PROXY TCP4 127.0.0.23 127.0.0.1 40001 8080\r\n', 'fixture has its CRLF');
});

t.test('v2 golden: TCP4, UDP4, TCP6, UDP6, with and without TLVs', async (t) => {
  const cases: [string, ProxyHeaderOptions][] = [
    ['v2-tcp4.hex', { version: 'v2', transport: 'stream', ...v4 }],
    ['v2-udp4.hex', { version: 'v2', transport: 'dgram', ...v4 }],
    ['v2-tcp6.hex', { version: 'v2', transport: 'stream', ...v6 }],
    ['v2-udp6.hex', { version: 'v2', transport: 'dgram', ...v6 }],
    ['v2-tcp4-unique-id.hex', { version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: UID } }],
    ['v2-tcp4-crc32c.hex', { version: 'v2', transport: 'stream', ...v4, tlvs: { crc32c: true } }],
    ['v2-tcp4-unique-id-crc32c.hex', { version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: UID, crc32c: true } }],
    ['v2-udp4-crc32c.hex', { version: 'v2', transport: 'dgram', ...v4, tlvs: { crc32c: true } }],
    ['v2-tcp6-unique-id-crc32c.hex', { version: 'v2', transport: 'stream', ...v6, tlvs: { uniqueId: UID, crc32c: true } }],
    ['v2-udp6-unique-id-crc32c.hex', { version: 'v2', transport: 'dgram', ...v6, tlvs: { uniqueId: UID, crc32c: true } }],
  ];
  for (const [name, options] of cases) {
    const expected = hexFixture(name);
    t.ok(expected.length >= 28, `${name} read`);
    t.same(buildProxyHeader(options), expected, name);
  }
  // TLVs off (explicitly) is the bare header.
  t.same(buildProxyHeader({ version: 'v2', transport: 'stream', ...v4, tlvs: { crc32c: false } }), hexFixture('v2-tcp4.hex'));
});

t.test('v2 TLVs: the length field counts them and the CRC covers the whole header', async (t) => {
  const h = buildProxyHeader({ version: 'v2', transport: 'dgram', ...v6, tlvs: { uniqueId: UID, crc32c: true } });
  const parsed = parseV2(t, h);
  t.equal(parsed.famTransport, 0x22);
  t.equal(parsed.length, 36 + 19 + 7);
  t.same(
    parsed.tlvs.map((x) => x.type),
    [0x05, 0x03],
  );
  t.same(parsed.tlvs[0]?.value, UID);
  const crcTlv = parsed.tlvs[1];
  if (crcTlv === undefined) throw new Error('no CRC TLV');
  const stored = crcTlv.value.readUInt32BE(0);
  const zeroed = Buffer.from(h);
  zeroed.writeUInt32BE(0, crcTlv.offset + 3);
  t.equal(stored, crc32c(zeroed), 'stored CRC = CRC of the header with the field zeroed');
  // One flipped bit anywhere changes the checksum.
  zeroed[20] = (zeroed[20] ?? 0) ^ 0x01;
  t.not(stored, crc32c(zeroed));

  const max = Buffer.alloc(128, 0xab);
  const big = parseV2(t, buildProxyHeader({ version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: max } }));
  t.equal(big.tlvs[0]?.value.length, 128, 'a 128-byte UNIQUE_ID fits');
  const empty = parseV2(t, buildProxyHeader({ version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: Buffer.alloc(0) } }));
  t.equal(empty.tlvs[0]?.value.length, 0, 'an empty UNIQUE_ID is still a TLV');
});

t.test('crc32c: Castagnoli known answers, not zlib CRC-32', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  t.not(crc32c(Buffer.from('123456789')), 0xcbf43926, 'not the zlib polynomial');
  t.equal(crc32c(new Uint8Array(0)), 0);
  // RFC 3720, appendix B.4.
  t.equal(crc32c(new Uint8Array(32)), 0x8a9136aa, '32 zero bytes');
  t.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43, '32 0xff bytes');
  t.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e, 'ascending 0..31');
  t.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c, 'descending 31..0');
  const a = Buffer.from('portferry ');
  const b = Buffer.from('PROXY v2');
  t.equal(crc32c(b, crc32c(a)), crc32c(Buffer.concat([a, b])), 'the seed continues a running CRC');
});

t.test('IPv4-mapped IPv6 is written as IPv4; mixed families are normalised', async (t) => {
  const mapped = { source: { ip: '::ffff:127.0.0.23', port: 40001 }, destination: { ip: '::ffff:127.0.0.1', port: 8080 } };
  t.same(buildProxyHeader({ version: 'v1', transport: 'stream', ...mapped }), fixture('v1-tcp4.txt'), 'v1 → TCP4');
  t.same(buildProxyHeader({ version: 'v2', transport: 'stream', ...mapped }), hexFixture('v2-tcp4.hex'), 'v2 → 0x11');
  t.same(buildProxyHeader({ version: 'v2', transport: 'dgram', ...mapped }), hexFixture('v2-udp4.hex'), 'v2 dgram → 0x12');
  const hexMapped = { source: { ip: '::FFFF:7f00:17', port: 40001 }, destination: { ip: '127.0.0.1', port: 8080 } };
  t.same(buildProxyHeader({ version: 'v2', transport: 'stream', ...hexMapped }), hexFixture('v2-tcp4.hex'), 'hex-written mapped form too');
  const oneMapped = { source: { ip: '::ffff:127.0.0.23', port: 40001 }, destination: { ip: '127.0.0.1', port: 8080 } };
  t.same(buildProxyHeader({ version: 'v1', transport: 'stream', ...oneMapped }), fixture('v1-tcp4.txt'), 'one side mapped');

  // A true IPv6 side and an IPv4 side: the IPv4 one is mapped into IPv6.
  const mixed = { source: { ip: '2001:db8::23', port: 40001 }, destination: { ip: '127.0.0.1', port: 8080 } };
  t.equal(
    buildProxyHeader({ version: 'v1', transport: 'stream', ...mixed }).toString('latin1'),
    'PROXY TCP6 2001:db8::23 ::ffff:127.0.0.1 40001 8080\r\n',
  );
  const h = buildProxyHeader({ version: 'v2', transport: 'stream', ...mixed });
  t.equal(h[13], 0x21, 'TCP6');
  t.equal(h.subarray(32, 48).toString('hex'), '00000000000000000000ffff7f000001', 'destination ::ffff:127.0.0.1');
  const reversed = buildProxyHeader({ version: 'v1', transport: 'stream', source: { ip: '127.0.0.23', port: 1 }, destination: { ip: '::1', port: 2 } });
  t.equal(reversed.toString('latin1'), 'PROXY TCP6 ::ffff:127.0.0.23 ::1 1 2\r\n');
});

t.test('v1 writes canonical IPv6 text and drops a zone', async (t) => {
  const line = (src: string, dst = '::1'): string =>
    buildProxyHeader({ version: 'v1', transport: 'stream', source: { ip: src, port: 1 }, destination: { ip: dst, port: 2 } }).toString('latin1');
  t.equal(line('2001:0DB8:0000:0000:0000:0000:0000:0023'), 'PROXY TCP6 2001:db8::23 ::1 1 2\r\n');
  t.equal(line('fe80::1%eth0', 'fe80::2%eth0'), 'PROXY TCP6 fe80::1 fe80::2 1 2\r\n');
  t.equal(line('1:0:0:2:0:0:0:3'), 'PROXY TCP6 1:0:0:2::3 ::1 1 2\r\n', 'the longest zero run is compressed');
  t.equal(line('1:0:0:2:0:0:3:4'), 'PROXY TCP6 1::2:0:0:3:4 ::1 1 2\r\n', 'the first run on a tie');
  t.equal(line('1:0:2:3:4:5:6:7'), 'PROXY TCP6 1:0:2:3:4:5:6:7 ::1 1 2\r\n', 'a single zero group is not compressed');
  t.equal(line('::'), 'PROXY TCP6 :: ::1 1 2\r\n');
  t.equal(line('64:ff9b::192.0.2.33'), 'PROXY TCP6 64:ff9b::c000:221 ::1 1 2\r\n', 'embedded IPv4 notation');
  const longest = buildProxyHeader({
    version: 'v1',
    transport: 'stream',
    source: { ip: 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255', port: 65535 },
    destination: { ip: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe', port: 65535 },
  });
  t.equal(longest.length, 104, 'the longest possible line');
  t.ok(longest.length <= PP1_MAX_LENGTH);
});

t.test('errors: PF_PROXY_HEADER, naming the input', async (t) => {
  const expectError = (options: ProxyHeaderOptions, match: RegExp, what: string): void => {
    try {
      buildProxyHeader(options);
      t.fail(`${what}: no error`);
    } catch (e) {
      t.ok(e instanceof PortferryError, `${what}: a PortferryError`);
      t.equal((e as PortferryError).code, 'PF_PROXY_HEADER', `${what}: code`);
      t.match((e as PortferryError).message, match, `${what}: message`);
      t.ok((e as PortferryError).hint.length > 0, `${what}: hint`);
    }
  };
  expectError({ version: 'v1', transport: 'dgram', ...v4 }, /PROXY v1 carries only TCP/, 'v1 dgram');
  expectError({ version: 'v1', transport: 'dgram', ...v4 }, /127\.0\.0\.23:40001 -> 127\.0\.0\.1:8080/, 'v1 dgram names the addresses');
  expectError({ version: 'v1', transport: 'stream', ...v4, tlvs: { uniqueId: UID } }, /v1 has no TLVs/, 'v1 with a unique id');
  expectError({ version: 'v1', transport: 'stream', ...v4, tlvs: { crc32c: true } }, /v1 has no TLVs/, 'v1 with crc32c');
  expectError({ version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: Buffer.alloc(129) } }, /129 bytes/, 'unique id too long');
  const bad = (source: Endpoint): ProxyHeaderOptions => ({ version: 'v2', transport: 'stream', source, destination: v4.destination });
  expectError(bad({ ip: 'localhost', port: 1 }), /"localhost" is not an IPv4 or IPv6 address/, 'host name');
  expectError(bad({ ip: '127.0.0.256', port: 1 }), /not an IPv4 or IPv6/, 'bad IPv4');
  expectError(bad({ ip: '127.0.0.1', port: 65536 }), /source port 65536/, 'port too large');
  expectError(bad({ ip: '127.0.0.1', port: 1.5 }), /source port 1\.5/, 'port not whole');
  expectError({ version: 'v3' as 'v2', transport: 'stream', ...v4 }, /unknown version/, 'unknown version');
  // v1 with TLVs explicitly off is fine.
  t.same(buildProxyHeader({ version: 'v1', transport: 'stream', ...v4, tlvs: { crc32c: false } }), fixture('v1-tcp4.txt'));
});

t.test('newUniqueId: 16 bytes, distinct, time-ordered prefix, printable', async (t) => {
  const before = Date.now();
  const ids = Array.from({ length: 600 }, () => newUniqueId()); // more than one refill of the random pool
  const after = Date.now();
  t.ok(ids.every((id) => id.length === 16), 'all 16 bytes');
  const hex = ids.map((id) => id.toString('hex'));
  t.equal(new Set(hex).size, ids.length, 'all distinct');
  t.ok(hex.every((h) => /^[0-9a-f]{32}$/.test(h)), 'printable as 32 hex characters');
  const times = ids.map((id) => id.readUIntBE(0, 6));
  t.ok(times.every((ms) => ms >= before && ms <= after), 'the first 6 bytes are the creation time in ms');
  t.ok(times.every((ms, i) => i === 0 || ms >= (times[i - 1] ?? 0)), 'non-decreasing');
  const randomParts = new Set(ids.map((id) => id.subarray(6).toString('hex')));
  t.equal(randomParts.size, ids.length, 'the random parts differ too');
  const h = buildProxyHeader({ version: 'v2', transport: 'stream', ...v4, tlvs: { uniqueId: ids[0] ?? Buffer.alloc(0) } });
  t.equal(h.length, 28 + 19);
});

t.test('IPv6 parsing and formatting agree with the system (inet_pton/inet_ntop) on every zero pattern', async (t) => {
  let checked = 0;
  for (let pattern = 0; pattern < 256; pattern++) {
    // Group g is zero when bit g of the pattern is set, else a distinct non-zero value.
    const groups = Array.from({ length: 8 }, (_, g) => ((pattern >> g) & 1 ? 0 : (g + 1) * 0x1011));
    const full = groups.map((g) => g.toString(16).toUpperCase().padStart(4, '0')).join(':');
    const canonical = new net.SocketAddress({ address: full, family: 'ipv6' }).address;
    const expectedBytes = Buffer.alloc(16);
    groups.forEach((g, i) => expectedBytes.writeUInt16BE(g, 2 * i));
    // glibc writes the deprecated IPv4-compatible form (first 96 bits zero) as `::a.b.c.d`; RFC 5952
    // keeps hex there (`::7077:8088`), as we do. Both parse the same; those 2 patterns are left out.
    if (canonical.includes('.')) continue;
    for (const input of [full, canonical]) {
      const v1 = buildProxyHeader({ version: 'v1', transport: 'stream', source: { ip: input, port: 1 }, destination: { ip: '::1', port: 2 } });
      const v2 = buildProxyHeader({ version: 'v2', transport: 'stream', source: { ip: input, port: 1 }, destination: { ip: '::1', port: 2 } });
      if (v1.toString('latin1') !== `PROXY TCP6 ${canonical} ::1 1 2\r\n` || !v2.subarray(16, 32).equals(expectedBytes)) {
        t.fail(`${input}: v1 ${JSON.stringify(v1.toString('latin1'))}, v2 ${v2.subarray(16, 32).toString('hex')}`);
      }
      checked++;
    }
  }
  t.equal(checked, 508, '254 patterns, written in full and compressed');
});

// The docker shim runs one process per published port and most never send a header: the library
// is loaded on the first header built, not when the data path is imported.
t.test('proxy-protocol-js is loaded on the first header, not at import', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const dist = (p: string): string => fileURLToPath(new URL(`../../dist/${p}`, import.meta.url));
  const script = [
    "import { createRequire } from 'node:module';",
    'const cache = createRequire(import.meta.url).cache;',
    "const loaded = () => Object.keys(cache).some((k) => k.includes('proxy-protocol-js'));",
    'await import(process.argv[1]);',
    'const atImport = loaded();',
    'const m = await import(process.argv[2]);',
    "m.buildProxyHeader({ version: 'v1', transport: 'stream', source: { ip: '1.2.3.4', port: 1 }, destination: { ip: '5.6.7.8', port: 2 } });",
    'console.log(JSON.stringify({ atImport, afterHeader: loaded() }));',
  ].join('\n');
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, dist('index.js'), dist('proxy/proxy-header.js')], { encoding: 'utf8' });
  t.equal(r.status, 0, `the probe ran (${r.stderr.trim()})`);
  t.same(JSON.parse(r.stdout), { atImport: false, afterHeader: true }, 'not loaded by importing the library; loaded by the first header');
});
