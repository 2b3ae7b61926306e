// PROXY protocol end to end: client → portferry → a real receiver (nginx, haproxy, unbound), and
// our own capture servers for the exact bytes. The receiver must see the client's real address.
import t from 'tap';
import dgram from 'node:dgram';
import net from 'node:net';
import type { Mapping } from '../../src/api.js';
import { buildConnectionHeader } from '../../src/proxy/header-hook.js';
import { PP2_SIGNATURE } from '../../src/proxy/proxy-header.js';
import { skipUnless } from '../helpers/env.js';
import { testMapping } from '../helpers/mapping.js';
import { freePort, startManager, startServer, until } from '../helpers/net.js';
import {
  HAPROXY_REQUEST,
  dnsQuery,
  parseAddressLine,
  parseDnsReply,
  parseHaproxyReply,
  startHaproxyReceiver,
  startNginxProxyReceiver,
  startUnboundProxyReceiver,
  tcpExchange,
  udpExchange,
} from '../helpers/receivers.js';

const CLIENT = '127.0.0.23';

function via(receiverPort: number, over: Partial<Mapping> = {}): Mapping {
  return testMapping({ containerPort: receiverPort, ...over });
}

for (const version of ['v1', 'v2'] as const) {
  t.test(`nginx ${version}: the receiver reports the client's exact address and port`, skipUnless({ tools: ['nginx'] }), async (t) => {
    const nginx = await startNginxProxyReceiver();
    t.teardown(() => nginx.stop());
    const fwd = await startManager(t.teardown, [via(nginx.port, { proxyProtocol: version })]);
    const localPort = await freePort(CLIENT);
    const r = await tcpExchange({ host: '127.0.0.1', port: fwd.port(), data: Buffer.alloc(0), localAddress: CLIENT, localPort });
    t.same(parseAddressLine(r.data.toString()), { ip: CLIENT, port: localPort }, nginx.output());
  });

  t.test(`haproxy ${version}: the receiver reports the client's exact address and port`, skipUnless({ tools: ['haproxy'] }), async (t) => {
    const haproxy = await startHaproxyReceiver();
    t.teardown(() => haproxy.stop());
    const fwd = await startManager(t.teardown, [via(haproxy.port, { proxyProtocol: version })]);
    const localPort = await freePort(CLIENT);
    const r = await tcpExchange({ host: '127.0.0.1', port: fwd.port(), data: HAPROXY_REQUEST, localAddress: CLIENT, localPort });
    const reply = parseHaproxyReply(r.data);
    t.equal(reply?.status, 200, haproxy.output());
    t.same(reply?.source, { ip: CLIENT, port: localPort });
  });
}

t.test('haproxy v2 over IPv6 (::1): TCP6 with the client address', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver({ host: '::1' });
  t.teardown(() => haproxy.stop());
  const fwd = await startManager(t.teardown, [testMapping({ hostIP: '::1', containerIP: '::1', containerPort: haproxy.port, proxyProtocol: 'v2' })]);
  const localPort = await freePort('::1');
  const r = await tcpExchange({ host: '::1', port: fwd.port(), data: HAPROXY_REQUEST, localAddress: '::1', localPort });
  t.same(parseHaproxyReply(r.data)?.source, { ip: '::1', port: localPort });
});

t.test('a mapping on every address (0.0.0.0 and ::) reached over IPv4 reports a plain IPv4 address', skipUnless({ tools: ['nginx'] }), async (t) => {
  const nginx = await startNginxProxyReceiver();
  t.teardown(() => nginx.stop());
  const port = await freePort('0.0.0.0');
  const fwd = await startManager(t.teardown, [testMapping({ hostIP: null, hostPort: port, containerPort: nginx.port, proxyProtocol: 'v2' })]);
  t.equal(fwd.manager.listeners().length, 2);
  const r = await tcpExchange({ host: '127.0.0.1', port, data: Buffer.alloc(0), localAddress: CLIENT });
  t.match(r.data.toString(), /^127\.0\.0\.23:\d+\n$/, 'no ::ffff: prefix');
  const r6 = await tcpExchange({ host: '::1', port, data: Buffer.alloc(0) });
  t.match(r6.data.toString(), /^::1:\d+\n$/, 'and IPv6 over the :: listener');
});

