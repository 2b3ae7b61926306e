// Pure tests of the rule builders and renderers: golden text (test/fixtures/rules), the plugin's
// own nftables test expectation, chain names, port grouping, the Mapping adapter and its errors.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { testMapping } from '../helpers/mapping.js';
import { PortferryError } from '../../src/errors.js';
import {
  dnatChainName,
  fromCniPortMappings,
  fromMappings,
  parseContainerCidr,
  type CniPortMapping,
  type PortmapInput,
  type PortmapOptionsInput,
} from '../../src/rules/model.js';
import { buildIptables, iptRules, quoteArg, renderIptablesRestore } from '../../src/rules/portmap-iptables.js';
import { buildNft, renderNft } from '../../src/rules/portmap-nft.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/rules/', import.meta.url));
const update = process.env['PF_UPDATE_GOLDENS'] === '1';

function golden(t: Test, file: string, actual: string): void {
  const path = FIXTURES + file;
  if (update || !existsSync(path)) {
    if (!update) t.fail(`golden ${file} was missing and has been written: review it and commit it`);
    writeFileSync(path, actual);
  }
  t.equal(actual, readFileSync(path, 'utf8'), `matches ${file}`);
}

function cni(ips: readonly string[], portMappings: readonly CniPortMapping[], options?: PortmapOptionsInput, network = 'mynet', containerID = 'c0ffee0001'): PortmapInput {
  return fromCniPortMappings({
    network,
    containerID,
    containerNets: ips.map((c) => parseContainerCidr(c, 'test')),
    portMappings,
    ...(options === undefined ? {} : { options }),
  });
}

const twenty: CniPortMapping[] = Array.from({ length: 20 }, (_, i) => ({ hostPort: 9000 + i, containerPort: 100 + i, protocol: i % 5 === 0 ? 'udp' : 'tcp' }));

const goldenCases: Record<string, PortmapInput> = {
  'one-mapping': cni(['10.88.0.2/16'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], undefined, 'podman'),
  'twenty-mappings': cni(['10.88.0.3/24'], twenty),
  'host-ip': cni(['10.88.0.4/24'], [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '127.0.0.1' },
    { hostPort: 8081, containerPort: 81, protocol: 'tcp', hostIP: '0.0.0.0' },
    { hostPort: 8083, containerPort: 83, protocol: 'tcp', hostIP: '::1' },
  ]),
  'dual-stack': cni(['10.88.0.5/24', 'fd00:88::5/64'], [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
    { hostPort: 8081, containerPort: 81, protocol: 'udp', hostIP: '::1' },
    { hostPort: 8082, containerPort: 82, protocol: 'tcp', hostIP: '::' },
    { hostPort: 8083, containerPort: 83, protocol: 'tcp', hostIP: '127.0.0.1' },
  ]),
  'snat-off': cni(['10.88.0.7/24', 'fd00:88::7/64'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], { snat: false }),
  'masq-all-conditions': cni(['10.88.0.8/24', 'fd00:88::8/64'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], {
    masqAll: true,
    conditionsV4: ['-s', '192.0.2.0/24'],
    conditionsV6: ['-s', '2001:db8::/32'],
  }),
};

t.test('golden renderings (nft and iptables-restore)', async (t) => {
  for (const [name, input] of Object.entries(goldenCases)) {
    golden(t, `${name}.nft`, renderNft(buildNft(input)));
    golden(t, `${name}.iptables`, buildIptables(input).map((rs) => `# IPv${rs.family}\n${renderIptablesRestore(rs)}`).join(''));
  }
});

/** knftables' Fake dump form: table, chains sorted, rules grouped by chain (sorted), flushes gone. */
function fakeDump(script: string): string {
  const lines = script.split('\n').filter((l) => l !== '' && !l.startsWith('flush '));
  const tables = lines.filter((l) => l.startsWith('add table '));
  const chains = [...new Set(lines.filter((l) => l.startsWith('add chain ')))].sort();
  const rules = lines
    .filter((l) => l.startsWith('add rule '))
    .map((l, i) => ({ l, i, chain: l.split(' ')[4] ?? '' }))
    .sort((a, b) => (a.chain < b.chain ? -1 : a.chain > b.chain ? 1 : a.i - b.i))
    .map((r) => r.l);
  return [...tables, ...chains, ...rules].join('\n') + '\n';
}

