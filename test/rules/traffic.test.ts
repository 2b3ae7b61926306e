// Traffic through the kernel rules portferry installs: client, host and container namespaces
// (src/netns/topology.ts). For each backend: rules applied in the host namespace carry a TCP and a
// UDP exchange from the client namespace (IPv4 and IPv6) and from the host's own 127.0.0.1 to
// echo servers in the container; --check passes; after delete the port is unreachable and check
// lists the missing rules.
import t from 'tap';
import { skipUnless } from '../helpers/env.js';
import { exchange as exchangeIn, inNetns, startEcho } from '../helpers/exchange.js';
import { testMapping } from '../helpers/mapping.js';
import { createTopology, type NsName, type Topology } from '../../src/netns/topology.js';
import { applyRules, checkRules, deleteRules, prefixedRunner, type Backend } from '../../src/rules/apply.js';
import { fromMappings, parseContainerCidr } from '../../src/rules/model.js';

const exchange = (topo: Topology, from: NsName, proto: 'tcp' | 'udp', host: string, port: number): Promise<string> =>
  exchangeIn(inNetns(topo.names[from] as string), proto, host, port);

t.test('kernel rules carry traffic, check, delete', skipUnless({ root: true, tools: ['ip', 'iptables', 'nft', 'nsenter'] }), async (t) => {
  const topo = await createTopology({ client: true, mode: 'root' });
  t.teardown(() => topo.destroy());
  await startEcho(t.teardown.bind(t), inNetns(topo.names.ctr as string));
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