t.test('a socket accepted on a dual-stack :: listener (IPv4-mapped peer) gets a TCP4 header', async (t) => {
  const seen: string[] = [];
  const server = net.createServer((s) => {
    const header = buildConnectionHeader({ mapping: testMapping({ proxyProtocol: 'v1' }), host: { ip: '::', port: 0 }, container: { ip: '127.0.0.1', port: 1 } }, s, null);
    seen.push(`${s.remoteAddress}|${header?.toString('latin1') ?? ''}`);
    s.destroy();
  });
  await new Promise<void>((r) => server.listen({ host: '::', port: 0, ipv6Only: false }, () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const c = net.connect({ host: '127.0.0.1', port, localAddress: CLIENT });
  c.on('error', () => {});
  await until(() => seen.length === 1, 5000, 'the connection');
  const [remote, header] = (seen[0] ?? '').split('|');
  t.equal(remote, '::ffff:127.0.0.23', 'the listener saw an IPv4-mapped address');
  t.match(header, /^PROXY TCP4 127\.0\.0\.23 127\.0\.0\.1 \d+ \d+\r\n$/, 'written as TCP4');
});

t.test('a client that sends its request at once: header first, request intact (haproxy)', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver();
  t.teardown(() => haproxy.stop());
  const fwd = await startManager(t.teardown, [via(haproxy.port, { proxyProtocol: 'v2' })]);
  // Write before the connection is even established: the bytes leave with the handshake's ACK.
  const result = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ host: '127.0.0.1', port: fwd.port(), localAddress: CLIENT });
    s.write(HAPROXY_REQUEST);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
  const reply = parseHaproxyReply(result);
  t.equal(reply?.status, 200, 'haproxy parsed header then request');
  t.equal(reply?.source?.ip, CLIENT);
});

t.test('the header arrives in one piece, before any client byte, exactly once', async (t) => {
  const firsts: Buffer[] = [];
  const server = await startServer(t.teardown, (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      firsts.push(Buffer.concat(chunks));
      s.end();
    });
  });
  const fwd = await startManager(t.teardown, [via(server.port, { proxyProtocol: 'v1' })]);
  const s = net.connect({ host: '127.0.0.1', port: fwd.port(), localAddress: CLIENT });
  s.on('error', () => {});
  s.write('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'); // a client's own PROXY line is payload, never trusted
  s.end('payload');
  await until(() => firsts.length === 1, 5000, 'the server to see EOF');
  const text = firsts[0]?.toString('latin1') ?? '';
  const lines = text.split('\r\n');
  t.match(lines[0], new RegExp(`^PROXY TCP4 ${CLIENT.replace(/\./g, '\\.')} 127\\.0\\.0\\.1 \\d+ ${fwd.port()}$`), 'our header first, with the real client');
  t.equal(lines[1], 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2', "the client's fake header follows as payload");
  t.equal(lines[2], 'payload');
});

t.test('no proxyProtocol: no header (regression guard)', async (t) => {
  const got: Buffer[] = [];
  const server = await startServer(t.teardown, (s) => {
    s.on('data', (c: Buffer) => got.push(c));
    s.on('end', () => s.end());
  });
  const fwd = await startManager(t.teardown, [via(server.port)]);
  const s = net.connect({ host: '127.0.0.1', port: fwd.port() });
  s.on('error', () => {});
  s.end('exactly this');
  await until(() => Buffer.concat(got).length >= 12, 5000, 'the payload');
  t.equal(Buffer.concat(got).toString(), 'exactly this');
});

