// Config: specs, YAML and CNI files → Mapping[]; every bad input gives a coded error naming it.
import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadMappings, expandBindings } from '../../src/config/index.js';
import { parseDuration } from '../../src/config/validate.js';
import { PortferryError } from '../../src/errors.js';

const dir = mkdtempSync(path.join(tmpdir(), 'pf-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(text: string): string {
  const p = path.join(dir, `c${n++}.yaml`);
  writeFileSync(p, text);
  return p;
}

async function problemsOf(input: Parameters<typeof loadMappings>[0]): Promise<PortferryError> {
  try {
    await loadMappings(input);
  } catch (err) {
    if (err instanceof PortferryError) return err;
    throw err;
  }
  throw new Error('expected a PortferryError, the config was accepted');
}

t.test('valid specs normalise', async (t) => {
  const ms = await loadMappings({
    specs: [
      '8080:10.88.0.2:80',
      '127.0.0.1:5353:10.88.0.2:53/udp',
      '[::1]:8443:[FD00::2]:443',
      '0.0.0.0:30000-30099:10.88.0.2:30000-30099/udp',
      '127.0.0.2:8081:10.88.0.2:80/TCP',
    ],
  });
  t.match(ms[0], { protocol: 'tcp', hostIP: null, hostPort: 8080, hostPortEnd: 8080, containerIP: '10.88.0.2', containerPort: 80, name: 'tcp/*:8080' });
  t.match(ms[1], { protocol: 'udp', hostIP: '127.0.0.1', hostPort: 5353, containerPort: 53 });
  t.match(ms[2], { hostIP: '::1', containerIP: 'fd00::2', containerPort: 443, name: 'tcp/[::1]:8443' });
  t.match(ms[3], { hostIP: '0.0.0.0', hostPort: 30000, hostPortEnd: 30099, containerPort: 30000, containerPortEnd: 30099 });
  t.match(ms[4], { protocol: 'tcp', hostIP: '127.0.0.2' });
  t.equal(expandBindings(ms[0]!).length, 2, 'no host IP: 0.0.0.0 and ::');
  t.same(expandBindings(ms[0]!).map((b) => b.host.ip), ['0.0.0.0', '::']);
  t.equal(expandBindings(ms[3]!).length, 100, 'a 100-port range: 100 bindings');
  t.same(expandBindings(ms[3]!)[57]?.container, { ip: '10.88.0.2', port: 30057 });
  t.ok(Object.isFrozen(ms) && Object.isFrozen(ms[0]), 'frozen');
});

t.test('durations', async (t) => {
  t.equal(parseDuration('500ms', false), 500);
  t.equal(parseDuration('5s', false), 5000);
  t.equal(parseDuration('2m', false), 120_000);
  t.equal(parseDuration('1.5s', false), 1500);
  t.equal(parseDuration(0, true), 0);
  t.type(parseDuration(0, false), 'string');
  t.type(parseDuration('5', false), 'string');
  t.type(parseDuration(5, false), 'string');
});

t.test('YAML file with options and defaults', async (t) => {
  const p = file(`
defaults:
  connectTimeout: 2s
mappings:
  - name: web
    protocol: tcp
    hostIP: 127.0.0.1
    hostPort: 8080
    containerIP: 10.88.0.2
    containerPort: 80
    connectTimeout: 5s
    idleTimeout: 10m
    maxConnections: 10000
  - hostPort: "9000-9002"
    containerIP: 10.88.0.3
    containerPort: "19000-19002"
    protocol: udp
    udpIdleTimeout: 30s
    udpMaxFlows: 10
    proxyProtocol: v2
    proxyProtocolTLVs: [uniqueId, crc32c]
`);
  const ms = await loadMappings({ file: p, specs: ['127.0.0.1:7000:10.0.0.1:70'] });
  t.equal(ms.length, 3);
  t.match(ms[0], { name: 'tcp/127.0.0.1:7000', connectTimeoutMs: 5000 }, 'file defaults do not touch -p mappings');
  t.match(ms[1], { name: 'web', connectTimeoutMs: 5000, idleTimeoutMs: 600_000, maxConnections: 10000 });
  t.match(ms[2], { protocol: 'udp', hostPort: 9000, hostPortEnd: 9002, connectTimeoutMs: 2000, udpIdleTimeoutMs: 30_000, udpMaxFlows: 10, proxyProtocol: 'v2', proxyTlvs: { uniqueId: true, crc32c: true } });
});

t.test('CNI runtimeConfig.portMappings', async (t) => {
  const p = file(JSON.stringify({ type: 'portmap', runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '127.0.0.1' }, { hostPort: 53, containerPort: 53, protocol: 'udp' }] } }));
  const ms = await loadMappings({ file: p, containerIP: '10.88.0.2' });
  t.match(ms, [{ hostIP: '127.0.0.1', hostPort: 8080, containerIP: '10.88.0.2' }, { protocol: 'udp', hostIP: null }]);
  const e = await problemsOf({ file: p });
  t.match(e.format(), /PF_CONFIG_MISSING.*--container-ip/);
});

