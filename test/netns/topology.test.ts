// The throwaway namespace world: real `ip netns`, real veths, real TCP between the namespaces, and
// nothing left behind afterwards.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { createTopology, type Topology } from '../../src/netns/topology.js';
import { PortferryError } from '../../src/errors.js';
import { skipUnless } from '../helpers/env.js';
import { fixture, linkNames, nodeArgv, netnsList, nsServer, pidAlive } from './util.js';

const ROOT = { root: true, tools: ['ip', 'nsenter', 'sysctl'] } as const;
const ROOTLESS = { root: true, tools: ['ip', 'nsenter', 'unshare', 'setpriv'] } as const;

/** What the host namespace shows of a topology's names and interfaces. */
function leftovers(names: readonly (string | null)[]): string[] {
  const ns = netnsList();
  const links = linkNames();
  const left = names.filter((n): n is string => n !== null && ns.includes(n)).map((n) => `netns ${n}`);
  // Our interfaces are made inside our namespaces: none of them may ever show up here.
  for (const l of links) if (l === 'to-ctr' || l === 'to-client' || l === 'pf-br0') left.push(`link ${l}`);
  return left;
}

async function tcpVia(topo: Topology, from: 'host' | 'ctr' | 'client', host: string, port: number, payload: string): Promise<string> {
  const [cmd, args] = nodeArgv(fixture('client.mjs'), host, String(port), payload);
  const { stdout } = await topo.exec(from, cmd, args);
  return stdout;
}

t.test('root mode: host, ctr and client joined by veths, reachable every way, forwarding only in host', skipUnless(ROOT), async (t) => {
  const rootForward = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
  const topo = await createTopology({ mode: 'root', client: true, ipv6: true });
  t.teardown(() => topo.destroy());
  t.equal(topo.mode, 'root');
  for (const role of ['host', 'ctr', 'client'] as const) {
    t.match(topo.names[role], new RegExp(`^pf-${role}-[0-9a-f]{8}$`), `${role} has a pf- name with a random suffix`);
    t.equal(topo.paths[role], `/run/netns/${topo.names[role]}`);
    t.ok(netnsList().includes(topo.names[role] as string), `${role} is in ip netns list`);
  }
  t.equal(topo.hostIfCtr, 'to-ctr');
  t.equal(topo.userns, null);

  const ctrEcho = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '::', token: 'ctr' });
  const clientEcho = await nsServer(t.teardown, topo, 'client', { proto: 'tcp', host: '::', token: 'client' });
  t.equal(await tcpVia(topo, 'host', topo.addrs.ctr4, ctrEcho.port, 'a'), 'ctr\na', 'host → ctr (IPv4)');
  t.equal(await tcpVia(topo, 'client', topo.addrs.ctr4, ctrEcho.port, 'b'), 'ctr\nb', 'client → ctr through host (IPv4)');
  t.equal(await tcpVia(topo, 'client', topo.addrs.ctr6, ctrEcho.port, 'c'), 'ctr\nc', 'client → ctr through host (IPv6)');
  t.equal(await tcpVia(topo, 'ctr', topo.addrs.client4, clientEcho.port, 'd'), 'client\nd', 'ctr → client through host');
  t.equal(await tcpVia(topo, 'client', topo.addrs.hostClient4, ctrEcho.port, 'e').catch((e: Error) => e.message).then((s) => s.includes('ECONNREFUSED')), true, 'the host address is the host, not ctr');

  const sysctl = async (ns: 'host' | 'ctr' | 'client', key: string): Promise<string> => (await topo.exec(ns, 'sysctl', ['-n', key])).stdout.trim();
  t.equal(await sysctl('host', 'net.ipv4.ip_forward'), '1', 'forwarding on in host');
  t.equal(await sysctl('host', 'net.ipv6.conf.all.forwarding'), '1', 'IPv6 forwarding on in host');
  t.equal(await sysctl('ctr', 'net.ipv4.ip_forward'), '0', 'not in ctr');
  t.equal(await sysctl('client', 'net.ipv4.ip_forward'), '0', 'not in client');
  t.equal(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), rootForward, "the caller's own namespace is untouched");
  t.same(leftovers([]), [], 'no interface of ours appears in the caller namespace');

  const names = Object.values(topo.names);
  await topo.destroy();
  await topo.destroy();
  t.same(leftovers(names), [], 'destroy (twice) leaves nothing');
  await t.rejects(topo.exec('ctr', 'true', []), { code: 'PF_NETNS_SETUP' }, 'a destroyed topology runs nothing');
});