t.test('UNIQUE_ID and CRC32C TLVs: haproxy accepts the header and sees the id we logged', skipUnless({ tools: ['haproxy'] }), async (t) => {
  const haproxy = await startHaproxyReceiver();
  t.teardown(() => haproxy.stop());
  const fwd = await startManager(t.teardown, [via(haproxy.port, { proxyProtocol: 'v2', proxyTlvs: { uniqueId: true, crc32c: true } })]);
  const r = await tcpExchange({ host: '127.0.0.1', port: fwd.port(), data: HAPROXY_REQUEST, localAddress: CLIENT });
  const reply = parseHaproxyReply(r.data);
  t.equal(reply?.status, 200, 'accepted with a CRC32C TLV');
  t.equal(reply?.source?.ip, CLIENT);
  t.equal(reply?.uniqueId.length, 32, 'haproxy saw a 16-byte unique id');
  await until(() => fwd.records.some((x) => x['msg'] === 'connection closed'), 5000, 'the connection log');
  const logged = fwd.records.find((x) => x['msg'] === 'connection closed')?.['uniqueId'];
  t.equal(logged, reply?.uniqueId, 'the same id is in our log line');
});

t.test('UDP v2: each datagram carries a header with the client, the payload follows exactly, replies carry none', async (t) => {
  const backend = dgram.createSocket('udp4');
  const seen: Buffer[] = [];
  backend.on('message', (msg, rinfo) => {
    seen.push(msg);
    const len = msg.readUInt16BE(14);
    backend.send(msg.subarray(16 + len), rinfo.port, rinfo.address); // echo the payload only
  });
  await new Promise<void>((r) => backend.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => backend.close());
  const fwd = await startManager(t.teardown, [testMapping({ protocol: 'udp', containerPort: backend.address().port, proxyProtocol: 'v2' })]);
  const client = dgram.createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, CLIENT, () => r()));
  t.teardown(() => client.close());
  const replies: Buffer[] = [];
  client.on('message', (m) => replies.push(m));
  const payloads = [Buffer.from('one'), Buffer.alloc(0), Buffer.alloc(1400, 9)];
  for (const p of payloads) {
    client.send(p, fwd.port(), '127.0.0.1');
    await until(() => replies.length === seen.length && seen.length > 0 && replies.length >= payloads.indexOf(p) + 1, 5000, 'the reply');
  }
  t.equal(seen.length, 3);
  seen.forEach((msg, i) => {
    t.ok(msg.subarray(0, 12).equals(PP2_SIGNATURE), `datagram ${i}: v2 signature`);
    t.equal(msg[12], 0x21, 'PROXY command');
    t.equal(msg[13], 0x12, 'UDP over IPv4');
    t.equal([...msg.subarray(16, 20)].join('.'), CLIENT, 'source address is the client');
    t.equal(msg.readUInt16BE(24), client.address().port, 'source port is the client port');
    t.equal(msg.readUInt16BE(26), fwd.port(), 'destination port is the host port');
    t.ok(msg.subarray(16 + msg.readUInt16BE(14)).equals(payloads[i] as Buffer), `datagram ${i}: exact payload`);
  });
  t.same(replies.map((r) => r.toString('hex')), payloads.map((p) => p.toString('hex')), 'replies are the bare payloads');
});

t.test('UDP v2 to unbound: DNS answered for the allowed client, REFUSED for another', skipUnless({ tools: ['unbound'] }), async (t) => {
  const unbound = await startUnboundProxyReceiver({ allowed: '127.0.0.23', refused: '127.0.0.24' });
  t.teardown(() => unbound.stop());
  const fwd = await startManager(t.teardown, [testMapping({ protocol: 'udp', containerPort: unbound.port, proxyProtocol: 'v2' })]);
  const ok = await udpExchange({ host: '127.0.0.1', port: fwd.port(), data: dnsQuery(unbound.name, 7), localAddress: unbound.allowed, timeoutMs: 5000 });
  t.ok(ok, `an answer came back (${unbound.output().slice(-300)})`);
  const a = parseDnsReply(ok as Buffer);
  t.equal(a.rcode, 0, 'NOERROR');
  t.same(a.answers, [unbound.answer], 'the local-data record');
  const no = await udpExchange({ host: '127.0.0.1', port: fwd.port(), data: dnsQuery(unbound.name, 8), localAddress: unbound.refused, timeoutMs: 5000 });
  t.ok(no, 'a reply came back');
  t.equal(parseDnsReply(no as Buffer).rcode, 5, 'REFUSED: unbound saw the refused client address, not ours');
});