// Table of bad inputs: each must give the code and name the input.
const bad: [string, Parameters<typeof loadMappings>[0], string, RegExp][] = [
  ['port 0', { specs: ['0:10.0.0.1:80'] }, 'PF_PORT_INVALID', /-p 0:10\.0\.0\.1:80.*port 0 is out of range/],
  ['port 70000', { specs: ['70000:10.0.0.1:80'] }, 'PF_PORT_INVALID', /70000/],
  ['container port 0', { specs: ['8080:10.0.0.1:0'] }, 'PF_PORT_INVALID', /port 0/],
  ['unequal ranges', { specs: ['8000-8010:10.0.0.1:80-85'] }, 'PF_PORT_RANGE', /8000-8010 \(11\).*80-85 \(6\)/],
  ['range to a single port', { specs: ['8000-8001:10.0.0.1:80'] }, 'PF_PORT_RANGE', /same length/],
  ['reversed range', { specs: ['8010-8000:10.0.0.1:80-90'] }, 'PF_PORT_RANGE', /ends before it starts/],
  ['bad host IP', { specs: ['300.1.1.1:8080:10.0.0.1:80'] }, 'PF_IP_INVALID', /300\.1\.1\.1/],
  ['host name instead of IP', { specs: ['8080:backend:80'] }, 'PF_IP_INVALID', /"backend"/],
  ['unbracketed IPv6', { specs: ['::1:8080:10.0.0.1:80'] }, 'PF_SPEC_SYNTAX', /brackets/],
  ['missing container IP', { specs: ['8080:80'] }, 'PF_SPEC_SYNTAX', /container IP is missing/],
  ['bad protocol', { specs: ['8080:10.0.0.1:80/sctp'] }, 'PF_PROTOCOL_INVALID', /sctp/],
  ['non-numeric port', { specs: ['http:10.0.0.1:80'] }, 'PF_PORT_INVALID', /"http"/],
  ['empty spec', { specs: [''] }, 'PF_SPEC_SYNTAX', /empty/],
  ['container IP unspecified', { specs: ['8080:0.0.0.0:80'] }, 'PF_IP_INVALID', /connect to/],
  ['duplicate host port', { specs: ['127.0.0.1:8080:10.0.0.1:80', '127.0.0.1:8080:10.0.0.2:81'] }, 'PF_CONFLICT', /both claim tcp 127\.0\.0\.1:8080/],
  ['wildcard overlaps a specific address', { specs: ['8080:10.0.0.1:80', '127.0.0.1:8080:10.0.0.2:81'] }, 'PF_CONFLICT', /8080/],
  ['overlapping ranges', { specs: ['9000-9010:10.0.0.1:9000-9010', '9010:10.0.0.2:80'] }, 'PF_CONFLICT', /9010/],
  ['no mappings', { specs: [] }, 'PF_NO_MAPPINGS', /no mapping/],
  ['unknown YAML key', { file: '@mappings:\n  - hostPort: 8080\n    containerIP: 10.0.0.1\n    containerPort: 80\n    conectTimeout: 5s\n' }, 'PF_CONFIG_KEY', /mappings\[0\]\.conectTimeout.*did you mean "connectTimeout"/],
  ['unknown top-level key', { file: '@mapings: []\n' }, 'PF_CONFIG_KEY', /mapings/],
  ['YAML syntax error', { file: '@mappings: [\n  - {hostPort: 1\n' }, 'PF_CONFIG_PARSE', /:\d+:\d+/],
  ['missing hostPort', { file: '@mappings:\n  - containerIP: 10.0.0.1\n    containerPort: 80\n' }, 'PF_CONFIG_MISSING', /mappings\[0\]\.hostPort/],
  ['bad duration', { file: '@mappings:\n  - hostPort: 8080\n    containerIP: 10.0.0.1\n    containerPort: 80\n    idleTimeout: 10 minutes\n' }, 'PF_DURATION_INVALID', /mappings\[0\]\.idleTimeout/],
  ['negative maxConnections', { file: '@mappings:\n  - hostPort: 8080\n    containerIP: 10.0.0.1\n    containerPort: 80\n    maxConnections: -1\n' }, 'PF_CONFIG_VALUE', /maxConnections/],
  ['PROXY v1 on UDP', { specs: ['53:10.0.0.1:53/udp'], specOptions: { proxyProtocol: 'v1' } }, 'PF_CONFIG_VALUE', /v2 for a udp mapping/],
  ['relative netns path', { specs: ['8080:10.0.0.1:80'], specOptions: { netns: 'ns1' } }, 'PF_NETNS_INVALID', /absolute path/],
  ['missing config file', { file: '/nonexistent/portferry.yaml' }, 'PF_CONFIG_READ', /\/nonexistent\/portferry\.yaml.*ENOENT/],
  // issue 14 item 5: names are unique, and the error names both places.
  ['two mappings named web', { file: '@mappings:\n  - {name: web, hostPort: 8080, containerIP: 10.0.0.1, containerPort: 80}\n  - {name: web, hostPort: 8081, containerIP: 10.0.0.2, containerPort: 80}\n' }, 'PF_NAME_DUPLICATE', /mappings\[1\] and .*mappings\[0\] are both named "web"/],
  ['a name that is another mapping\'s derived name', { file: '@mappings:\n  - {name: "tcp/*:8080", hostPort: 9090, containerIP: 10.0.0.1, containerPort: 80}\n  - {hostPort: 8080, containerIP: 10.0.0.2, containerPort: 80}\n' }, 'PF_NAME_DUPLICATE', /both named "tcp\/\*:8080"/],
  // issue 14 item 7: what validate passed and run refused.
  ['IPv4-mapped host IP', { specs: ['[::ffff:127.0.0.1]:8080:10.0.0.1:80'] }, 'PF_IP_INVALID', /::ffff:127\.0\.0\.1 is an IPv4-mapped IPv6 address.*write 127\.0\.0\.1/],
  ['IPv4-mapped container IP', { specs: ['8080:[::ffff:10.0.0.1]:80'] }, 'PF_IP_INVALID', /::ffff:10\.0\.0\.1 is an IPv4-mapped.*write 10\.0\.0\.1/],
  ['IPv4 host IP in brackets', { specs: ['[127.0.0.1]:8080:10.0.0.1:80'] }, 'PF_SPEC_SYNTAX', /brackets are for IPv6 addresses only: write the host IP 127\.0\.0\.1 without them/],
  ['IPv4 container IP in brackets', { specs: ['8080:[10.0.0.1]:80'] }, 'PF_SPEC_SYNTAX', /container IP 10\.0\.0\.1 without them/],
  ['bracketed IP in a file', { file: '@mappings:\n  - {hostIP: "[::1]", hostPort: 8080, containerIP: 10.0.0.1, containerPort: 80}\n' }, 'PF_IP_INVALID', /mappings\[0\]\.hostIP: .*\[::1\].*without brackets/],
  ['broadcast container IP', { specs: ['8080:255.255.255.255:80'] }, 'PF_IP_INVALID', /255\.255\.255\.255 is a broadcast address/],
  ['multicast container IP', { specs: ['8080:224.0.0.1:80/udp'] }, 'PF_IP_INVALID', /224\.0\.0\.1 is a multicast address/],
  ['IPv6 multicast container IP', { specs: ['8080:[ff02::1]:80'] }, 'PF_IP_INVALID', /ff02::1 is a multicast address/],
  ['IPv6 unspecified container IP', { specs: ['8080:[::]:80'] }, 'PF_IP_INVALID', /:: is the unspecified address/],
  ['port with leading zeros', { specs: ['0000080:10.0.0.1:80'] }, 'PF_PORT_INVALID', /"0000080" has a leading zero; write 80/],
  ['range end with a leading zero', { specs: ['8000-08001:10.0.0.1:80-81'] }, 'PF_PORT_INVALID', /"08001" has a leading zero/],
  ['a UDP range needing 131070 listeners', { specs: ['1-65535:10.0.0.1:1-65535/udp'] }, 'PF_LISTENER_LIMIT', /131070 listeners, more than the maximum of 4096.*-p 1-65535/],
  // defaults and flags are parsed once and named where they were written.
  ['bad file default', { file: '@defaults:\n  udpMaxFlows: 0\nmappings:\n  - {hostPort: 8080, containerIP: 10.0.0.1, containerPort: 80}\n' }, 'PF_CONFIG_VALUE', /defaults\.udpMaxFlows: udpMaxFlows must be a whole number from 1/],
  ['bad --proxy-protocol', { specs: ['8080:10.0.0.1:80'], specOptions: { proxyProtocol: 'v3' } }, 'PF_CONFIG_VALUE', /^--proxy-protocol: proxyProtocol must be v1 or v2, got string "v3"/],
  // the one CNI portMappings parser: single ports only.
  ['CNI entry with a range', { file: '@{"portMappings": [{"hostPort": "8000-8001", "containerPort": 80}]}\n', containerIP: '10.0.0.1' }, 'PF_PORT_INVALID', /portMappings\[0\]\.hostPort: must be a single port number \(CNI has no ranges\)/],
  ['CNI entry with a bad protocol', { file: '@{"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}\n', containerIP: '10.0.0.1' }, 'PF_PROTOCOL_INVALID', /portMappings\[0\]\.protocol: string "sctp" is not tcp or udp/],
];

