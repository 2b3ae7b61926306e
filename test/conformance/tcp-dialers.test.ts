// One TCP conformance suite, run against every Dialer × both kinds of port: integrity, half-close
// both ways, resets both ways, backend down then up. "direct" dials backends on the host's
// loopback; "netns" dials backends that listen on 127.0.0.1 INSIDE a container namespace
// (unreachable from the host), through the in-namespace helper. "raw": connections on bare
// handles (rawTcp on); "socket": on net.Sockets behind the same port methods (rawTcp off).
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { disableFastPath, internals, restoreFastPath } from '../../src/internals.js';
import { createTopology } from '../../src/netns/topology.js';
import { NetnsDialer } from '../../src/netns/helper.js';
import { DirectDialer, type Dialer } from '../../src/proxy/dialer.js';
import { silentLogger } from '../../src/log.js';
import { skipUnless } from '../helpers/env.js';
import { testMapping } from '../helpers/mapping.js';
import { connect, nodeArgv, echoRoundTrip, randomPayload, readAll, repoRoot, sha256, startManager, until } from '../helpers/net.js';

const MiB = 1024 * 1024;
const backendsScript = path.join(repoRoot, 'test/fixtures/conformance/backends.mjs');

interface Ports {
  echo: number;
  reply: number;
  reset: number;
  first: number;
  late: number;
}

/** Resolves with the ports once the backends are up; `output()` is everything they printed. */
async function backendsReady(child: ChildProcess): Promise<{ ports: Ports; output: () => string }> {
  let out = '';
  return new Promise((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /ready (\{.*\})/.exec(out);
      if (m?.[1] !== undefined) resolve({ ports: JSON.parse(m[1]) as Ports, output: () => out });
    });
    child.once('exit', (code) => reject(new Error(`backends exited (${code}) before ready: ${out}`)));
  });
}

interface World {
  dialer: Dialer;
  backends: ChildProcess;
  ports: Ports;
  output: () => string;
}

/** The part of a tap test the setups use. */
interface T {
  teardown(fn: () => unknown): void;
  ok(value: unknown, message: string): unknown;
}

type Setup = (t: T) => Promise<World>;

const worlds: [string, Record<string, string>, Setup][] = [
  [
    'direct',
    {},
    async (t) => {
      const backends = spawn(...nodeArgv(backendsScript, '127.0.0.1'), { stdio: ['pipe', 'pipe', 'inherit'] });
      t.teardown(() => {
        backends.kill('SIGKILL');
      });
      return { dialer: new DirectDialer(), backends, ...(await backendsReady(backends)) };
    },
  ],
  [
    'netns',
    skipUnless({ root: true, tools: ['ip', 'nsenter'] }),
    async (t) => {
      const topo = await createTopology({ mode: 'root' });
      t.teardown(() => topo.destroy());
      const backends = topo.spawn('ctr', ...nodeArgv(backendsScript, '127.0.0.1'), { stdio: ['pipe', 'pipe', 'inherit'] });
      const { ports, output } = await backendsReady(backends);
      // The backends listen on the container's own loopback: the host cannot reach them directly.
      const direct = await connect(ports.echo).then((s) => (s.destroy(), 'reachable'), (e: NodeJS.ErrnoException) => e.code);
      t.ok(direct !== 'reachable', 'the container port is not reachable from the host namespace');
      const dialer = new NetnsDialer({ netnsPath: topo.paths.ctr as string, logger: silentLogger() });
      t.teardown(() => dialer.close());
      return { dialer, backends, ports, output };
    },
  ],
];

for (const [name, opts, setup] of worlds) for (const kind of ['raw', 'socket'] as const) {
  t.test(`conformance: ${name} dialer, ${kind} ports`, opts, async (t) => {
    if (kind === 'socket') {
      disableFastPath('rawTcp', 'the conformance suite on net.Socket ports');
      t.teardown(() => restoreFastPath('rawTcp'));
    }
    const rawBefore = internals().rawTcp.uses;
    const world = await setup(t);
    const forward = async (tt: T, port: number): Promise<number> => {
      const fwd = await startManager(tt.teardown, [testMapping({ containerPort: port })], world.dialer);
      return fwd.port();
    };

    t.test('integrity: 20 concurrent connections echo 4 MiB each, SHA-256 equal', async (t) => {
      const port = await forward(t, world.ports.echo);
      const res = await Promise.all(
        Array.from({ length: 20 }, async () => {
          const p = randomPayload(4 * MiB);
          const r = await echoRoundTrip(port, p);
          return sha256(p) === sha256(r.received);
        }),
      );
      t.equal(res.filter(Boolean).length, 20);
    });

    t.test('half-close: request, shutdown(WR), the whole 16 MiB reply arrives', async (t) => {
      const port = await forward(t, world.ports.reply);
      const s = await connect(port);
      const r = readAll(s);
      s.end('request');
      const got = await r;
      s.destroy();
      t.equal(got.ended, 'eof');
      t.equal(got.data.length, 16 * MiB);
    });

    t.test('half-close the other way: the server ends first, the client still sends 2 MiB', async (t) => {
      const port = await forward(t, world.ports.first);
      const s = await connect(port);
      const got = readAll(s);
      await new Promise<void>((r) => s.once('end', () => r())); // the server's EOF arrives first
      const payload = randomPayload(2 * MiB);
      s.end(payload); // then the client sends everything and ends
      const greeting = await got;
      s.destroy();
      t.equal(greeting.data.toString(), 'server speaks first, then stops talking\n', 'greeting, then a clean EOF');
      const line = `first-received ${payload.length} ${sha256(payload)}`;
      await until(() => world.output().includes(line), 10_000, 'the server to report what it received after its half-close');
      t.pass('the server received every byte, intact, after it had ended its side');
    });

    t.test('a reset by the server reaches the client as a reset', async (t) => {
      const port = await forward(t, world.ports.reset);
      const s = await connect(port);
      const r = readAll(s);
      s.write('x');
      const got = await r;
      t.equal(got.errorCode, 'ECONNRESET');
    });

    t.test('a reset by the client reaches the server (the echo stops and the relay ends)', async (t) => {
      const fwd = await startManager(t.teardown, [testMapping({ containerPort: world.ports.echo })], world.dialer);
      const s = await connect(fwd.port());
      s.write('x');
      await until(() => s.bytesRead === 1, 5000, 'the echo');
      s.resetAndDestroy();
      await until(() => fwd.records.some((x) => x['msg'] === 'connection closed'), 5000, 'the relay to end');
      t.equal(fwd.records.find((x) => x['msg'] === 'connection closed')?.['reason'], 'client-reset');
    });

    t.test('backend down: the client is reset, the listener survives; once up, it serves', async (t) => {
      const port = await forward(t, world.ports.late);
      const s = net.connect({ port, host: '127.0.0.1' });
      const got = await readAll(s);
      t.equal(got.errorCode, 'ECONNRESET', 'reset while the backend is down');
      world.backends.stdin?.write('listen-late\n');
      await until(async () => {
        try {
          return (await echoRoundTrip(port, Buffer.from('up'))).received.toString() === 'up';
        } catch {
          return false;
        }
      }, 10_000, 'the late backend');
      t.pass('served once the backend is up');
    });

    t.test(`the connections above ran on ${kind} ports`, async (t) => {
      // Raw sockets are counted (each accepted and each dialled or adopted one); none on the net.Socket path.
      const used = internals().rawTcp.uses - rawBefore;
      if (kind === 'raw') t.ok(used >= 2 * 20, `raw sockets used: ${used}`);
      else t.equal(used, 0, 'no raw socket used');
    });
  });
}
