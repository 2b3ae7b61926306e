// The forwarder with `netns` mappings, as users run it: rootless for real (portferry itself
// unprivileged, the container a user+net namespace owned by that user), a helper killed mid-run,
// and the demo in a namespace as root and as an unprivileged user.
import t from 'tap';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { createTopology } from '../../src/netns/topology.js';
import { NetnsDialer } from '../../src/netns/helper.js';
import { silentLogger } from '../../src/log.js';
import { skipUnless } from '../helpers/env.js';
import { testMapping } from '../helpers/mapping.js';
import { cliPath, connect, echoRoundTrip, freePort, nodeArgv, readAll, startManager, until } from '../helpers/net.js';
import { nsServer, netnsList } from '../netns/util.js';

const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
const needs = skipUnless({ root: true, tools: ['ip', 'nsenter', 'unshare', 'setpriv'] });

/** Runs `portferry ...args` as nobody; resolves once its `ready` line is out. */
function runAsNobody(teardown: (fn: () => unknown) => void, args: string[]): Promise<{ stderr: () => string; pid: number }> {
  const [cmd, argv] = nodeArgv(cliPath, ...args);
  const child = spawn(NOBODY[0] as string, [...NOBODY.slice(1), cmd, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: '/tmp' } });
  teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let err = '';
  return new Promise((resolve, reject) => {
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes('"msg":"ready"')) resolve({ stderr: () => err, pid: child.pid as number });
    });
    child.once('exit', (code) => reject(new Error(`portferry as nobody exited (${code}): ${err}`)));
  });
}

t.test('rootless for real: unprivileged portferry publishes a server on 127.0.0.1:80 inside a user+net namespace', needs, async (t) => {
  const topo = await createTopology({ mode: 'rootless' });
  t.teardown(() => topo.destroy());
  t.equal(topo.uid, 65534, 'the namespaces belong to nobody');
  const tcp = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '127.0.0.1', port: 80, token: 'ctr' });
  const udp = await nsServer(t.teardown, topo, 'ctr', { proto: 'udp', host: '127.0.0.1', port: 80 });
  t.equal(tcp.port, 80);
  t.equal(udp.port, 80);
  const hostPort = await freePort();
  const fwd = await runAsNobody(t.teardown, ['run', '--log-level', 'info', '--netns', topo.paths.ctr as string, '-p', `127.0.0.1:${hostPort}:127.0.0.1:80`, '-p', `127.0.0.1:${hostPort}:127.0.0.1:80/udp`]);
  t.match(fwd.stderr(), /"msg":"ready"/, 'portferry runs unprivileged');

  let sequentialOk = 0;
  for (let i = 0; i < 1000; i++) {
    const r = await echoRoundTrip(hostPort, Buffer.from(`seq ${i}`));
    if (r.received.toString() === `ctr\nseq ${i}`) sequentialOk++;
  }
  t.equal(sequentialOk, 1000, '1,000 sequential connections, each with its own data back');

  const concurrent = await Promise.all(
    Array.from({ length: 100 }, async (_, i) => {
      const payload = Buffer.alloc(64 * 1024, i);
      const r = await echoRoundTrip(hostPort, payload);
      return r.received.subarray(4).equals(payload);
    }),
  );
  t.equal(concurrent.filter(Boolean).length, 100, '100 concurrent connections, 64 KiB each, intact');

  // UDP: 100 clients at once, each 10 numbered datagrams, each gets exactly its own back.
  const udpOk = await Promise.all(
    Array.from({ length: 100 }, async (_, c) => {
      const sock = dgram.createSocket('udp4');
      t.teardown(() => sock.close());
      await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
      const got = new Set<string>();
      sock.on('message', (m) => got.add(m.toString()));
      for (let i = 0; i < 10; i++) {
        const msg = `client ${c} datagram ${i}`;
        await until(async () => {
          if (got.has(msg)) return true;
          sock.send(msg, hostPort, '127.0.0.1');
          await new Promise((r) => setTimeout(r, 50));
          return got.has(msg);
        }, 10_000, msg);
      }
      return [...got].every((m) => m.startsWith(`client ${c} `)) && got.size === 10;
    }),
  );
  t.equal(udpOk.filter(Boolean).length, 100, 'UDP through the rootless namespace: 100 clients, own replies only');
});

t.test('killing the namespace helper: the forwarder keeps running, new connections succeed after the restart', needs, async (t) => {
  const topo = await createTopology({ mode: 'root' });
  t.teardown(() => topo.destroy());
  const server = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '127.0.0.1', token: 'in-ns' });
  const dialer = new NetnsDialer({ netnsPath: topo.paths.ctr as string, logger: silentLogger() });
  t.teardown(() => dialer.close());
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: server.port })], dialer);

  const live = await connect(fwd.port());
  const liveData = readAll(live);
  live.write('before');
  await until(() => live.bytesRead >= 'in-ns\nbefore'.length, 5000, 'the first echo');
  const pid = dialer.helperPid();
  t.ok(pid !== null, 'a helper runs');
  process.kill(pid as number, 'SIGKILL');
  await until(() => dialer.helperPid() !== pid, 5000, 'the helper to be seen dead');

  // The in-flight connection may end or go on (its socket was handed over already); either is fine.
  live.end('after');
  const liveResult = await liveData;
  t.ok(['eof', 'error'].includes(liveResult.ended), `the in-flight connection ended (${liveResult.ended}) without harm`);

  for (let i = 0; i < 5; i++) {
    const r = await echoRoundTrip(fwd.port(), Buffer.from(`new ${i}`));
    t.equal(r.received.toString(), `in-ns\nnew ${i}`, `new connection ${i} succeeds`);
  }
  const newPid = dialer.helperPid();
  t.ok(newPid !== null && newPid !== pid, 'a new helper was started');
});

t.test('demo --once: backend in a named netns as root', needs, async (t) => {
  const [cmd, argv] = nodeArgv(cliPath, 'demo', '--once', '--port', '0');
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 0, out);
  t.match(out, /inside network namespace pf-ctr-/);
  t.match(out, /ok: GET .* answered 200/);
  const mine = /pf-ctr-[0-9a-f]+/.exec(out)?.[0] ?? 'none';
  t.notOk(netnsList().includes(mine), `its namespace ${mine} is gone`);
});

t.test('demo --once: backend in a rootless user+net namespace as an unprivileged user', needs, async (t) => {
  const [cmd, argv] = nodeArgv(cliPath, 'demo', '--once', '--port', '0');
  const child = spawn(NOBODY[0] as string, [...NOBODY.slice(1), cmd, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: '/tmp' } });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 0, out);
  t.match(out, /inside a rootless user\+network namespace \(\/proc\/\d+\/ns\/net\)/);
  t.match(out, /ok: GET .* answered 200/);
  const pid = /\/proc\/(\d+)\/ns\/net/.exec(out)?.[1];
  await until(() => {
    try {
      process.kill(Number(pid), 0);
      return false;
    } catch {
      return true;
    }
  }, 5000, 'the namespace holder to be gone');
  t.pass('the rootless namespace holder exited');
});
