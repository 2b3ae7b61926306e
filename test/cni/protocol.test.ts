// Acceptance 3 of the CNI issue: VERSION; invalid JSON, a missing CNI_CONTAINERID and an unknown
// backend each give CNI error JSON with the right code and change nothing (the nat and nft tables
// of a namespace are the same before and after). Also: versions (0.4.0 results, 0.3.1 refused),
// CHECK/ADD without prevResult, the CNI code table in docs/errors.md, and a light start path.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CNI_CODES, CNI_CODE_OTHER } from '../../src/cni/codes.js';
import { resultFor, sandboxAddresses } from '../../src/cni/protocol.js';
import { skipUnless } from '../helpers/env.js';
import { repoRoot } from '../helpers/net.js';
import { inNs, makeNs, natDump } from '../rules/ns.js';
import { PORTFERRY_CNI, runPlugin } from './world.js';

const ADD = { command: 'ADD', containerID: 'ctr1', netns: '/run/netns/none', ifname: 'eth0' };

const prevResult = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '02:00:00:00:00:01' },
    { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: '/run/netns/none' },
  ],
  ips: [{ interface: 1, address: '10.88.0.2/16', gateway: '10.88.0.1' }],
};

function conf(keys: Record<string, unknown> = {}, version = '1.0.0'): string {
  return JSON.stringify({ cniVersion: version, name: 'pfnet', type: 'portferry', backend: 'iptables', runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }] }, prevResult, ...keys });
}