t.test('nft rendering equals the CNI plugin\'s own nftables test expectation', async (t) => {
  const mappings: CniPortMapping[] = [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
    { hostPort: 8081, containerPort: 80, protocol: 'tcp' },
    { hostPort: 8080, containerPort: 81, protocol: 'udp' },
    { hostPort: 8082, containerPort: 82, protocol: 'udp' },
    { hostPort: 8083, containerPort: 83, protocol: 'tcp', hostIP: '192.168.0.2' },
    { hostPort: 8084, containerPort: 84, protocol: 'tcp', hostIP: '0.0.0.0' },
    { hostPort: 8085, containerPort: 85, protocol: 'tcp', hostIP: '2001:db8:a::1' },
    { hostPort: 8086, containerPort: 86, protocol: 'tcp', hostIP: '::' },
  ];
  const conditions = { conditionsV4: ['a', 'b'], conditionsV6: ['c', 'd'] };
  const v4 = cni(['10.0.0.2/24'], mappings, { snat: true, ...conditions }, 'test', 'icee6giejonei6so');
  const v6 = cni(['2001:db8::2/64'], mappings, { snat: false, ...conditions }, 'test', 'icee6giejonei6so');
  t.equal(fakeDump(renderNft(buildNft(v4))), readFileSync(FIXTURES + 'upstream-nft-v4-snat.txt', 'utf8'), 'IPv4, snat');
  t.equal(fakeDump(renderNft(buildNft(v6))), readFileSync(FIXTURES + 'upstream-nft-v6-nosnat.txt', 'utf8'), 'IPv6, no snat');
});

t.test('chain name: CNI-DN- + sha512(network + id), 28 characters', async (t) => {
  // Observed from the real plugin (network "mynet", container "abc123").
  t.equal(dnatChainName('mynet', 'abc123'), 'CNI-DN-70a29d9dc18bc4d652ea5');
  t.equal(dnatChainName('podman', 'x').length, 28);
  t.not(dnatChainName('a', 'bc'), dnatChainName('b', 'c'), 'different inputs, different chains');
});

t.test('entry rules: grouped per protocol (sorted), at most 15 ports each, config order kept', async (t) => {
  const ports: CniPortMapping[] = Array.from({ length: 17 }, (_, i) => ({ hostPort: 7016 - i, containerPort: 1 + i, protocol: 'tcp' }));
  const [rs] = buildIptables(cni(['10.0.0.2/24'], [{ hostPort: 53, containerPort: 53, protocol: 'udp' }, ...ports]));
  const entries = iptRules(rs!).filter((r) => r.chain === 'CNI-HOSTPORT-DNAT').map((r) => r.args[r.args.indexOf('--destination-ports') + 1]);
  t.same(entries, [
    '7016,7015,7014,7013,7012,7011,7010,7009,7008,7007,7006,7005,7004,7003,7002',
    '7001,7000',
    '53',
  ]);
});

t.test('a long network name cuts the comment to 255 bytes like the plugin', async (t) => {
  const net = 'n'.repeat(300);
  const [rs] = buildIptables(cni(['10.0.0.2/24'], [{ hostPort: 1, containerPort: 1, protocol: 'tcp' }], undefined, net));
  const entry = iptRules(rs!).find((r) => r.chain === 'CNI-HOSTPORT-DNAT');
  const comment = entry?.args[entry.args.indexOf('--comment') + 1] ?? '';
  t.equal(Buffer.byteLength(comment), 256);
  t.ok(comment.endsWith('...'));
});

t.test('restore quoting reads back like iptables-save', async (t) => {
  t.equal(quoteArg('plain'), 'plain');
  t.equal(quoteArg('dnat name: "n" id: "c"'), '"dnat name: \\"n\\" id: \\"c\\""');
  t.equal(quoteArg(''), '""');
});

