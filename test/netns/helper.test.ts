// The namespace dialer against a real namespace: a server on 127.0.0.1 INSIDE ctr (which the host
// namespace cannot reach), sockets handed back from the helper, and the helper's death.
import t, { type Test } from 'tap';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { createTopology, type Topology } from '../../src/netns/topology.js';
import { NetnsDialer } from '../../src/netns/helper.js';
import { DirectDialer, dialTcpAsync } from '../../src/proxy/dialer.js';
import { memoryLogger } from '../../src/log.js';
import { PortferryError } from '../../src/errors.js';
import { skipUnless } from '../helpers/env.js';
import { internals } from '../../src/internals.js';
import { nsServer, pidAlive, readAll, sha256, until } from './util.js';

// Run twice: as is (the native socket helper when it is built) and by helper-fallback.test.ts with
// PORTFERRY_NSD=0 (the Node helper). Each run checks it is on the path it means to test.
const native = internals().nsSockets.on;
t.test(`the namespace path under test: ${native ? 'native (pf-nsd)' : 'the Node helper'}`, async (t) => {
  t.equal(native, process.env['PORTFERRY_NSD'] !== '0', `nsSockets ${native ? 'on' : `off: ${internals().nsSockets.why}`}`);
});

const gate = skipUnless({ root: true, tools: ['ip', 'nsenter', 'unshare', 'setpriv'] });

let topo: Topology | null = null;
async function world(): Promise<Topology> {
  topo ??= await createTopology({ mode: 'root', ipv6: true });
  return topo;
}
t.teardown(() => topo?.destroy());

function newDialer(t: Test, path: string): { dialer: NetnsDialer; records: Record<string, unknown>[] } {
  const { logger, records } = memoryLogger('debug');
  const dialer = new NetnsDialer({ netnsPath: path, logger });
  t.teardown(() => dialer.close());
  return { dialer, records };
}

/** Reads the `TOKEN\n` greeting the fixture server sends first. */
async function greeting(s: net.Socket): Promise<string> {
  s.resume();
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer): void => {
      chunks.push(d);
      const all = Buffer.concat(chunks);
      const nl = all.indexOf(10);
      if (nl < 0) return;
      s.off('data', onData);
      s.pause();
      if (nl + 1 < all.length) s.unshift(all.subarray(nl + 1));
      resolve(all.subarray(0, nl).toString());
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

const MiB = 1 << 20;

t.test('TCP: dials 127.0.0.1 inside ctr, which the host namespace cannot reach; 1 MiB both ways', gate, async (t) => {
  const tp = await world();
  const token = randomBytes(8).toString('hex');
  const echo = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1', token });
  const { dialer, records } = newDialer(t, tp.paths.ctr as string);
  t.equal(dialer.kind, 'netns');

  // The same address from the host namespace is not this server (refused, or someone else's).
  const direct = await dialTcpAsync(new DirectDialer(), { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 2000 }).then(
    async (s) => {
      s.setTimeout(500, () => s.destroy());
      const first = await greeting(s).catch(() => '');
      s.destroy();
      return first;
    },
    (err: unknown) => (err as PortferryError).code,
  );
  t.not(direct, token, 'the host namespace does not reach the server inside ctr');

  const s = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 5000 });
  t.ok(s.isPaused(), 'returned paused');
  t.equal(s.allowHalfOpen, true, 'allowHalfOpen is set');
  t.equal(s.remoteAddress, '127.0.0.1');
  t.equal(s.remotePort, echo.port);
  t.equal(await greeting(s), token, 'the server greeting (sent before any request) arrives intact');
  const payload = randomBytes(MiB);
  const reply = readAll(s);
  s.end(payload); // half-close: the echo server ends after echoing everything
  const got = await reply;
  t.equal(got.length, MiB, '1 MiB back');
  t.equal(sha256(got), sha256(payload), 'the same bytes');
  t.ok(records.some((r) => r['msg'] === (native ? 'namespace socket helper started' : 'netns helper started')), 'the helper start is logged');
  t.equal(dialer.path(), native ? 'native' : 'node');
});