t.test('VERSION lists 0.4.0, 1.0.0 and 1.1.0', async (t) => {
  const r = await runPlugin(PORTFERRY_CNI, { command: 'VERSION' }, '{"cniVersion":"1.1.0"}');
  t.equal(r.code, 0);
  t.same(r.json, { cniVersion: '1.1.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] });
  const asked = await runPlugin(PORTFERRY_CNI, { command: 'VERSION' }, '{"cniVersion":"0.4.0"}');
  t.equal(asked.json?.['cniVersion'], '0.4.0', 'answers in the version it was asked in');
});

t.test('bad input: CNI error JSON with the right code, exit 1, nothing changed', skipUnless({ root: true, tools: ['ip', 'iptables-save', 'nft'] }), async (t) => {
  const ns = makeNs(t, 'cniproto');
  const state = async (): Promise<string> => `${await natDump(ns, 4)}\n${await natDump(ns, 6)}\n${(await inNs(ns, 'nft', ['list', 'ruleset'])).stdout}`;
  const before = await state();
  const cases: [string, Parameters<typeof runPlugin>[1], string, number, RegExp][] = [
    ['invalid JSON', ADD, '{"cniVersion": "1.0.0", "name": ', 6, /PF_CNI_DECODE: the network configuration on stdin is not JSON/],
    ['missing CNI_CONTAINERID', { ...ADD, without: ['CNI_CONTAINERID'] }, conf(), 4, /PF_CNI_ENV: invalid CNI environment: CNI_CONTAINERID is missing/],
    ['unknown backend', ADD, conf({ backend: 'ebpf' }), 7, /PF_CNI_CONFIG: .*"backend" is "ebpf"/],
    ['invalid CNI_CONTAINERID', { ...ADD, containerID: 'a/b' }, conf(), 4, /CNI_CONTAINERID "a\/b" has characters/],
    ['interface name too long', { ...ADD, ifname: 'eth0123456789abc' }, conf(), 4, /CNI_IFNAME "eth0123456789abc" is longer than 15/],
    ['missing CNI_COMMAND', { ...ADD, without: ['CNI_COMMAND'] }, conf(), 4, /CNI_COMMAND is missing/],
    ['unsupported version', ADD, conf({}, '0.3.1'), 1, /PF_CNI_VERSION: cniVersion "0.3.1" is not supported/],
    ['no network name', ADD, conf({ name: '' }), 7, /has no "name"/],
    ['ADD without prevResult', ADD, conf({ prevResult: undefined }), 7, /ADD needs prevResult: portferry is a chained plugin/],
    ['bad port', ADD, conf({ runtimeConfig: { portMappings: [{ hostPort: 0, containerPort: 80 }] } }), 7, /PF_PORT_INVALID: portMappings\[0\]\.hostPort: port 0 is out of range/],
    ['no container port', ADD, conf({ runtimeConfig: { portMappings: [{ hostPort: 8080 }] } }), 7, /PF_CONFIG_MISSING: portMappings\[0\]\.containerPort/],
    ['userspace keys on a kernel backend', ADD, conf({ proxyProtocol: 'v2' }), 7, /"proxyProtocol" only apply to "backend": "userspace"/],
    ['iptables conditions on nftables', ADD, conf({ backend: 'nftables', conditionsV4: ['-s', '10.0.0.0/8'] }), 7, /conditionsV4 holds iptables arguments/],
    ['nftables container ID limit', { ...ADD, containerID: 'c'.repeat(129) }, conf({ backend: 'nftables' }), 7, /nftables takes rule comments of at most 128/],
    ['STATUS with a 1.0.0 config', { command: 'STATUS' }, conf(), 1, /does not allow STATUS/],
  ];
  for (const [name, env, stdin, code, msg] of cases) {
    const r = await runPlugin(PORTFERRY_CNI, env, stdin, ns);
    t.equal(r.code, 1, `${name}: exit 1`);
    t.match(r.json, { code, msg }, `${name}: code ${code}`);
    t.type(r.json?.['cniVersion'], 'string', `${name}: cniVersion in the error`);
    t.type(r.json?.['details'], 'string', `${name}: details (the hint)`);
  }
  t.equal(await state(), before, 'no rule and no table appeared');
});

t.test('STATUS of the kernel backends: 0 with their tools on PATH, 50 without', async (t) => {
  const status = (backend: string): string => JSON.stringify({ cniVersion: '1.1.0', name: 'pfnet', type: 'portferry', backend });
  for (const backend of ['iptables', 'nftables']) {
    const up = await runPlugin(PORTFERRY_CNI, { command: 'STATUS', path: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }, status(backend));
    t.equal(up.code, 0, `${backend}: ${up.stdout}`);
    const down = await runPlugin(PORTFERRY_CNI, { command: 'STATUS', path: '/nonexistent' }, status(backend));
    t.match(down.json, { cniVersion: '1.1.0', code: 50, msg: /PF_RULES_TOOL_MISSING: the .* backend needs/ }, `${backend} without its tools: 50`);
  }
});

t.test('results in the configuration\'s version; the sandbox interface\'s addresses as portmap picks them', async (t) => {
  const v04 = resultFor({ ...prevResult, cniVersion: '0.4.0' }, '0.4.0');
  t.same((v04['ips'] as unknown[])[0], { interface: 1, address: '10.88.0.2/16', gateway: '10.88.0.1', version: '4' }, '0.4.0: ips carry version');
  const v1 = resultFor({ ...prevResult, ips: [{ version: '4', address: '10.88.0.2/16' }] }, '1.1.0');
  t.same(v1['ips'], [{ address: '10.88.0.2/16' }], '1.x: no version field');
  t.equal(v1['cniVersion'], '1.1.0');

  const picked = sandboxAddresses(
    {
      interfaces: [{ name: 'cni0' }, { name: 'eth0', sandbox: '/x' }, { name: 'eth1', sandbox: '/x' }],
      ips: [
        { interface: 0, address: '10.88.0.1/16' },
        { interface: 2, address: '10.89.0.2/16' },
        { interface: 1, address: 'fd00::2/64' },
        { interface: 1, address: '10.88.0.2/16' },
        { interface: 1, address: '10.88.0.3/16' },
      ],
    },
    'eth0',
  );
  t.same(picked.map((a) => a.cidr), ['10.88.0.2/16', 'fd00::2/64'], 'first IPv4 and first IPv6 of eth0 in its sandbox');
});

t.test('ADD output through the plugin: 0.4.0 in, 0.4.0 out; empty portMappings change nothing', async (t) => {
  const r = await runPlugin(PORTFERRY_CNI, ADD, conf({ cniVersion: '0.4.0', runtimeConfig: { portMappings: [] } }, '0.4.0'));
  t.equal(r.code, 0, r.stdout);
  t.match(r.json, { cniVersion: '0.4.0', ips: [{ address: '10.88.0.2/16', version: '4' }] });
});

t.test('docs/errors.md lists the CNI code of every PF_ code the plugin maps', async (t) => {
  const doc = readFileSync(`${repoRoot}/docs/errors.md`, 'utf8');
  const rows = new Map<string, number>();
  for (const line of doc.split('\n')) {
    const m = /^\| (\d+) \| `(PF_[A-Z0-9_]+)`/.exec(line);
    if (m !== null) rows.set(m[2] as string, Number(m[1]));
  }
  t.same(Object.fromEntries(rows), CNI_CODES, 'the table equals src/cni/codes.ts');
  t.match(doc, new RegExp(`\\| ${CNI_CODE_OTHER} \\| any other`), 'and names the code for the rest');
});

t.test('a light start path: nothing the plugin can load pulls in commander, yaml or pino', async (t) => {
  // Every module reachable from dist/cni/main.js, static and dynamic imports alike (both backends).
  const seen = new Set<string>();
  const bare = new Set<string>();
  const walk = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'([^']+)'/g)) {
      const spec = m[1] as string;
      if (spec.startsWith('.')) walk(path.resolve(path.dirname(file), spec));
      else bare.add(spec);
    }
  };
  walk(`${repoRoot}/dist/cni/main.js`);
  t.ok(seen.size > 5, `${seen.size} modules reachable`);
  const heavy = [...bare].filter((b) => !b.startsWith('node:'));
  t.same(heavy, [], 'only node: built-ins besides our own modules');
  t.ok([...seen].some((f) => f.endsWith('/control/client.js')), 'the userspace backend is among them (through the API client)');
});
