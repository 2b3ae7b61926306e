// The Node-internals fast paths (src/internals.ts): each must be ON on the Node we ship for, and
// each must really be used by the data path — these tests fail when one silently turns off. Then
// each fallback is exercised (last: turning a path off is process-wide).
import t, { type Test } from 'tap';
import dgram from 'node:dgram';
import { spawn } from 'node:child_process';
import { disableFastPath, fixReceivedUdp6Connect, internals, selfTest } from '../../src/internals.js';
import { createTopology, type Topology } from '../../src/netns/topology.js';
import { NetnsDialer } from '../../src/netns/helper.js';
import { silentLogger } from '../../src/log.js';
import type { UdpChannel } from '../../src/proxy/dialer.js';
import { skipUnless } from '../helpers/env.js';
import { testMapping } from '../helpers/mapping.js';
import { echoRoundTrip, echoServer, randomPayload, sha256, startManager } from '../helpers/net.js';
import { nsServer } from '../netns/util.js';

const MiB = 1024 * 1024;
const gate = skipUnless({ root: true, tools: ['ip', 'nsenter'] });

let topo: Topology | null = null;
async function world(): Promise<Topology> {
  topo ??= await createTopology({ mode: 'root', ipv6: true });
  return topo;
}
t.teardown(() => topo?.destroy());

/** Sends a 4 MiB echo through a forwarder; returns whether it came back intact and the relay's bulk count. */
async function bulkEcho(t: Test): Promise<{ intact: boolean; bulk: number }> {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port })]);
  const payload = randomPayload(4 * MiB);
  const r = await echoRoundTrip(fwd.port(), payload);
  await new Promise((res) => setTimeout(res, 50));
  const rec = fwd.records.find((x) => x['msg'] === 'connection closed');
  return { intact: sha256(r.received) === sha256(payload), bulk: Number(rec?.['bulk']) };
}

/** A udp6 socket bound on ::1 by a child process and received here over IPC (as the netns helper hands it over). */
function receiveUdp6Socket(t: { teardown: (fn: () => unknown) => void }): Promise<dgram.Socket> {
  const script = "const s=require('dgram').createSocket('udp6');s.bind(0,'::1',()=>process.send('udp',s,()=>process.exit(0)))";
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    child.once('message', (_m, handle) => (handle instanceof dgram.Socket ? resolve(handle) : reject(new Error('no dgram socket received'))));
    child.once('exit', (code) => reject(new Error(`child exited ${code} before handing over a socket`)));
  });
}

/** An IPv6 UDP channel through the namespace dialer to an echo server on ::1 inside ctr. */
async function udp6Channel(t: Test): Promise<UdpChannel> {
  const tp = await world();
  const srv = await nsServer(t.teardown, tp, 'ctr', { proto: 'udp', host: '::1' });
  const dialer = new NetnsDialer({ netnsPath: tp.paths.ctr as string, logger: silentLogger() });
  t.teardown(() => dialer.close());
  const ch = await dialer.openUdp({ ip: '::1', port: srv.port });
  t.teardown(() => ch.close());
  return ch;
}

// On every supported Node (20, 22, 24, 26; .ci/run runs this file on each) all four must be on:
// a Node whose internals moved must fail here, not fall back quietly.
t.test(`self-test: every fast path is on here (Node ${process.version}), and says what it relies on`, async (t) => {
  const report = await selfTest();
  t.match(report.bulkReads, { on: true, why: /useUserBuffer/ }, 'bulk reads into our own buffers');
  t.match(report.udp6Connect, { on: true, why: /connect6/ }, 'connect6 for udp6 sockets received over IPC');
  t.match(report.rawUdp, { on: true, why: /udp_wrap/ }, 'datagrams through the UDP handle (udp-fast.test.ts tests its use)');
  t.match(report.rawTcp, { on: true, why: /tcp_wrap/ }, 'TCP connections on bare handles');
});

t.test('rawTcp is used by the TCP listener: the accept and the dial are raw sockets', async (t) => {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port })]);
  const before = internals().rawTcp.uses;
  const payload = randomPayload(64 * 1024);
  const r = await echoRoundTrip(fwd.port(), payload);
  t.equal(sha256(r.received), sha256(payload), 'echoed intact');
  t.equal(internals().rawTcp.uses, before + 2, 'one accepted and one dialled raw socket');
});

