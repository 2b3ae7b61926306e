// Headers built by src/proxy/proxy-header.ts, sent straight (no portferry in between) to real
// receivers on loopback: nginx, haproxy and unbound must read from them exactly the client address
// we wrote. The client writes header and request in ONE write, as the listeners do.
import t from 'tap';
import { crc32 } from 'node:zlib';
import { skipUnless } from '../helpers/env.js';
import {
  dnsQuery,
  HAPROXY_REQUEST,
  parseAddressLine,
  parseDnsReply,
  parseHaproxyReply,
  startHaproxyReceiver,
  startNginxProxyReceiver,
  startUnboundProxyReceiver,
  tcpExchange,
  udpExchange,
  type Receiver,
} from '../helpers/receivers.js';
import { buildProxyHeader, newUniqueId, type ProxyHeaderOptions } from '../../src/proxy/proxy-header.js';

const CLIENT4 = { ip: '127.0.0.23', port: 40001 };
const CLIENT6 = { ip: '2001:db8::23', port: 40002 };

const header = (
  r: Receiver,
  version: 'v1' | 'v2',
  source: { ip: string; port: number },
  tlvs?: ProxyHeaderOptions['tlvs'],
): Buffer =>
  buildProxyHeader({ version, transport: 'stream', source, destination: { ip: r.host, port: r.port }, ...(tlvs === undefined ? {} : { tlvs }) });

t.test('nginx stream receiver, IPv4', skipUnless({ tools: ['nginx'] }), async (t) => {
  const nginx = await startNginxProxyReceiver();
  t.teardown(() => nginx.stop());
  const ask = async (h: Buffer): Promise<string> => {
    // The header alone: `return` never reads client bytes, and closing with unread bytes would
    // reset the connection (and could lose the reply). Header + request in one write is the
    // haproxy test's job.
    const reply = await tcpExchange({ host: nginx.host, port: nginx.port, data: h });
    t.equal(reply.error, undefined, 'no connection error');
    return reply.data.toString('latin1');
  };
  for (const version of ['v1', 'v2'] as const) {
    t.equal(await ask(header(nginx, version, CLIENT4)), '127.0.0.23:40001\n', `${version}: exact source address and port`);
  }
  // TLVs are skipped by the length field: nginx 1.22 only reads the addresses, so a wrong length would garble it.
  t.equal(
    await ask(header(nginx, 'v2', CLIENT4, { uniqueId: newUniqueId(), crc32c: true })),
    '127.0.0.23:40001\n',
    'v2 with UNIQUE_ID and CRC32C TLVs',
  );
  const mapped = { ip: '::ffff:127.0.0.23', port: 40001 };
  for (const version of ['v1', 'v2'] as const) {
    t.equal(await ask(header(nginx, version, mapped)), '127.0.0.23:40001\n', `${version}: IPv4-mapped source reported as plain IPv4`);
  }
  // Control: the receiver really reads the header (a different source gives a different answer).
  t.equal(await ask(header(nginx, 'v2', { ip: '127.0.0.99', port: 5 })), '127.0.0.99:5\n');
});

t.test('nginx stream receiver, IPv6 (::1)', skipUnless({ tools: ['nginx'] }), async (t) => {
  const nginx = await startNginxProxyReceiver({ host: '::1' });
  t.teardown(() => nginx.stop());
  for (const version of ['v1', 'v2'] as const) {
    const h = header(nginx, version, CLIENT6);
    if (version === 'v1') t.equal(h.toString('latin1', 0, 11), 'PROXY TCP6 ', 'v1 TCP6');
    else t.equal(h[13], 0x21, 'v2 TCP6');
    const reply = await tcpExchange({ host: nginx.host, port: nginx.port, data: h });
    t.same(parseAddressLine(reply.data.toString('latin1')), CLIENT6, `${version}: exact IPv6 source`);
  }
});

t.test('haproxy receiver, IPv4', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver();
  t.teardown(() => haproxy.stop());
  const ask = async (h: Buffer): Promise<ReturnType<typeof parseHaproxyReply>> => {
    const reply = await tcpExchange({ host: haproxy.host, port: haproxy.port, data: Buffer.concat([h, HAPROXY_REQUEST]) });
    return parseHaproxyReply(reply.data);
  };
  for (const version of ['v1', 'v2'] as const) {
    const reply = await ask(header(haproxy, version, CLIENT4));
    t.equal(reply?.status, 200, `${version}: answered`);
    t.same(reply?.source, CLIENT4, `${version}: exact source address and port`);
    t.equal(reply?.uniqueId, '', `${version}: no UNIQUE_ID`);
  }
  const id = newUniqueId();
  const withId = await ask(header(haproxy, 'v2', CLIENT4, { uniqueId: id }));
  t.same(withId?.source, CLIENT4);
  t.equal(withId?.uniqueId, id.toString('hex'), 'haproxy reads our UNIQUE_ID TLV (fc_pp_unique_id)');
  const mapped = await ask(header(haproxy, 'v2', { ip: '::ffff:127.0.0.23', port: 40001 }));
  t.same(mapped?.source, CLIENT4, 'IPv4-mapped source reported as plain IPv4');
});

