// The connection engine's relay on its own, on real loopback sockets: tokio's copy_bidirectional
// tests (transfer with exact counts, transfer after half-close, one blocked side does not block
// the other, an error ends both at once) plus both timeouts. Each runs twice: once with the
// client as the side that starts, once with the container. And the whole set runs over both
// kinds of port × both ways the container's socket arrives:
//
//   raw     the sockets are bare handles (RawSocket: rawTcp on)
//   socket  the sockets are net.Sockets behind the same port methods (rawTcp off)
//   direct  the container's socket was accepted here, like the client's
//   netns   the container's socket was dialled by the namespace helper (a separate process, here
//           entering this test's own network namespace) and received over IPC, as --netns does
//
//   client peer ⇄ [client port ─ Connection ─ container port] ⇄ container peer
import t, { type Test } from 'tap';
import net from 'node:net';
import type { RelayResult } from '../../src/api.js';
import { adoptConnected, disableFastPath, restoreFastPath, type TcpPort } from '../../src/internals.js';
import { NetnsDialer } from '../../src/netns/helper.js';
import { silentLogger } from '../../src/log.js';
import { relayPorts, type Connection, type RelayOptions } from '../../src/proxy/connection.js';
import { skipUnless } from '../helpers/env.js';
import { randomPayload, readAll, sha256, until } from '../helpers/net.js';

const MiB = 1024 * 1024;
type Side = 'client' | 'container';
const SIDES: readonly Side[] = ['client', 'container'];
const other = (s: Side): Side => (s === 'client' ? 'container' : 'client');
type PortKind = 'raw' | 'socket';
type DialKind = 'direct' | 'netns';

/** A connected loopback pair: `peer` (ours, flowing) and `inner` (accepted, paused: the relay's). */
async function socketPair(t: Test): Promise<{ peer: net.Socket; inner: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const peer = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const inner = await accepted;
  await new Promise<void>((r) => (peer.connecting ? peer.once('connect', () => r()) : r()));
  server.close();
  peer.on('error', () => {});
  t.teardown(() => {
    peer.destroy();
    inner.destroy();
  });
  return { peer, inner };
}

/** One namespace dialer for the file, into this process's own network namespace (root: nsenter). */
let netnsDialer: NetnsDialer | null = null;
t.teardown(() => netnsDialer?.close());

/** The container side through the namespace helper: a port it dialled (received over IPC), and the peer it reached. */
async function netnsPair(t: Test): Promise<{ peer: net.Socket; port: TcpPort }> {
  netnsDialer ??= new NetnsDialer({ netnsPath: `/proc/${process.pid}/ns/net`, logger: silentLogger() });
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const dialler = netnsDialer;
  const port = await new Promise<TcpPort>((resolve, reject) => {
    dialler.dialTcp({ ip: '127.0.0.1', port: (server.address() as net.AddressInfo).port }, 10_000, {
      dialled: (err, p) => (p !== null ? resolve(p) : reject(err)),
    });
  });
  const peer = await accepted;
  server.close();
  peer.on('error', () => {});
  t.teardown(() => {
    peer.destroy();
    port.close();
  });
  return { peer, port };
}

interface World {
  relay: Connection;
  peer: Record<Side, net.Socket>;
  done: Promise<RelayResult>;
}

async function relayWorld(t: Test, kind: PortKind, dial: DialKind, options: Partial<RelayOptions> = {}): Promise<World> {
  if (kind === 'socket') {
    disableFastPath('rawTcp', 'the relay tests on net.Socket ports');
    t.teardown(() => restoreFastPath('rawTcp'));
  }
  const c = await socketPair(t);
  const client = adoptConnected(c.inner);
  let container: TcpPort;
  let containerPeer: net.Socket;
  if (dial === 'direct') {
    const k = await socketPair(t);
    container = adoptConnected(k.inner);
    containerPeer = k.peer;
  } else {
    const k = await netnsPair(t);
    container = k.port;
    containerPeer = k.peer;
  }
  if (client.raw !== (kind === 'raw') || container.raw !== (kind === 'raw')) throw new Error(`expected ${kind} ports, got client raw=${client.raw} container raw=${container.raw}`);
  const relay = relayPorts(client, container, { idleTimeoutMs: 0, halfCloseTimeoutMs: 0, ...options });
  t.teardown(() => relay.destroy());
  return { relay, peer: { client: c.peer, container: containerPeer }, done: relay.done };
}