// Issue 19: namespace connections ran on the net.Socket relay (the listener used the raw path for
// direct dials only, and the helper's socket stayed a net.Socket). Both sockets of a --netns
// connection must be raw now: the accepted one, and the helper's, adopted as a raw handle.
t.test('rawTcp is used by namespace connections: the accepted socket and the helper\'s socket are raw', gate, async (t) => {
  const tp = await world();
  const srv = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1' });
  const dialer = new NetnsDialer({ netnsPath: tp.paths.ctr as string, logger: silentLogger() });
  t.teardown(() => dialer.close());
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: srv.port })], dialer);
  await echoRoundTrip(fwd.port(), Buffer.from('warm up')); // starts the helper
  const before = internals().rawTcp.uses;
  const payload = randomPayload(2 * MiB);
  const r = await echoRoundTrip(fwd.port(), payload);
  t.equal(sha256(r.received), sha256(Buffer.concat([Buffer.from('pf\n'), payload])), 'greeting + echo intact through the namespace');
  t.equal(internals().rawTcp.uses, before + 2, 'one accepted and one adopted raw socket for the connection');
  await new Promise((res) => setTimeout(res, 50));
  const rec = fwd.records.filter((x) => x['msg'] === 'connection closed').at(-1);
  t.equal(rec?.['reason'], 'done');
  t.equal(rec?.['bulk'], 2, 'both directions of the 2 MiB echo went bulk (own buffers on raw handles)');
});

t.test('bulkReads is used by the relay (a bulk transfer reads into its own buffers)', async (t) => {
  const before = internals().bulkReads.uses;
  const r = await bulkEcho(t);
  t.ok(r.intact, '4 MiB echoed intact');
  t.ok(r.bulk >= 1, `the relay went bulk (bulk=${r.bulk})`);
  t.ok(internals().bulkReads.uses > before, 'and counted as a use of the fast path');
});

t.test('udp6Connect: a udp6 socket received over IPC connects (the Node 20 bug is patched)', async (t) => {
  const server = dgram.createSocket('udp6');
  await new Promise<void>((r) => server.bind(0, '::1', () => r()));
  t.teardown(() => server.close());
  server.on('message', (m, rinfo) => server.send(m, rinfo.port, rinfo.address));
  const socket = await receiveUdp6Socket(t);
  t.teardown(() => socket.close());
  const before = internals().udp6Connect.uses;
  t.ok(fixReceivedUdp6Connect(socket), 'the patch applies');
  t.equal(internals().udp6Connect.uses, before + 1, 'counted');
  const err = await new Promise<Error | null>((r) => socket.connect(server.address().port, '::1', (e?: Error) => r(e ?? null)));
  t.equal(err, null, 'connect succeeds');
  const reply = new Promise<string>((r) => socket.once('message', (m) => r(m.toString())));
  socket.send('ping');
  t.equal(await reply, 'ping', 'a connected exchange');
});

t.test('udp6Connect is used by the namespace dialer for an IPv6 UDP channel', gate, async (t) => {
  const before = internals().udp6Connect.uses;
  await udp6Channel(t);
  t.equal(internals().udp6Connect.uses, before + 1, 'the channel was connected through the fast path');
});

// ---- fallbacks (process-wide: these run last) ----

t.test('fallback: with bulkReads off, a bulk transfer stays intact in event mode', async (t) => {
  disableFastPath('bulkReads', 'turned off by the test');
  t.match(internals().bulkReads, { on: false, why: 'turned off by the test' }, 'reported off, with the reason');
  const r = await bulkEcho(t);
  t.ok(r.intact, '4 MiB echoed intact');
  t.equal(r.bulk, 0, 'no direction read into own buffers');
});

t.test('fallback: with udp6Connect off, the namespace dialer still carries IPv6 datagrams (unconnected)', gate, async (t) => {
  disableFastPath('udp6Connect', 'turned off by the test');
  const before = internals().udp6Connect.uses;
  const ch = await udp6Channel(t);
  const reply = new Promise<string>((r) => ch.onMessage((m) => r(m.toString())));
  ch.send(Buffer.from('over the fallback'));
  t.equal(await reply, 'over the fallback', 'echoed');
  t.equal(internals().udp6Connect.uses, before, 'without the fast path');
});

t.test('fallback: with rawTcp off, a listener started on the raw path hands net.Sockets to the relay', async (t) => {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port })]);
  const payload = randomPayload(2 * MiB);
  const raw = await echoRoundTrip(fwd.port(), payload);
  t.equal(sha256(raw.received), sha256(payload), 'on the raw path: echoed intact');
  disableFastPath('rawTcp', 'turned off by the test');
  t.match(internals().rawTcp, { on: false, why: 'turned off by the test' }, 'reported off, with the reason');
  const before = internals().rawTcp.uses;
  const r = await echoRoundTrip(fwd.port(), payload);
  t.equal(sha256(r.received), sha256(payload), 'then through the relay: echoed intact');
  t.equal(internals().rawTcp.uses, before, 'without the fast path');
  await new Promise((res) => setTimeout(res, 50));
  t.equal(fwd.records.filter((x) => x['msg'] === 'connection closed').length, 2, 'both connections logged their end');
});