t.test('haproxy checks the CRC32C TLV: a corrupted header is refused', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver();
  t.teardown(() => haproxy.stop());
  const send = (h: Buffer): ReturnType<typeof tcpExchange> =>
    tcpExchange({ host: haproxy.host, port: haproxy.port, data: Buffer.concat([h, HAPROXY_REQUEST]) });
  // Byte 19 is the last octet of the IPv4 source address (23): corrupted, it reads 22.
  const corrupt = (h: Buffer): Buffer => {
    const c = Buffer.from(h);
    t.equal(c[19], 23, 'byte 19 is the last source octet');
    c[19] = 22;
    return c;
  };

  const good = await send(header(haproxy, 'v2', CLIENT4, { crc32c: true, uniqueId: newUniqueId() }));
  t.same(parseHaproxyReply(good.data)?.source, CLIENT4, 'a header with a correct CRC32C is accepted');

  const bad = await send(corrupt(header(haproxy, 'v2', CLIENT4, { crc32c: true })));
  t.equal(bad.data.length, 0, 'one corrupted byte under CRC32C: closed without a reply');
  t.not(bad.error, 'ETIMEDOUT', 'closed by haproxy, not by our timeout');

  // Control: the same corruption without a CRC32C TLV is a valid header for another address.
  const unchecked = await send(corrupt(header(haproxy, 'v2', CLIENT4)));
  t.same(parseHaproxyReply(unchecked.data)?.source, { ip: '127.0.0.22', port: 40001 }, 'without CRC32C the corruption goes through');

  // zlib's CRC-32 in the CRC32C field is refused too: the polynomial matters.
  const h = header(haproxy, 'v2', CLIENT4, { crc32c: true });
  const zeroed = Buffer.from(h);
  zeroed.writeUInt32BE(0, h.length - 4);
  zeroed.writeUInt32BE(crc32(zeroed), h.length - 4);
  const wrongPolynomial = await send(zeroed);
  t.equal(wrongPolynomial.data.length, 0, 'a zlib CRC-32 is refused');
});

t.test('haproxy receiver, IPv6 (::1) with v2 TCP6', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver({ host: '::1' });
  t.teardown(() => haproxy.stop());
  const h = header(haproxy, 'v2', CLIENT6, { crc32c: true });
  t.equal(h[13], 0x21, 'TCP6');
  const reply = await tcpExchange({ host: haproxy.host, port: haproxy.port, data: Buffer.concat([h, HAPROXY_REQUEST]) });
  t.same(parseHaproxyReply(reply.data)?.source, CLIENT6, 'exact IPv6 source');
});

t.test('unbound (UDP, v2 DGRAM): access control sees the address in the header', skipUnless({ tools: ['unbound'] }), async (t) => {
  const unbound = await startUnboundProxyReceiver();
  t.teardown(() => unbound.stop());
  const query = async (source: string, id: number): Promise<ReturnType<typeof parseDnsReply> | null> => {
    const h = buildProxyHeader({
      version: 'v2',
      transport: 'dgram',
      source: { ip: source, port: 40053 },
      destination: { ip: unbound.host, port: unbound.port },
    });
    t.equal(h[13], 0x12, 'UDP4');
    const reply = await udpExchange({ host: unbound.host, port: unbound.port, data: Buffer.concat([h, dnsQuery(unbound.name, id)]) });
    return reply === null ? null : parseDnsReply(reply);
  };
  const allowed = await query(unbound.allowed, 0x1111);
  t.ok(allowed !== null, 'an answer');
  t.equal(allowed?.id, 0x1111);
  t.equal(allowed?.isResponse, true);
  t.equal(allowed?.rcode, 0, `source ${unbound.allowed}: NOERROR`);
  t.same(allowed?.answers, [unbound.answer], 'the local-data record');

  const refused = await query(unbound.refused, 0x2222);
  t.equal(refused?.id, 0x2222);
  t.equal(refused?.rcode, 5, `source ${unbound.refused}: REFUSED`);
  t.same(refused?.answers, []);
});
