// UDP flow lifecycle on real loopback sockets: idle expiry refreshed by either direction
// (acceptance 3), LRU eviction (4), backend down then up (5), queueing while a flow opens,
// PROXY v2 per datagram, close/destroy releasing every socket.
import t from 'tap';
import type dgram from 'node:dgram';
import type { Endpoint } from '../../src/api.js';
import { DirectDialer, type Dialer, type UdpChannel } from '../../src/proxy/dialer.js';
import { PP2_SIGNATURE } from '../../src/proxy/proxy-header.js';
import { MAX_DATAGRAM } from '../../src/proxy/udp.js';
import { closeQuietly, openFds, request, startEcho, startListener, udpSocket, waitFor } from '../fixtures/udp/helpers.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Collects every datagram a socket receives. */
function collect(socket: dgram.Socket): Buffer[] {
  const got: Buffer[] = [];
  socket.on('message', (msg: Buffer) => got.push(msg));
  return got;
}

/** A DirectDialer whose openUdp waits for `release()` (or fails when `fail` is set). */
class GatedDialer implements Dialer {
  readonly kind = 'direct' as const;
  private readonly inner = new DirectDialer();
  calls = 0;
  fail = false;
  private opened!: () => void;
  private readonly gate = new Promise<void>((r) => (this.opened = r));
  release(): void {
    this.opened();
  }
  dialTcp(...args: Parameters<DirectDialer['dialTcp']>): ReturnType<DirectDialer['dialTcp']> {
    return this.inner.dialTcp(...args);
  }
  async openUdp(target: Endpoint): Promise<UdpChannel> {
    this.calls++;
    if (this.fail) throw Object.assign(new Error('no route'), { code: 'ENETUNREACH' });
    await this.gate;
    return this.inner.openUdp(target);
  }
  async close(): Promise<void> {}
}

t.test('idle expiry: client->container traffic keeps a flow alive; it goes once traffic stops', async (t) => {
  const sink = await startEcho(t, '127.0.0.1', 0, () => true); // never replies
  const { listener, port, records } = await startListener(t, { containerPort: sink.port, udpIdleTimeoutMs: 1000 });
  const client = await udpSocket(t);
  // 3 s of traffic, one datagram per 200 ms: three idle timeouts long.
  for (let i = 1; i <= 15; i++) {
    client.send(Buffer.from([i]), port, '127.0.0.1');
    await waitFor(`the container to receive datagram ${i}`, () => sink.received === i);
    await sleep(200);
  }
  const during = listener.stats();
  t.equal(during.flowsCreated, 1, 'one flow carried all 15 datagrams (it never expired while in use)');
  t.equal(during.flowsExpired, 0);
  t.equal(during.flows, 1, 'the flow is in the table right after the last datagram');
  t.equal(during.datagramsToClient, 0, 'nothing came back: only client->container traffic refreshed it');
  await waitFor('the idle flow to expire', () => listener.stats().flows === 0, 5000);
  t.equal(listener.stats().flowsExpired, 1, 'counted as expired');
  t.ok(
    records.some((r) => r['msg'] === 'udp flow end' && r['reason'] === 'expired' && r['datagramsToContainer'] === 15),
    'a debug summary line for the flow with its counts',
  );
  client.send(Buffer.from('again'), port, '127.0.0.1');
  await waitFor('a new flow', () => listener.stats().flowsCreated === 2);
  t.equal(listener.stats().flows, 1, 'a datagram after expiry opens a new flow');
});

t.test('idle expiry: container->client traffic alone also keeps a flow alive', async (t) => {
  const container = await startEcho(t, '127.0.0.1', 0, () => true);
  const { listener, port } = await startListener(t, { containerPort: container.port, udpIdleTimeoutMs: 1000 });
  const client = await udpSocket(t);
  const got = collect(client);
  client.send(Buffer.from('subscribe'), port, '127.0.0.1');
  await waitFor('the container to see the flow', () => container.lastPeer !== null);
  const peer = container.lastPeer as dgram.RemoteInfo;
  for (let i = 1; i <= 15; i++) {
    container.socket.send(Buffer.from(`push ${i}`), peer.port, peer.address);
    await waitFor(`push ${i} to reach the client`, () => got.length === i);
    await sleep(200);
  }
  t.same(
    got.map((b) => b.toString()),
    Array.from({ length: 15 }, (_, i) => `push ${i + 1}`),
    'all 15 pushes over 3 s reached the client through one flow',
  );
  t.equal(listener.stats().flowsCreated, 1);
  t.equal(listener.stats().flows, 1);
  await waitFor('the flow to expire after the pushes stop', () => listener.stats().flows === 0, 5000);
  t.equal(listener.stats().flowsExpired, 1);
});

