// Oracle: the real CNI portmap plugin (Debian containernetworking-plugins) and portferry, given the
// same network name, container ID, container addresses and port mappings, leave identical nat
// tables (iptables-save / ip6tables-save, counters and '#' lines removed). Each side works in its
// own fresh namespace. Also DEL vs --delete with a second container present, apply twice, delete twice.
import t from 'tap';
import { skipUnless } from '../helpers/env.js';
import { applyRules, deleteRules } from '../../src/rules/apply.js';
import { dnatChainName, fromCniPortMappings, parseContainerCidr, type CniPortMapping, type PortmapOptionsInput } from '../../src/rules/model.js';
import { inNs, makeNs, natDump, nsRunner } from './ns.js';

const PORTMAP = '/usr/lib/cni/portmap';
const gate = skipUnless({ root: true, tools: ['ip', 'iptables-save', 'ip6tables-save', 'iptables-restore', PORTMAP] });

interface Case {
  readonly network: string;
  readonly containerID: string;
  readonly ips: readonly string[];
  readonly portMappings: readonly CniPortMapping[];
  readonly options?: PortmapOptionsInput;
}

function pluginConfig(c: Case, sandbox: string): string {
  const conf: Record<string, unknown> = {
    cniVersion: '1.0.0',
    name: c.network,
    type: 'portmap',
    capabilities: { portMappings: true },
    runtimeConfig: { portMappings: c.portMappings },
    // The plugin takes addresses whose interface is the sandbox interface named CNI_IFNAME.
    prevResult: {
      cniVersion: '1.0.0',
      interfaces: [
        { name: 'veth-host', mac: '02:00:00:00:00:01' },
        { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: `/run/netns/${sandbox}` },
      ],
      ips: c.ips.map((address) => ({ address, interface: 1 })),
    },
  };
  if (c.options?.snat !== undefined) conf['snat'] = c.options.snat;
  if (c.options?.markMasqBit !== undefined) conf['markMasqBit'] = c.options.markMasqBit;
  return JSON.stringify(conf);
}

async function portmap(ns: string, sandbox: string, command: 'ADD' | 'DEL', c: Case): Promise<void> {
  const r = await inNs(
    ns,
    'env',
    [`CNI_COMMAND=${command}`, `CNI_CONTAINERID=${c.containerID}`, `CNI_NETNS=/run/netns/${sandbox}`, 'CNI_IFNAME=eth0', 'CNI_PATH=/usr/lib/cni', PORTMAP],
    pluginConfig(c, sandbox),
  );
  if (r.code !== 0) throw new Error(`portmap ${command} failed (${r.code}): ${r.stdout} ${r.stderr}`);
}

function ours(c: Case) {
  return fromCniPortMappings({
    network: c.network,
    containerID: c.containerID,
    containerNets: c.ips.map((ip) => parseContainerCidr(ip, 'ips')),
    portMappings: c.portMappings,
    ...(c.options === undefined ? {} : { options: c.options }),
  });
}

async function dumps(ns: string): Promise<{ v4: string; v6: string }> {
  return { v4: await natDump(ns, 4), v6: await natDump(ns, 6) };
}

const twenty: CniPortMapping[] = Array.from({ length: 20 }, (_, i) => ({
  hostPort: 9000 + i,
  containerPort: 100 + i,
  protocol: i % 3 === 0 ? 'udp' : 'tcp',
}));
// 13 tcp + 7 udp is under 15 each; add more tcp so a second multiport group is needed.
const twentyPlus = [...twenty, ...Array.from({ length: 4 }, (_, i) => ({ hostPort: 9100 + i, containerPort: 200 + i, protocol: 'tcp' }))];