t.test('fromMappings: ranges expand, hostIP null is unspecified, families split, same as the CNI form', async (t) => {
  const mappings = [
    testMapping({ hostIP: null, hostPort: 8000, hostPortEnd: 8002, containerIP: '10.88.0.2', containerPort: 9000, containerPortEnd: 9002 }),
    testMapping({ hostIP: '127.0.0.1', hostPort: 5353, containerIP: '10.88.0.2', containerPort: 53, protocol: 'udp' }),
    testMapping({ hostIP: '::1', hostPort: 8443, containerIP: 'fd00::2', containerPort: 443 }),
  ];
  const input = fromMappings({ network: 'mynet', containerID: 'c1', mappings, containerCidrs: [parseContainerCidr('10.88.0.2/24', 'x')] });
  t.same(input.targets.map((x) => `${x.net.ip}/${x.net.prefix}`), ['10.88.0.2/24', 'fd00::2/128']);
  t.same(input.targets[0]?.entries, [
    { hostPort: 8000, containerPort: 9000, protocol: 'tcp', hostIP: '' },
    { hostPort: 8001, containerPort: 9001, protocol: 'tcp', hostIP: '' },
    { hostPort: 8002, containerPort: 9002, protocol: 'tcp', hostIP: '' },
    { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' },
  ]);
  t.same(input.targets[1]?.entries, [{ hostPort: 8443, containerPort: 443, protocol: 'tcp', hostIP: '::1' }]);
  t.same(input.warnings, [
    'tcp/[::1]:8443: the kernel cannot DNAT connections to ::1 (IPv6 has no route_localnet), so this rule is written but never forwards anything (use the userspace forwarder for ::1)',
  ], 'only the ::1 warning (issue 14: rules -p [::1]:… said nothing)');

  const same = cni(['10.88.0.2/24'], [
    { hostPort: 8000, containerPort: 9000, protocol: 'tcp' },
    { hostPort: 8001, containerPort: 9001, protocol: 'tcp' },
    { hostPort: 8002, containerPort: 9002, protocol: 'tcp' },
    { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' },
  ], undefined, 'mynet', 'c1');
  const v4only = { ...input, targets: input.targets.slice(0, 1) };
  t.equal(renderIptablesRestore(buildIptables(v4only)[0]!), renderIptablesRestore(buildIptables(same)[0]!), 'equal to the CNI input');
  t.equal(renderNft(buildNft(v4only)), renderNft(buildNft(same)));
});

t.test('cross-family host IP without a container address of that family is a warning', async (t) => {
  const input = fromMappings({ network: 'n', containerID: 'c', mappings: [testMapping({ hostIP: '::1', hostPort: 80, containerIP: '10.0.0.2', containerPort: 80 })] });
  t.equal(input.warnings.length, 1);
  t.match(input.warnings[0], /cannot DNAT across families/);
  t.notMatch(renderIptablesRestore(buildIptables(input)[0]!), /--dport 80/, 'no DNAT rule for it');
});

t.test('invalid input is refused with a code naming the input', async (t) => {
  const m = testMapping({ hostPort: 80, containerIP: '10.0.0.2', containerPort: 80 });
  const check = (fn: () => unknown, code: string, re: RegExp, what: string): void => {
    try {
      fn();
      t.fail(`${what}: no error`);
    } catch (e) {
      t.ok(e instanceof PortferryError, what);
      t.equal((e as PortferryError).code, code, what);
      t.match((e as PortferryError).message, re, what);
    }
  };
  check(() => fromMappings({ network: 'n', containerID: 'bad id"', mappings: [m] }), 'PF_CONFIG_VALUE', /container ID "bad id\\?"/, 'container id');
  check(() => fromMappings({ network: '', containerID: 'c', mappings: [m] }), 'PF_CONFIG_VALUE', /network name/, 'network');
  check(
    () => fromMappings({ network: 'n', containerID: 'c', mappings: [m, testMapping({ hostPort: 81, containerIP: '10.0.0.3', containerPort: 80 })] }),
    'PF_CONFIG_VALUE',
    /10\.0\.0\.3 differs from 10\.0\.0\.2/,
    'two container IPs',
  );
  check(() => fromMappings({ network: 'n', containerID: 'c', mappings: [m], containerCidrs: [parseContainerCidr('10.0.0.9/24', 'x')] }), 'PF_USAGE', /--container-cidr/, 'cidr mismatch');
  check(() => fromMappings({ network: 'n', containerID: 'c', mappings: [m], options: { markMasqBit: 32 } }), 'PF_CONFIG_VALUE', /markMasqBit 32/, 'mark bit');
  check(() => fromMappings({ network: 'n', containerID: 'c', mappings: [m], options: { markMasqBit: 3, externalSetMarkChain: 'X' } }), 'PF_CONFIG_VALUE', /cannot both/, 'both');
  check(() => parseContainerCidr('10.0.0.2/33', '--container-cidr'), 'PF_CONFIG_VALUE', /--container-cidr: prefix/, 'prefix');
  check(() => parseContainerCidr('nope', '--container-cidr'), 'PF_IP_INVALID', /--container-cidr/, 'address');
  check(() => cni(['10.0.0.2/24'], [{ hostPort: 0, containerPort: 80, protocol: 'tcp' }]), 'PF_PORT_INVALID', /portMappings\[0\]\.hostPort/, 'port 0');
});

t.test('externalSetMarkChain: no SETMARK/MASQ chains, jumps go to the given chain', async (t) => {
  const [rs] = buildIptables(cni(['10.0.0.2/24'], [{ hostPort: 80, containerPort: 80, protocol: 'tcp' }], { externalSetMarkChain: 'KUBE-MARK-MASQ' }));
  const text = renderIptablesRestore(rs!);
  t.notMatch(text, /CNI-HOSTPORT-SETMARK|CNI-HOSTPORT-MASQ/);
  t.match(text, /-s 10\.0\.0\.2\/24 -j KUBE-MARK-MASQ/);
});
