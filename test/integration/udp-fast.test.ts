// The raw UDP fast path (src/internals.ts, rawUdp): datagrams through the UDP handle, not dgram's
// 'message'/send(). These tests fail when a listener silently stops using it (the use count must
// grow), check that it carries every size byte-exact both ways with exact counters, IPv6 and ICMP
// errors included, and then that the public fallback does the same (last: turning a path off is
// process-wide).
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type dgram from 'node:dgram';
import { disableFastPath, internals, selfTest } from '../../src/internals.js';
import { MAX_DATAGRAM } from '../../src/proxy/udp.js';
import { request, startEcho, startListener, udpSocket, waitFor } from '../fixtures/udp/helpers.js';

const SIZES = [0, 1, 64, 1400, 9000, MAX_DATAGRAM[4]];

/** Every size, then 200 more numbered datagrams, one at a time through a listener: each reply byte-exact, counters exact. */
async function forward(t: Test, ip = '127.0.0.1'): Promise<void> {
  const echo = await startEcho(t, ip);
  const { listener, port } = await startListener(t, { hostIP: ip, containerIP: ip, containerPort: echo.port });
  const client: dgram.Socket = await udpSocket(t, ip);
  const payloads = SIZES.map((n) => randomBytes(n));
  for (let i = 0; i < 200; i++) payloads.push(Buffer.concat([Buffer.from(`#${i}:`), randomBytes(i % 97)]));
  let bytes = 0;
  for (const p of payloads) {
    const { msg } = await request(client, ip, port, p);
    if (!msg.equals(p)) t.fail(`a ${p.length}-byte datagram came back as ${msg.length} different bytes`);
    bytes += p.length;
  }
  const s = listener.stats();
  t.same(
    { flows: s.flows, toContainer: s.datagramsToContainer, toClient: s.datagramsToClient, bytesIn: s.bytesToContainer, bytesOut: s.bytesToClient, drops: s.drops },
    { flows: 1, toContainer: payloads.length, toClient: payloads.length, bytesIn: bytes, bytesOut: bytes, drops: {} },
    `${payloads.length} datagrams each way, byte-exact, counted exactly, nothing dropped`,
  );
}

t.test(`self-test: the raw UDP path is on here (Node ${process.version})`, async (t) => {
  const report = await selfTest();
  t.match(report.rawUdp, { on: true, why: /udp_wrap/ }, 'raw UDP through the handle');
});

t.test('a listener forwards through the raw path (IPv4): host socket and flow socket both switched', async (t) => {
  const before = internals().rawUdp.uses;
  await forward(t);
  t.equal(internals().rawUdp.uses - before, 2, 'the host socket and the flow socket used the fast path');
});

t.test('IPv6 on ::1 through the raw path', async (t) => {
  const before = internals().rawUdp.uses;
  await forward(t, '::1');
  t.equal(internals().rawUdp.uses - before, 2, 'both sockets used the fast path');
});

t.test('ICMP port unreachable still reaches the flow as an error (backend-unreachable), the flow keeps working', async (t) => {
  const dead = await udpSocket(t);
  const deadPort = dead.address().port;
  dead.close(); // nothing listens there now: the kernel answers with ICMP port unreachable
  const { listener, port } = await startListener(t, { containerPort: deadPort });
  const client = await udpSocket(t);
  const before = internals().rawUdp.uses;
  await waitFor('backend-unreachable', () => {
    client.send('anyone?', port, '127.0.0.1');
    return (listener.stats().drops['backend-unreachable'] ?? 0) >= 1;
  });
  t.ok(internals().rawUdp.uses > before, 'the flow socket is raw');
  t.equal(listener.stats().flows, 1, 'the flow stays');
});

// Node's test switch --test-udp-no-try-send makes every send queue in libuv (on loopback a send
// never has to wait): the path where a SendWrap is kept by its send and a new spare is made.
const QUEUED_SCRIPT = `
import dgram from 'node:dgram';
import { udpPort } from ${JSON.stringify(new URL('../../dist/internals.js', import.meta.url).href)};
const rx = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
await new Promise((r) => rx.bind(0, '127.0.0.1', r));
const got = [];
const rr = udpPort(rx, (m) => {
  got.push(m);
  if (got.length === 300) report();
});
const tx = dgram.createSocket('udp4');
await new Promise((r) => tx.connect(rx.address().port, '127.0.0.1', r));
const rt = udpPort(tx, () => {});
const expected = (i) => Buffer.alloc(1 + (i * 37) % 3000, i & 255);
for (let i = 0; i < 300; i++) {
  const m = expected(i); // referenced by nothing but the send: the kept wrap must hold it
  if (i % 2) rt.send(m); else rt.sendList([m.subarray(0, 1), m.subarray(1)]);
}
const queuedAfterSends = rt.queued();
globalThis.gc();
globalThis.gc();
for (let i = 0; i < 300; i++) Buffer.alloc(1 + (i * 37) % 3000, 0xee); // reuse freed memory, if any
const timer = setTimeout(report, 5000); // when datagrams are missing
function report() {
  clearTimeout(timer);
  const exact = got.length === 300 && got.every((m, i) => m.equals(expected(i)));
  process.stdout.write(JSON.stringify({ raw: rr.raw && rt.raw, queuedAfterSends, queuedLater: rt.queued(), received: got.length, exact }));
  rx.close(); tx.close();
}
`;

t.test('sends that queue in libuv (forced with --test-udp-no-try-send) arrive byte-exact and in order', async (t) => {
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--test-udp-no-try-send', '--expose-gc', '--input-type=module', '-e', QUEUED_SCRIPT], { timeout: 20_000 }, (err, stdout) => (err !== null ? reject(err) : resolve(stdout)));
  });
  t.same(JSON.parse(out), { raw: true, queuedAfterSends: 300, queuedLater: 0, received: 300, exact: true }, out);
});

// ---- fallback (process-wide: runs last) ----

t.test('fallback: with rawUdp off, the public dgram path forwards the same, byte-exact', async (t) => {
  disableFastPath('rawUdp', 'turned off by the test');
  t.match(internals().rawUdp, { on: false, why: 'turned off by the test' }, 'reported off, with the reason');
  const before = internals().rawUdp.uses;
  await forward(t);
  await forward(t, '::1');
  t.equal(internals().rawUdp.uses, before, 'without the fast path');
});