const cases: Record<string, Case> = {
  'one mapping': {
    network: 'podman',
    containerID: 'c0ffee0001',
    ips: ['10.88.0.2/16'],
    portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
  },
  '24 mappings across tcp and udp (two multiport groups)': {
    network: 'mynet',
    containerID: 'c0ffee0002',
    ips: ['10.88.0.3/24'],
    portMappings: twentyPlus,
  },
  'host IPs, including 0.0.0.0 and one of the other family': {
    network: 'mynet',
    containerID: 'c0ffee0003',
    ips: ['10.88.0.4/24'],
    portMappings: [
      { hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '127.0.0.1' },
      { hostPort: 8081, containerPort: 81, protocol: 'tcp', hostIP: '0.0.0.0' },
      { hostPort: 8082, containerPort: 82, protocol: 'udp', hostIP: '192.0.2.7' },
      { hostPort: 8083, containerPort: 83, protocol: 'tcp', hostIP: '::1' },
    ],
  },
  // Quirk (issue 14): every mapping has a host IP of the other family, so the container chain stays
  // empty, yet the entry rule for its port is written and jumps to it. The plugin does exactly this.
  'only a host IP of the other family: an entry rule into an empty chain': {
    network: 'mynet',
    containerID: 'c0ffee0008',
    ips: ['10.88.0.10/24'],
    portMappings: [{ hostPort: 8443, containerPort: 443, protocol: 'tcp', hostIP: '::1' }],
  },
  'IPv6 and IPv4 container addresses (ip6tables)': {
    network: 'dual',
    containerID: 'c0ffee0004',
    ips: ['10.88.0.5/24', 'fd00:88::5/64'],
    portMappings: [
      { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
      { hostPort: 8081, containerPort: 81, protocol: 'udp', hostIP: '::1' },
      { hostPort: 8082, containerPort: 82, protocol: 'tcp', hostIP: '::' },
      { hostPort: 8083, containerPort: 83, protocol: 'tcp', hostIP: '127.0.0.1' },
    ],
  },
  'IPv6 only': {
    network: 'v6net',
    containerID: 'c0ffee0005',
    ips: ['fd00:88::6/64'],
    portMappings: [
      { hostPort: 443, containerPort: 8443, protocol: 'tcp' },
      { hostPort: 53, containerPort: 53, protocol: 'udp' },
    ],
  },
  'snat off': {
    network: 'mynet',
    containerID: 'c0ffee0006',
    ips: ['10.88.0.7/24', 'fd00:88::7/64'],
    portMappings: [
      { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
      { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' },
    ],
    options: { snat: false },
  },
  'another mark bit': {
    network: 'mynet',
    containerID: 'c0ffee0007',
    ips: ['10.88.0.8/24'],
    portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
    options: { markMasqBit: 5 },
  },
};

t.test('portmap ADD and portferry apply leave identical nat tables', gate, async (t) => {
  const sandbox = makeNs(t, 'sbx');
  for (const [name, c] of Object.entries(cases)) {
    await t.test(name, async (t) => {
      const theirs = makeNs(t, 'orc');
      const mine = makeNs(t, 'our');
      await portmap(theirs, sandbox, 'ADD', c);
      const result = await applyRules(ours(c), 'iptables', nsRunner(mine));
      const want = await dumps(theirs);
      const got = await dumps(mine);
      t.equal(got.v4, want.v4, 'iptables-save -t nat');
      t.equal(got.v6, want.v6, 'ip6tables-save -t nat');
      t.match(want.v4 + want.v6, dnatChainName(c.network, c.containerID), 'the oracle installed the container chain');
      t.ok(result.scripts.length > 0, 'a restore script ran');
    });
  }
});

t.test('portmap DEL and portferry delete: equal again, a second container untouched', gate, async (t) => {
  const sandbox = makeNs(t, 'sbx');
  const a = cases['IPv6 and IPv4 container addresses (ip6tables)'] as Case;
  const b: Case = { ...a, containerID: 'c0ffee00bb', ips: ['10.88.0.9/24', 'fd00:88::9/64'], portMappings: [{ hostPort: 7070, containerPort: 70, protocol: 'udp' }] };
  const theirs = makeNs(t, 'orc');
  const mine = makeNs(t, 'our');
  const runner = nsRunner(mine);
  await portmap(theirs, sandbox, 'ADD', a);
  await portmap(theirs, sandbox, 'ADD', b);
  await applyRules(ours(a), 'iptables', runner);
  await applyRules(ours(b), 'iptables', runner);
  t.same(await dumps(mine), await dumps(theirs), 'two containers: equal');

  await portmap(theirs, sandbox, 'DEL', a);
  const del = await deleteRules({ network: a.network, containerID: a.containerID }, 'iptables', runner);
  t.equal(del.scripts.length, 2, 'one delete transaction per family');
  const want = await dumps(theirs);
  const got = await dumps(mine);
  t.equal(got.v4, want.v4, 'iptables-save after DEL');
  t.equal(got.v6, want.v6, 'ip6tables-save after DEL');
  t.notMatch(got.v4 + got.v6, dnatChainName(a.network, a.containerID), 'container A is gone');
  t.match(got.v4, dnatChainName(b.network, b.containerID), 'container B stays (IPv4)');
  t.match(got.v6, dnatChainName(b.network, b.containerID), 'container B stays (IPv6)');

  const again = await deleteRules({ network: a.network, containerID: a.containerID }, 'iptables', runner);
  t.same(again.scripts, [], 'deleting twice finds nothing and is not an error');
  t.same(await dumps(mine), want, 'and changes nothing');
});

t.test('apply twice changes nothing (two containers, either order)', gate, async (t) => {
  const mine = makeNs(t, 'our');
  const runner = nsRunner(mine);
  const a = cases['24 mappings across tcp and udp (two multiport groups)'] as Case;
  const b = cases['IPv6 and IPv4 container addresses (ip6tables)'] as Case;
  await applyRules(ours(a), 'iptables', runner);
  await applyRules(ours(b), 'iptables', runner);
  const once = await dumps(mine);
  await applyRules(ours(a), 'iptables', runner);
  await applyRules(ours(b), 'iptables', runner);
  t.same(await dumps(mine), once, 'second apply of both leaves the same tables');

  // Re-applying A with fewer ports drops its stale entry rules and keeps B's.
  const fewer: Case = { ...a, portMappings: a.portMappings.slice(0, 2) };
  await applyRules(ours(fewer), 'iptables', runner);
  const now = await natDump(mine, 4);
  const chainA = dnatChainName(a.network, a.containerID);
  const entriesA = now.split('\n').filter((l) => l.startsWith('-A CNI-HOSTPORT-DNAT') && l.endsWith(`-j ${chainA}`));
  t.equal(entriesA.length, 2, 'one entry rule per protocol remains for A (9000/udp, 9001/tcp)');
  t.match(now, dnatChainName(b.network, b.containerID), 'B untouched');
});