t.test(`bad input: ${bad.length} cases, each coded and naming the input`, async (t) => {
  for (const [label, input0, code, pattern] of bad) {
    const input = input0.file?.startsWith('@') === true ? { ...input0, file: file(input0.file.slice(1)) } : input0;
    const err = await problemsOf(input).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
    if (!(err instanceof PortferryError)) {
      t.fail(`${label}: ${err.message}`);
      continue;
    }
    const all = err.problems.length > 0 ? err.problems : [err];
    const hit = all.find((p) => p.code === code);
    t.ok(hit, `${label}: reports ${code} (got ${all.map((p) => p.code).join(', ')})`);
    t.match(hit?.message ?? '', pattern, `${label}: the message names the input`);
    t.ok((hit?.hint ?? '').length > 10, `${label}: with a hint`);
  }
});

t.test('addresses are written one way (src/addr.ts): canonical IPv6, zones refused', async (t) => {
  const { canonicalIP, familyOf } = await import('../../src/addr.js');
  t.equal(canonicalIP('FD00:0:0:0:0:0:0:2'), 'fd00::2');
  t.equal(canonicalIP('2001:db8:0:1:1:1:1:1'), '2001:db8:0:1:1:1:1:1', 'a single zero group is not compressed (RFC 5952)');
  t.equal(canonicalIP('::FFFF:7F00:1'), '::ffff:127.0.0.1', 'IPv4-mapped as the kernel prints it');
  t.equal(canonicalIP('fe80::1%eth0'), null);
  t.equal(canonicalIP('010.0.0.1'), null);
  t.equal(familyOf('::1'), 6);
  t.equal(familyOf('1.2.3.4'), 4);
  t.equal(familyOf('nope'), null);
  const [m] = await loadMappings({ specs: ['[2001:DB8::0:1]:8080:[FD00:0::2]:80'] });
  t.match(m, { hostIP: '2001:db8::1', containerIP: 'fd00::2', name: 'tcp/[2001:db8::1]:8080' });
});

t.test('every problem is reported at once', async (t) => {
  const err = await problemsOf({ specs: ['0:10.0.0.1:80', '8080:nothost:80', '8081:10.0.0.1:80/xtp', '9000-9001:10.0.0.1:80'] });
  t.equal(err.code, 'PF_CONFIG_INVALID');
  t.same(err.problems.map((p) => p.code), ['PF_PORT_INVALID', 'PF_IP_INVALID', 'PF_PROTOCOL_INVALID', 'PF_PORT_RANGE']);
  t.match(err.format(), /4 problems/);
});