t.test('udpMaxFlows 10 with 20 clients: the oldest are evicted, the newest keep working, one warning', async (t) => {
  const echo = await startEcho(t);
  const { listener, port, records } = await startListener(t, { containerPort: echo.port, udpMaxFlows: 10 });
  const clients = await Promise.all(Array.from({ length: 20 }, () => udpSocket(t)));
  for (const [i, c] of clients.entries()) {
    const { msg } = await request(c, '127.0.0.1', port, Buffer.from(`first ${i}`));
    t.equal(msg.toString(), `first ${i}`, `client ${i} served`);
  }
  let s = listener.stats();
  t.equal(s.flows, 10, 'the table holds udpMaxFlows flows');
  t.equal(s.flowsCreated, 20);
  t.equal(s.flowsEvicted, 10, 'ten evictions counted');
  for (const [i, c] of clients.slice(10).entries()) {
    const { msg } = await request(c, '127.0.0.1', port, Buffer.from(`again ${i}`));
    t.equal(msg.toString(), `again ${i}`);
  }
  t.equal(listener.stats().flowsCreated, 20, 'the ten newest clients were still in the table');
  const { msg } = await request(clients[0] as dgram.Socket, '127.0.0.1', port, Buffer.from('back'));
  t.equal(msg.toString(), 'back', 'an evicted client gets a new flow');
  s = listener.stats();
  t.equal(s.flowsEvicted, 11);
  t.equal(s.flows, 10);
  const warnings = records.filter((r) => r['level'] === 40 && r['code'] === 'udp-flow-table-full');
  t.equal(warnings.length, 1, 'one warning for eleven evictions (at most one per interval)');
  t.equal(warnings[0]?.['maxFlows'], 10);
});

t.test('backend down then up: drops counted as backend-unreachable, the same flow works again', async (t) => {
  const reserve = await udpSocket(t);
  const backendPort = reserve.address().port;
  closeQuietly(reserve); // nothing listens there now: the kernel answers with ICMP port unreachable
  const { listener, port } = await startListener(t, { containerPort: backendPort });
  const client = await udpSocket(t);
  const got = collect(client);
  let sent = 0;
  await waitFor(
    'an unreachable drop to be counted',
    () => {
      client.send(Buffer.from(`down ${sent++}`), port, '127.0.0.1');
      return (listener.stats().drops['backend-unreachable'] ?? 0) >= 1;
    },
    5000,
    50,
  );
  // Let every datagram sent so far reach the dead port before the backend comes up.
  await waitFor('every down datagram to be forwarded', () => listener.stats().datagramsToContainer === sent);
  t.equal(listener.stats().flows, 1, 'the flow survives ECONNREFUSED');
  t.equal(got.length, 0, 'nothing came back while the backend was down');

  const backend = await startEcho(t, '127.0.0.1', backendPort);
  const { msg } = await request(client, '127.0.0.1', port, Buffer.from('up again'));
  t.equal(msg.toString(), 'up again', 'the same client socket is served once the backend is up');
  const s = listener.stats();
  t.equal(s.flowsCreated, 1, 'through the same flow (no new flow was needed)');
  t.ok(backend.received >= 1);
  t.ok((s.drops['backend-unreachable'] ?? 0) >= 1, `drops: ${JSON.stringify(s.drops)}`);
});

