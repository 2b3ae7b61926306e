// Traffic through the kernel rules portferry installs: client, host and container namespaces
// (src/netns/topology.ts). For each backend: rules applied in the host namespace carry a TCP and a
// UDP exchange from the client namespace (IPv4 and IPv6) and from the host's own 127.0.0.1 to
// echo servers in the container; --check passes; after delete the port is unreachable and check
// lists the missing rules.
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import t, { type Test } from 'tap';
import { skipUnless } from '../helpers/env.js';
import { testMapping } from '../helpers/mapping.js';
import { createTopology, type NsName, type Topology } from '../../src/netns/topology.js';
import { applyRules, checkRules, deleteRules, prefixedRunner, type Backend } from '../../src/rules/apply.js';
import { fromMappings, parseContainerCidr } from '../../src/rules/model.js';

// TCP and UDP echo on every address; prints "ready" once both are bound.
const ECHO = `
const net = require('node:net'), dgram = require('node:dgram');
const tcp = net.createServer((s) => s.pipe(s)).listen(80, '::', () => {
  const udp = dgram.createSocket({ type: 'udp6' });
  udp.on('message', (m, r) => udp.send(m, r.port, r.address));
  udp.bind(53, '::', () => console.log('ready'));
});`;

// One exchange: argv proto host port; prints the echoed text, or "failed: <reason>" (exit 1).
// The 2 s bound only ends a lost UDP exchange; it is not a timing assertion.
const CLIENT = `
const [proto, host, port] = process.argv.slice(1);
const fail = (why) => { console.log('failed: ' + why); process.exit(1); };
setTimeout(() => fail('no reply within 2 s'), 2000).unref();
if (proto === 'tcp') {
  const s = require('node:net').connect({ host, port: Number(port) }, () => s.end('hello-tcp'));
  let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => { console.log(got); process.exit(0); });
  s.on('error', (e) => fail(e.code));
} else {
  const u = require('node:dgram').createSocket(host.includes(':') ? 'udp6' : 'udp4');
  u.on('message', (m) => { console.log(String(m)); process.exit(0); });
  u.on('error', (e) => fail(e.code));
  u.connect(Number(port), host, () => u.send('hello-udp'));
}`;

async function exchange(topo: Topology, from: NsName, proto: 'tcp' | 'udp', host: string, port: number): Promise<string> {
  try {
    const { stdout } = await topo.exec(from, process.execPath, ['-e', CLIENT, proto, host, String(port)]);
    return stdout.trim();
  } catch (e) {
    const out = (e as { stdout?: string }).stdout ?? String(e);
    return out.trim() || String(e);
  }
}

async function startEcho(t: Test, topo: Topology): Promise<ChildProcess> {
  const child = topo.spawn('ctr', process.execPath, ['-e', ECHO], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill();
  });
  let buf = '';
  child.stdout?.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: string) => {
      buf += d;
      if (buf.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`echo server exited (${String(code)}) before ready`)));
  });
  return child;
}

t.test('kernel rules carry traffic, check, delete', skipUnless({ root: true, tools: ['ip', 'iptables', 'nft', 'nsenter'] }), async (t) => {
  const topo = await createTopology({ client: true, mode: 'root' });
  t.teardown(() => topo.destroy());
  const echo = await startEcho(t, topo);
  t.teardown(async () => {
    if (echo.exitCode === null) {
      echo.kill();
      await once(echo, 'exit');
    }
  });
  const a = topo.addrs;
  const mappings = [
    testMapping({ hostIP: null, hostPort: 8080, containerIP: a.ctr4, containerPort: 80, protocol: 'tcp' }),
    testMapping({ hostIP: null, hostPort: 5300, containerIP: a.ctr4, containerPort: 53, protocol: 'udp' }),
    testMapping({ hostIP: null, hostPort: 8080, containerIP: a.ctr6, containerPort: 80, protocol: 'tcp' }),
    testMapping({ hostIP: null, hostPort: 5300, containerIP: a.ctr6, containerPort: 53, protocol: 'udp' }),
  ];
  const input = fromMappings({
    network: 'pfnet',
    containerID: 'traffic1',
    mappings,
    containerCidrs: [parseContainerCidr(`${a.ctr4}/${a.ctrPrefix4}`, 'cidr'), parseContainerCidr(`${a.ctr6}/${a.ctrPrefix6}`, 'cidr')],
  });
  const runner = prefixedRunner(['ip', 'netns', 'exec', topo.names.host as string]);

  for (const backend of ['iptables', 'nftables'] as Backend[]) {
    await t.test(backend, async (t) => {
      t.equal(await exchange(topo, 'client', 'tcp', a.hostClient4, 8080), 'failed: ECONNREFUSED', 'before apply: nothing on the host port');
      const applied = await applyRules(input, backend, runner);
      t.same(applied.warnings, [], 'no warnings (conntrack is installed)');
      t.teardown(() => deleteRules({ network: 'pfnet', containerID: 'traffic1' }, backend, runner));

      const localnet = await topo.exec('host', 'sysctl', ['-n', `net.ipv4.conf.${topo.hostIfCtr}.route_localnet`]);
      t.equal(localnet.stdout.trim(), '1', 'route_localnet set on the host side of the container link');

      t.equal(await exchange(topo, 'client', 'tcp', a.hostClient4, 8080), 'hello-tcp', 'client → host:8080/tcp (IPv4)');
      t.equal(await exchange(topo, 'client', 'udp', a.hostClient4, 5300), 'hello-udp', 'client → host:5300/udp (IPv4)');
      t.equal(await exchange(topo, 'client', 'tcp', a.hostClient6, 8080), 'hello-tcp', 'client → host:8080/tcp (IPv6)');
      t.equal(await exchange(topo, 'client', 'udp', a.hostClient6, 5300), 'hello-udp', 'client → host:5300/udp (IPv6)');
      t.equal(await exchange(topo, 'host', 'tcp', '127.0.0.1', 8080), 'hello-tcp', 'host 127.0.0.1:8080/tcp');
      t.equal(await exchange(topo, 'host', 'udp', '127.0.0.1', 5300), 'hello-udp', 'host 127.0.0.1:5300/udp');

      t.same(await checkRules(input, backend, runner), { ok: true, missing: [] }, 'check passes');

      const del = await deleteRules({ network: 'pfnet', containerID: 'traffic1' }, backend, runner);
      t.ok(del.scripts.length > 0, 'delete ran');
      t.equal(await exchange(topo, 'client', 'tcp', a.hostClient4, 8080), 'failed: ECONNREFUSED', 'after delete: TCP port unreachable');
      t.equal(await exchange(topo, 'host', 'tcp', '127.0.0.1', 8080), 'failed: ECONNREFUSED', 'after delete: 127.0.0.1 unreachable');
      t.match(await exchange(topo, 'client', 'udp', a.hostClient4, 5300), /^failed: /, 'after delete: UDP gets no echo');
      const check = await checkRules(input, backend, runner);
      t.equal(check.ok, false, 'check fails');
      t.ok(check.missing.some((m) => m.includes('8080')), 'listing the missing rules');
    });
  }
});