/** The byte count of the direction that starts at `from`. */
const sent = (r: RelayResult, from: Side): number => (from === 'client' ? r.bytesToContainer : r.bytesToClient);

for (const kind of ['raw', 'socket'] as const) {
  for (const dial of ['direct', 'netns'] as const) {
    const gate = dial === 'netns' ? skipUnless({ root: true, tools: ['nsenter'] }) : {};
    t.test(`${kind} ports, ${dial} container socket`, gate, async (tt) => {
      for (const a of SIDES) {
        const b = other(a);

        tt.test(`transfer with exact counts (${a} → ${b} 3 MiB, ${b} → ${a} 1000 B)`, async (t) => {
          const w = await relayWorld(t, kind, dial);
          const big = randomPayload(3 * MiB);
          const small = randomPayload(1000);
          const atB = readAll(w.peer[b]);
          const atA = readAll(w.peer[a]);
          w.peer[a].end(big);
          w.peer[b].end(small);
          const [gotB, gotA, r] = await Promise.all([atB, atA, w.done]);
          t.equal(sha256(gotB.data), sha256(big), `${b} got exactly what ${a} sent`);
          t.equal(sha256(gotA.data), sha256(small), `${a} got exactly what ${b} sent`);
          t.same([gotA.ended, gotB.ended], ['eof', 'eof'], 'both see a clean EOF');
          t.match(r, { reason: 'done' });
          t.equal(sent(r, a), 3 * MiB, 'count one way');
          t.equal(sent(r, b), 1000, 'count the other way');
          t.equal(r.bulkDirections, 1, 'the 3 MiB direction went through the bulk (own buffers) path, the 1000 B one did not');
        });

        tt.test(`transfer after half-close (${a} sends and ends; ${b} answers 2 MiB afterwards)`, async (t) => {
          const w = await relayWorld(t, kind, dial);
          const atA = readAll(w.peer[a]);
          const request = await new Promise<Buffer>((resolve) => {
            const chunks: Buffer[] = [];
            w.peer[b].on('data', (d: Buffer) => chunks.push(d));
            w.peer[b].once('end', () => resolve(Buffer.concat(chunks)));
            w.peer[a].end('request');
          });
          t.equal(request.toString(), 'request', `${b} got the request, then EOF`);
          const reply = randomPayload(2 * MiB);
          w.peer[b].end(reply);
          const [gotA, r] = await Promise.all([atA, w.done]);
          t.equal(sha256(gotA.data), sha256(reply), `${a} got the whole reply after its own FIN`);
          t.equal(gotA.ended, 'eof');
          t.match(r, { reason: 'done' });
          t.same([sent(r, a), sent(r, b)], [7, 2 * MiB], 'exact counts');
        });

        tt.test(`one blocked side does not block the other (${b} does not read; ${b} → ${a} flows)`, async (t) => {
          const w = await relayWorld(t, kind, dial);
          w.peer[b].pause(); // b reads nothing: a → b fills every buffer on the way and stalls
          const flood = randomPayload(64 * MiB);
          w.peer[a].write(flood);
          await until(() => w.relay[a === 'client' ? 'bytesToContainer' : 'bytesToClient'] > 0, 5000, 'the flood to start');
          const atA: Buffer[] = [];
          w.peer[a].on('data', (d: Buffer) => atA.push(d));
          for (let i = 0; i < 50; i++) w.peer[b].write(`ping${i};`);
          const expected = Array.from({ length: 50 }, (_, i) => `ping${i};`).join('');
          await until(() => Buffer.concat(atA).toString() === expected, 5000, `${b}'s pings to reach ${a}`);
          const stalled = a === 'client' ? w.relay.bytesToContainer : w.relay.bytesToClient;
          t.ok(stalled < flood.length, `the blocked direction is stalled (${stalled} of ${flood.length} bytes)`);
          // b reads again: everything arrives.
          const chunks: Buffer[] = [];
          w.peer[b].on('data', (d: Buffer) => chunks.push(d));
          w.peer[b].resume();
          await until(() => chunks.reduce((n, c) => n + c.length, 0) === flood.length, 20_000, 'the flood to drain');
          t.equal(sha256(Buffer.concat(chunks)), sha256(flood), 'and then the blocked direction completes intact');
        });

        tt.test(`an error ends both at once (${a} resets mid-transfer)`, async (t) => {
          const w = await relayWorld(t, kind, dial);
          const atB = readAll(w.peer[b]);
          w.peer[a].write(randomPayload(64 * 1024));
          w.peer[b].write('hello');
          await until(() => w.relay.bytesToContainer > 0 && w.relay.bytesToClient > 0, 5000, 'both directions to move');
          w.peer[a].resetAndDestroy();
          const [gotB, r] = await Promise.all([atB, w.done]);
          t.equal(gotB.ended, 'error', `${b} does not see a clean EOF`);
          t.equal(gotB.errorCode, 'ECONNRESET', `${b} is reset`);
          t.equal(r.reason, `${a}-reset`, 'the relay ends with the reset side named');
        });

        tt.test(`idle timeout: traffic from ${a} alone keeps the connection; silence ends it`, async (t) => {
          const w = await relayWorld(t, kind, dial, { idleTimeoutMs: 200 });
          const atB = readAll(w.peer[b]);
          const atA = readAll(w.peer[a]);
          let ended: RelayResult | null = null;
          void w.done.then((r) => (ended = r));
          for (let i = 0; i < 8; i++) {
            w.peer[a].write('x');
            await new Promise((r) => setTimeout(r, 60));
          }
          t.equal(ended, null, 'alive after 480 ms of traffic every 60 ms (idle timeout 200 ms)');
          const r = await w.done;
          t.equal(r.reason, 'idle-timeout');
          t.equal(sent(r, a), 8, 'exact count');
          const [gotA, gotB] = await Promise.all([atA, atB]);
          t.equal(gotB.data.toString(), 'xxxxxxxx', `${b} got every byte`);
          t.same([gotA.errorCode, gotB.errorCode], ['ECONNRESET', 'ECONNRESET'], 'both peers are reset');
        });

        tt.test(`half-close timeout: after ${a} half-closes, ${b}'s traffic keeps it; silence ends it`, async (t) => {
          const w = await relayWorld(t, kind, dial, { halfCloseTimeoutMs: 200 });
          const atA = readAll(w.peer[a]);
          const atB = readAll(w.peer[b]);
          let ended: RelayResult | null = null;
          void w.done.then((r) => (ended = r));
          await new Promise((r) => setTimeout(r, 300));
          t.equal(ended, null, 'no bound while both directions run (idle timeout off)');
          w.peer[a].end('bye');
          for (let i = 0; i < 6; i++) {
            w.peer[b].write('y');
            await new Promise((r) => setTimeout(r, 60));
          }
          t.equal(ended, null, `alive while ${b} keeps sending`);
          const r = await w.done;
          t.equal(r.reason, 'half-close-timeout');
          t.same([sent(r, a), sent(r, b)], [3, 6], 'exact counts');
          const [gotA, gotB] = await Promise.all([atA, atB]);
          t.equal(gotB.data.toString(), 'bye', `${b} got the bytes and then EOF`);
          t.equal(gotA.data.toString(), 'yyyyyy', `${a} got ${b}'s bytes after its own FIN`);
        });
      }
    });
  }
}
