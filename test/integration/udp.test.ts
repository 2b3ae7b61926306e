// UDP listener on real loopback sockets: many clients with exact payloads (acceptance 1), datagram
// sizes from 0 to the protocol maximum (2), IPv6 on ::1 (7), UDP and TCP on one port number (8).
import t from 'tap';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { MAX_DATAGRAM } from '../../src/proxy/udp.js';
import { request, startEcho, startListener, udpSocket } from '../fixtures/udp/helpers.js';

interface ClientResult {
  received: number;
  errors: string[];
  bytesSent: number;
}

/**
 * One client: `count` numbered datagrams of random sizes (1..1400), at most `window` outstanding.
 * Datagrams of 8 bytes or more carry (client id, sequence number) in front; every reply must equal,
 * byte for byte, a datagram this client sent and has not had back yet.
 */
function runClient(socket: dgram.Socket, id: number, port: number, count: number, window: number, stallMs: number): Promise<ClientResult> {
  return new Promise((resolve) => {
    const outstanding = new Map<number, Buffer>();
    const result: ClientResult = { received: 0, errors: [], bytesSent: 0 };
    let next = 0;
    let stall: NodeJS.Timeout;
    const finish = (): void => {
      clearTimeout(stall);
      socket.off('message', onMessage);
      resolve(result);
    };
    const armStall = (): void => {
      clearTimeout(stall);
      stall = setTimeout(() => {
        result.errors.push(`client ${id}: no reply for ${stallMs} ms with ${outstanding.size} outstanding (lost), ${result.received}/${count} received`);
        finish();
      }, stallMs);
    };
    const sendNext = (): void => {
      const seq = next++;
      const size = 1 + Math.floor(Math.random() * 1400);
      const payload = randomBytes(size);
      if (size >= 8) {
        payload.writeUInt32BE(id, 0);
        payload.writeUInt32BE(seq, 4);
      }
      outstanding.set(seq, payload);
      result.bytesSent += size;
      socket.send(payload, port, '127.0.0.1');
    };
    const onMessage = (msg: Buffer): void => {
      let seq: number | undefined;
      if (msg.length >= 8) {
        if (msg.readUInt32BE(0) !== id) result.errors.push(`client ${id}: got a reply of client ${msg.readUInt32BE(0)}`);
        else if (outstanding.get(msg.readUInt32BE(4))?.equals(msg) === true) seq = msg.readUInt32BE(4);
      } else {
        for (const [s, sent] of outstanding) {
          if (sent.equals(msg)) {
            seq = s;
            break;
          }
        }
      }
      if (seq === undefined) {
        if (result.errors.length < 5) result.errors.push(`client ${id}: reply of ${msg.length} bytes matches nothing outstanding`);
        return;
      }
      outstanding.delete(seq);
      result.received++;
      if (result.received === count) return finish();
      armStall();
      if (next < count) sendNext();
    };
    socket.on('message', onMessage);
    armStall();
    for (let i = 0; i < window && next < count; i++) sendNext();
  });
}

t.test('50 clients x 1000 numbered datagrams: each gets exactly its own replies, none lost', async (t) => {
  const echo = await startEcho(t);
  const { listener, port } = await startListener(t, { containerPort: echo.port });
  const clients = await Promise.all(Array.from({ length: 50 }, () => udpSocket(t)));
  const results = await Promise.all(clients.map((socket, id) => runClient(socket, id, port, 1000, 4, 5000)));

  const errors = results.flatMap((r) => r.errors);
  t.same(errors, [], 'no foreign, corrupt or lost replies');
  t.same(
    results.map((r) => r.received),
    Array.from({ length: 50 }, () => 1000),
    'every client received all 1000 replies',
  );
  const bytes = results.reduce((n, r) => n + r.bytesSent, 0);
  const s = listener.stats();
  t.equal(s.flows, 50, 'one flow per client');
  t.equal(s.flowsCreated, 50);
  t.equal(s.datagramsToContainer, 50_000);
  t.equal(s.datagramsToClient, 50_000);
  t.equal(s.bytesToContainer, bytes, 'bytes to the container counted exactly');
  t.equal(s.bytesToClient, bytes, 'bytes to the clients counted exactly');
  t.same(s.drops, {}, 'no drops');
});