t.test('root mode with a bridge and without IPv6 or client', skipUnless(ROOT), async (t) => {
  const topo = await createTopology({ mode: 'root', bridge: true, ipv6: false });
  t.teardown(() => topo.destroy());
  t.equal(topo.hostIfCtr, 'pf-br0');
  t.equal(topo.names.client, null);
  t.equal(topo.paths.client, null);
  t.equal(topo.addrs.ctr6, '');
  t.equal(topo.addrs.client4, '');
  const { stdout } = await topo.exec('host', 'ip', ['-o', 'link', 'show', 'master', 'pf-br0']);
  t.match(stdout, /to-ctr/, 'the ctr veth is a port of the bridge');
  const echo = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '0.0.0.0', token: 'br' });
  t.equal(await tcpVia(topo, 'host', topo.addrs.ctr4, echo.port, 'x'), 'br\nx', 'host → ctr across the bridge');
  t.rejects(topo.exec('client', 'true', []), { code: 'PF_NETNS_SETUP' }, 'no client namespace to run in');
  const names = Object.values(topo.names);
  await topo.destroy();
  t.same(leftovers(names), []);
});

t.test('a failure at any setup step removes everything made so far', skipUnless(ROOT), async (t) => {
  for (const step of ['netns', 'links', 'addresses', 'forwarding', 'ready']) {
    let seen: readonly (string | null)[] = [];
    const err = await createTopology({ mode: 'root', client: true }, {
      afterStep(s, topo) {
        seen = Object.values(topo.names);
        if (s === step) throw new Error(`failing on purpose after ${s}`);
      },
    }).then(
      () => null,
      (e: unknown) => e,
    );
    t.type(err, PortferryError, `after ${step}: a PortferryError`);
    t.equal((err as PortferryError).code, 'PF_NETNS_SETUP');
    t.match((err as PortferryError).message, `failing on purpose after ${step}`, 'the message says why');
    t.equal(seen.filter((n) => n !== null).length, 3, `after ${step}: the namespaces had been made`);
    t.same(leftovers(seen), [], `after ${step}: nothing left`);
  }
});

t.test('rootless mode: a user+net namespace owned by nobody, loopback only', skipUnless(ROOTLESS), async (t) => {
  const topo = await createTopology({ mode: 'rootless' });
  t.teardown(() => topo.destroy());
  t.equal(topo.mode, 'rootless');
  t.equal(topo.uid, 65534);
  t.same(topo.names, { host: null, ctr: null, client: null });
  const holderPid = Number(/^\/proc\/(\d+)\/ns\/net$/.exec(topo.paths.ctr ?? '')?.[1]);
  t.ok(holderPid > 0, 'paths.ctr is /proc/PID/ns/net of the holder');
  t.equal(topo.userns, `/proc/${holderPid}/ns/user`);
  t.match(readFileSync(`/proc/${holderPid}/status`, 'utf8'), /^Uid:\s+65534\s/m, 'the holder runs as nobody');

  t.equal((await topo.exec('ctr', 'id', ['-u'])).stdout.trim(), '0', 'root inside its own user namespace');
  t.equal((await topo.exec('host', 'id', ['-u'])).stdout.trim(), '65534', 'nobody outside');
  const links = (await topo.exec('ctr', 'ip', ['-o', 'link', 'show'])).stdout.trim().split('\n');
  t.equal(links.length, 1, 'only loopback');
  t.match(links[0], /lo: <LOOPBACK,UP/, 'and it is up');
  const ownNetns = (await topo.exec('host', 'readlink', ['/proc/self/ns/net'])).stdout.trim();
  const ctrNetns = (await topo.exec('ctr', 'readlink', ['/proc/self/ns/net'])).stdout.trim();
  t.not(ctrNetns, ownNetns, 'ctr is another network namespace');

  // Root inside may bind a privileged port; the server runs as nobody on the host.
  const echo = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '127.0.0.1', port: 80, token: 'rl' });
  t.equal(echo.port, 80);
  t.match(readFileSync(`/proc/${echo.child.pid}/status`, 'utf8'), /^Uid:\s+65534\s/m, 'processes inside run as nobody');
  t.equal(await tcpVia(topo, 'ctr', '127.0.0.1', 80, 'y'), 'rl\ny', 'loopback inside ctr serves');
  await t.rejects(topo.exec('client', 'true', []), { code: 'PF_NETNS_SETUP' });

  await topo.destroy();
  t.notOk(pidAlive(holderPid), 'the holder is gone');
  t.notOk(pidAlive(echo.child.pid as number), 'the spawned server is gone');
});

t.test('rootless topology refuses a client namespace', skipUnless(ROOTLESS), async (t) => {
  await t.rejects(createTopology({ mode: 'rootless', client: true }), { code: 'PF_NETNS_SETUP' });
});