t.test('datagrams arriving while a flow opens are queued, bounded, and sent in order', async (t) => {
  const echo = await startEcho(t);
  const dialer = new GatedDialer();
  const { listener, port } = await startListener(t, { containerPort: echo.port }, { dialer });
  const a = await udpSocket(t);
  const b = await udpSocket(t);
  const gotA = collect(a);
  for (let i = 0; i < 70; i++) a.send(Buffer.from(`a${i}`), port, '127.0.0.1');
  b.send(Buffer.from('b'), port, '127.0.0.1');
  // b's datagram opens a second flow; the host socket delivers in order, so all of a's came first.
  await waitFor('both flows to be opening', () => dialer.calls === 2);
  t.equal(listener.stats().drops['flow-queue-full'], 6, '64 queued, 6 dropped as flow-queue-full');
  t.equal(listener.stats().datagramsToContainer, 0, 'nothing sent before the channel is open');
  dialer.release();
  await waitFor('64 replies for a', () => gotA.length === 64);
  t.same(
    gotA.map((m) => m.toString()),
    Array.from({ length: 64 }, (_, i) => `a${i}`),
    'the queued datagrams went out in the order they arrived',
  );
  t.equal(listener.stats().datagramsToContainer, 65);
});

t.test('a flow that cannot be opened drops its datagrams and the next datagram tries again', async (t) => {
  const echo = await startEcho(t);
  const dialer = new GatedDialer();
  dialer.fail = true;
  const { listener, port, records } = await startListener(t, { containerPort: echo.port }, { dialer });
  const client = await udpSocket(t);
  client.send(Buffer.from('x'), port, '127.0.0.1');
  await waitFor('the failed setup to be counted', () => listener.stats().drops['flow-setup-failed'] === 1);
  t.equal(listener.stats().flows, 0, 'the failed flow left the table');
  client.send(Buffer.from('y'), port, '127.0.0.1');
  await waitFor('a second attempt', () => listener.stats().drops['flow-setup-failed'] === 2);
  t.equal(dialer.calls, 2, 'each datagram tried to open the flow again');
  const warnings = records.filter((r) => r['level'] === 40);
  t.equal(warnings.length, 1, 'one warning, not one per datagram');
  // Issue 14: the warning is one coded line with the errno, no stack trace.
  t.match(warnings[0], { code: 'PF_DIAL_FAILED', errno: 'ENETUNREACH', target: `127.0.0.1:${echo.port}` });
  t.match(String(warnings[0]?.['msg']), 'ENETUNREACH');
  t.notOk(JSON.stringify(warnings[0]).includes('"stack"'), 'no stack trace');
});

t.test('PROXY v2: a datagram that does not fit with its header is dropped, counted and warned about (rate-limited)', async (t) => {
  const echo = await startEcho(t);
  const { listener, port, records } = await startListener(t, { containerPort: echo.port, proxyProtocol: 'v2' });
  const client = await udpSocket(t);
  const { msg } = await request(client, '127.0.0.1', port, Buffer.from('small'));
  t.equal(msg.subarray(28).toString(), 'small', 'a datagram that fits goes through');
  const big = Buffer.alloc(MAX_DATAGRAM[4] - 27, 1); // 1 byte over with the 28-byte header
  client.send(big, port, '127.0.0.1');
  client.send(big, port, '127.0.0.1');
  await waitFor('the drops to be counted', () => listener.stats().drops['proxy-header-too-big'] === 2);
  const warnings = records.filter((r) => r['level'] === 40);
  t.equal(warnings.length, 1, 'one warning for both');
  t.match(warnings[0], { code: 'PF_PROXY_HEADER', payloadBytes: MAX_DATAGRAM[4] - 27, headerBytes: 28, maxDatagram: MAX_DATAGRAM[4] });
  const fits = Buffer.alloc(MAX_DATAGRAM[4] - 28, 2);
  const { msg: back } = await request(client, '127.0.0.1', port, fits);
  t.equal(back.length, MAX_DATAGRAM[4], 'the largest payload that fits with its header arrives (header + payload = the limit)');
  t.equal(echo.received, 2, 'the container got the two datagrams that fit, nothing else');
});