t.test('datagram boundaries: sizes 0, 1, 65000 and the IPv4 maximum arrive whole', async (t) => {
  const echo = await startEcho(t);
  const { listener, port } = await startListener(t, { containerPort: echo.port });
  const client = await udpSocket(t);
  for (const size of [0, 1, 65_000, MAX_DATAGRAM[4], 2, 1400]) {
    const payload = randomBytes(size);
    const { msg } = await request(client, '127.0.0.1', port, payload);
    t.equal(msg.length, size, `${size}-byte datagram came back as one ${size}-byte datagram`);
    t.ok(msg.equals(payload), `${size}-byte payload identical`);
  }
  t.equal(listener.stats().datagramsToClient, 6);
  t.equal(echo.received, 6, 'the container saw six datagrams, not fragments or merges');
});

t.test('IPv6 [::1]:P -> [::1]:Q works, up to the IPv6 maximum datagram', async (t) => {
  const echo = await startEcho(t, '::1');
  const { listener, port } = await startListener(t, { hostIP: '::1', containerIP: '::1', containerPort: echo.port });
  t.same(listener.address(), { ip: '::1', port });
  const clients = await Promise.all(Array.from({ length: 3 }, () => udpSocket(t, '::1')));
  for (const [i, client] of clients.entries()) {
    const payload = Buffer.from(`hello from ${i}`);
    const { msg, rinfo } = await request(client, '::1', port, payload);
    t.ok(msg.equals(payload), `client ${i} got its own reply`);
    t.same([rinfo.address, rinfo.port], ['::1', port], 'reply comes from the listener address');
  }
  const client = clients[0] as dgram.Socket;
  for (const size of [0, MAX_DATAGRAM[6]]) {
    const payload = randomBytes(size);
    const { msg } = await request(client, '::1', port, payload);
    t.ok(msg.equals(payload), `${size}-byte datagram whole over IPv6`);
  }
  t.equal(listener.stats().flows, 3);
  t.same(listener.stats().drops, {});
});

t.test('a UDP and a TCP listener share one host port number', async (t) => {
  const echo = await startEcho(t);
  // The kernel picks the UDP port; the same number may be busy for TCP (another test's ephemeral
  // port, say). Then try again with a new UDP port, a bounded number of times.
  const server = net.createServer((s) => s.end('tcp here'));
  let port = 0;
  for (let attempt = 0; port === 0; attempt++) {
    const started = await startListener(t, { containerPort: echo.port });
    const bound = await new Promise<boolean>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' && attempt < 10 ? resolve(false) : reject(err)));
      server.listen(started.port, '127.0.0.1', () => resolve(true));
    });
    if (bound) port = started.port;
    else started.listener.destroy();
  }
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));

  const client = await udpSocket(t);
  const { msg } = await request(client, '127.0.0.1', port, Buffer.from('udp here'));
  t.equal(msg.toString(), 'udp here', 'UDP forwarded on the shared port');
  const got = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    net
      .connect(port, '127.0.0.1')
      .on('data', (c: Buffer) => chunks.push(c))
      .on('end', () => resolve(Buffer.concat(chunks).toString()))
      .on('error', reject);
  });
  t.equal(got, 'tcp here', 'TCP served on the same port number');
});

t.test('TCP first, then UDP on the same port number', async (t) => {
  const echo = await startEcho(t);
  const server = net.createServer((s) => s.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const tcpPort = (server.address() as net.AddressInfo).port;
  const { port } = await startListener(t, { hostPort: tcpPort, containerPort: echo.port });
  t.equal(port, tcpPort);
  const client = await udpSocket(t);
  const { msg } = await request(client, '127.0.0.1', port, Buffer.from('x'));
  t.equal(msg.toString(), 'x');
});