t.test('TCP half-close from the container side: we can still send after its FIN', gate, async (t) => {
  const tp = await world();
  const srv = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1', mode: 'close-first', token: 'bye' });
  const { dialer } = newDialer(t, tp.paths.ctr as string);
  const s = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: srv.port }, { timeoutMs: 5000 });
  const fromServer = await readAll(s); // the server greets and half-closes at once
  t.equal(fromServer.toString(), 'bye\n', 'greeting, then EOF');
  t.equal(s.writable, true, 'our write side is still open after the container half-closed');
  const payload = randomBytes(MiB);
  const closed = new Promise((resolve) => s.once('close', resolve));
  s.end(payload);
  const m = await srv.waitFor(/^received (\d+) ([0-9a-f]+)$/);
  t.equal(Number(m[1]), MiB, 'the container received all of it after its own FIN');
  t.equal(m[2], sha256(payload));
  await closed;
});

t.test('UDP: a channel through the namespace, IPv4 and IPv6 loopback inside ctr', gate, async (t) => {
  const tp = await world();
  for (const host of ['127.0.0.1', '::1']) {
    const srv = await nsServer(t.teardown, tp, 'ctr', { proto: 'udp', host });
    const { dialer } = newDialer(t, tp.paths.ctr as string);
    const ch = await dialer.openUdp({ ip: host, port: srv.port });
    t.teardown(() => ch.close());
    const replies: string[] = [];
    const all = new Promise<void>((resolve) =>
      ch.onMessage((m) => {
        replies.push(m.toString());
        if (replies.length === 20) resolve();
      }),
    );
    ch.onError((err) => t.fail(`channel error: ${err.message}`));
    // One at a time: on loopback nothing is lost, and the order is kept.
    for (let i = 0; i < 20; i++) ch.send(Buffer.from(`d${i}`));
    await all;
    t.same(replies, Array.from({ length: 20 }, (_, i) => `d${i}`), `${host}: 20 datagrams echoed in order`);
    // The channel is a really connected socket: the kernel reports a closed port (ICMP) to it.
    srv.child.kill('SIGKILL');
    await new Promise((r) => srv.child.once('exit', r));
    const dead = await dialer.openUdp({ ip: host, port: srv.port });
    t.teardown(() => dead.close());
    const refused = new Promise<Error>((resolve) => dead.onError(resolve));
    dead.send(Buffer.from('anyone?'));
    t.match(await refused, { code: 'ECONNREFUSED' }, `${host}: ICMP port unreachable surfaces as ECONNREFUSED`);
  }
});

t.test('dial errors are coded: refused, timed out, aborted', gate, async (t) => {
  const tp = await world();
  const { dialer } = newDialer(t, tp.paths.ctr as string);
  // A port nobody listens on inside ctr: bind one, note it, close it.
  const probe = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1' });
  probe.child.kill('SIGKILL');
  await new Promise((r) => probe.child.once('exit', r));
  const refused = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: probe.port }, { timeoutMs: 5000 }).catch((e: unknown) => e);
  t.type(refused, PortferryError);
  t.match(refused, { code: 'PF_DIAL_FAILED', details: { errno: 'ECONNREFUSED', target: `127.0.0.1:${probe.port}` } });
  // An address on ctr's link that nobody has: ARP never answers, so the connect cannot finish.
  const silent = { ip: '10.199.1.99', port: 80 };
  await t.rejects(dialTcpAsync(dialer, silent, { timeoutMs: 300 }), { code: 'PF_DIAL_TIMEOUT', message: /10\.199\.1\.99:80 timed out after 300 ms/ });
  const ac = new AbortController();
  const p = dialTcpAsync(dialer, silent, { timeoutMs: 5000, signal: ac.signal });
  ac.abort();
  await t.rejects(p, { code: 'PF_DIAL_FAILED', details: { errno: 'ABORTED' } });
});