t.test('PROXY v2: every datagram to the container carries the flow header', async (t) => {
  const echo = await startEcho(t);
  const { port } = await startListener(t, { containerPort: echo.port, proxyProtocol: 'v2' });
  const client = await udpSocket(t);
  const seen: Buffer[] = [];
  echo.socket.on('message', (m: Buffer) => seen.push(m));
  for (const text of ['one', 'two']) {
    const { msg } = await request(client, '127.0.0.1', port, Buffer.from(text));
    t.equal(msg.subarray(28).toString(), text, 'payload follows the 28-byte header');
  }
  t.equal(seen.length, 2);
  for (const m of seen) {
    t.ok(m.subarray(0, 12).equals(PP2_SIGNATURE), 'v2 signature');
    t.equal(m[12], 0x21, 'version 2, PROXY command');
    t.equal(m[13], 0x12, 'UDP over IPv4 (DGRAM)');
    t.equal(m.readUInt16BE(14), 12, 'address block length');
    t.equal([...m.subarray(16, 20)].join('.'), '127.0.0.1', 'source address: the client');
    t.equal([...m.subarray(20, 24)].join('.'), '127.0.0.1', 'destination address: the host address');
    t.equal(m.readUInt16BE(24), client.address().port, 'source port: the client');
    t.equal(m.readUInt16BE(26), port, 'destination port: the host port');
  }
  t.ok((seen[0] as Buffer).subarray(0, 28).equals((seen[1] as Buffer).subarray(0, 28)), 'the same header on every datagram of the flow');
});

t.test('destroy() closes every flow socket and the host socket; close() and destroy() are idempotent', async (t) => {
  const echo = await startEcho(t);
  const clients = await Promise.all(Array.from({ length: 20 }, () => udpSocket(t)));
  const baseline = await openFds();
  const { listener, port } = await startListener(t, { containerPort: echo.port });
  for (const c of clients) await request(c, '127.0.0.1', port, Buffer.from('hi'));
  t.ok((await openFds()) >= baseline + 21, 'a host socket and 20 flow sockets are open');
  listener.destroy();
  listener.destroy();
  await listener.close(1000);
  t.equal(listener.stats().flows, 0);
  let now = await openFds();
  for (const deadline = Date.now() + 3000; now !== baseline && Date.now() < deadline; now = await openFds()) await sleep(20);
  t.equal(now, baseline, 'no descriptor leaked');
  const late = await udpSocket(t);
  late.send(Buffer.from('late'), port, '127.0.0.1');
  await sleep(50);
  t.equal(listener.stats().datagramsToContainer, 20, 'nothing is forwarded after destroy');
});

t.test('close(grace): new clients are refused, existing flows keep working until they go idle', async (t) => {
  const echo = await startEcho(t);
  const { listener, port } = await startListener(t, { containerPort: echo.port, udpIdleTimeoutMs: 300 });
  const old = await udpSocket(t);
  await request(old, '127.0.0.1', port, Buffer.from('before'));
  let closed = false;
  const closing = listener.close(30_000).then(() => (closed = true));
  t.equal(listener.close(30_000), listener.close(1), 'close() returns the same promise');
  const { msg } = await request(old, '127.0.0.1', port, Buffer.from('during'));
  t.equal(msg.toString(), 'during', 'an existing flow still works while closing');
  const newcomer = await udpSocket(t);
  newcomer.send(Buffer.from('new'), port, '127.0.0.1');
  await waitFor('the newcomer to be dropped', () => listener.stats().drops['closing'] === 1);
  t.equal(closed, false, 'not closed while a flow is active');
  await closing;
  t.equal(listener.stats().flows, 0, 'closed once the last flow went idle, long before the grace period');
  t.equal(listener.stats().flowsExpired, 1);
});

t.test('close() with no flows resolves at once and releases the port', async (t) => {
  const echo = await startEcho(t);
  const { listener, port } = await startListener(t, { containerPort: echo.port });
  await listener.close(10_000);
  const again = await udpSocket(t, '127.0.0.1', port);
  t.equal(again.address().port, port, 'the port can be bound again');
});

t.test('close(grace) with the default 90 s idle timeout finishes once flows are quiet, not after the grace', async (t) => {
  const echo = await startEcho(t);
  const { listener, port } = await startListener(t, { containerPort: echo.port }); // udpIdleTimeoutMs 90 s
  const client = await udpSocket(t);
  await request(client, '127.0.0.1', port, Buffer.from('hi'));
  const outcome = await Promise.race([
    listener.close(60_000).then(() => 'closed'),
    new Promise<string>((r) => setTimeout(() => r('still open after 10 s'), 10_000).unref()),
  ]);
  t.equal(outcome, 'closed', 'a quiet flow does not hold shutdown for the whole grace period');
  t.equal(listener.stats().flows, 0);
});