t.test('helper killed mid-run: open connections live on, pending dials fail, the next dial restarts it', gate, async (t) => {
  const tp = await world();
  const echo = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1', token: 'k' });
  const { dialer, records } = newDialer(t, tp.paths.ctr as string);
  const before = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 5000 });
  t.equal(await greeting(before), 'k');
  const pid = dialer.helperPid();
  t.ok(pid !== null && pidAlive(pid), 'a helper runs');

  if (native) {
    // Native: a dial in flight is this process's own connect (the helper only made the socket);
    // what waits on the helper is a take from an empty pool (test/netns/nsd.test.ts).
    process.kill(pid as number, 'SIGKILL');
  } else {
    const pending = dialTcpAsync(dialer, { ip: '10.199.1.99', port: 80 }, { timeoutMs: 20_000 });
    process.kill(pid as number, 'SIGKILL');
    await t.rejects(pending, { code: 'PF_NETNS_HELPER', message: /killed by SIGKILL/ }, 'the dial in flight fails with PF_NETNS_HELPER');
  }
  await until(() => dialer.helperPid() === null, 'the dialer to notice the death');
  const warn = records.find((r) => r['level'] === 40 && r['pid'] === pid);
  t.ok(warn, 'the death is logged at warn');
  t.match(warn, native ? { reason: /killed by SIGKILL/ } : { signal: 'SIGKILL', netns: tp.paths.ctr });

  const after = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 5000 });
  t.equal(await greeting(after), 'k', 'the next dial succeeds');
  const newPid = dialer.helperPid();
  t.ok(newPid !== null && newPid !== pid, 'through a new helper');

  // The connection made before the death was never the helper's: it still works.
  const reply = readAll(before);
  before.end('still here');
  t.equal((await reply).toString(), 'still here', 'a connection from before the death still relays');
  after.destroy();
  await dialer.close();
  t.notOk(pidAlive(newPid as number), 'close() stopped the helper');
  t.notOk(records.some((r) => r['level'] === 40 && r['pid'] === newPid), 'a deliberate stop is not a warning');
  await t.rejects(dialTcpAsync(dialer, { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 1000 }), { code: 'PF_NETNS_HELPER', message: /closed/ });
  await dialer.close();
  t.pass('close() twice is fine');
});

t.test('a path that is not a network namespace fails the dial with PF_NETNS_INVALID, no helper started', async (t) => {
  const { dialer } = newDialer(t, '/proc/self/ns/user');
  await t.rejects(dialTcpAsync(dialer, { ip: '127.0.0.1', port: 1 }, { timeoutMs: 1000 }), { code: 'PF_NETNS_INVALID' });
  t.equal(dialer.helperPid(), null);
});

t.test('a helper that cannot enter the namespace fails with PF_NETNS_HELPER naming why', gate, async (t) => {
  // Joining the user namespace one is already in is refused (EINVAL): nsenter exits 1.
  const { logger, records } = memoryLogger();
  const dialer = new NetnsDialer({ netnsPath: (await world()).paths.ctr as string, userns: '/proc/self/ns/user', logger });
  t.teardown(() => dialer.close());
  const err = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: 1 }, { timeoutMs: 5000 }).catch((e: unknown) => e);
  t.match(err, { code: 'PF_NETNS_HELPER', message: native ? /could not join the user namespace \/proc\/self\/ns\/user/ : /exited with code 1: nsenter: .*ns\/user/ }, `the error names the user namespace (nsSockets: ${internals().nsSockets.why})`);
  t.ok(records.some((r) => r['level'] === 40), 'and logged at warn');
});

t.test('many dials through one helper: 300 sequential and 100 concurrent, each with its own data', gate, async (t) => {
  const tp = await world();
  const echo = await nsServer(t.teardown, tp, 'ctr', { proto: 'tcp', host: '127.0.0.1', token: 'm' });
  const { dialer } = newDialer(t, tp.paths.ctr as string);
  const once = async (i: number): Promise<boolean> => {
    const s = await dialTcpAsync(dialer, { ip: '127.0.0.1', port: echo.port }, { timeoutMs: 10_000 });
    const reply = readAll(s);
    s.end(`conn-${i}`);
    return (await reply).toString() === `m\nconn-${i}`;
  };
  let ok = 0;
  for (let i = 0; i < 300; i++) if (await once(i)) ok++;
  t.equal(ok, 300, '300 sequential connections, all correct');
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => once(1000 + i)));
  t.equal(results.filter(Boolean).length, 100, '100 concurrent connections, all correct');
  const pid = dialer.helperPid();
  t.ok(pid !== null, 'one helper served them all');
});
