// Pure parts of portferry-docker-proxy: Go-flag argv parsing and the config file's rules.
import t from 'tap';
import { parseDockerProxyArgv, type DockerProxyArgs } from '../../src/docker/argv.js';
import { DEFAULT_CONFIG, mappingFor, matchRule, parseDockerProxyConfig } from '../../src/docker/config.js';
import { PortferryError } from '../../src/errors.js';

const run = (argv: string[]): DockerProxyArgs => {
  const r = parseDockerProxyArgv(argv);
  if (r.kind !== 'run') throw new Error(`expected run, got ${r.kind}`);
  return r.args;
};
const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return err instanceof PortferryError ? err.code : `not coded: ${String(err)}`;
  }
  return 'no error';
};

t.test('Go flag syntax: one or two dashes, = or a separate value, any order, last wins', async (t) => {
  const want = { protocol: 'udp', hostIP: '::1', hostPort: 5353, containerIP: '172.17.0.2', containerPort: 53, useListenFd: false };
  t.same(run(['-proto', 'udp', '-host-ip', '::1', '-host-port', '5353', '-container-ip', '172.17.0.2', '-container-port', '53']), want);
  t.same(run(['--container-port=53', '-container-ip=172.17.0.2', '--host-port', '5353', '-host-ip=0:0:0:0:0:0:0:1', '--proto=udp']), want, 'IPv6 written out in full is canonicalised');
  t.same(run(['-proto', 'tcp', '-proto', 'udp', '-host-ip', '::1', '-host-port', '5353', '-container-ip', '172.17.0.2', '-container-port', '53']), want, 'the last repetition wins');
  const base = ['-proto', 'tcp', '-host-ip', '0.0.0.0', '-host-port', '80', '-container-ip', '10.0.0.2', '-container-port', '8080'];
  t.equal(run([...base, '-use-listen-fd']).useListenFd, true);
  t.equal(run([...base, '--use-listen-fd=true']).useListenFd, true);
  t.equal(run([...base, '-use-listen-fd=false']).useListenFd, false);
  t.equal(run([...base, '-use-listen-fd=1']).useListenFd, true, 'strconv.ParseBool spellings');
  t.equal(run(['-host-port', '-1', ...base]).hostPort, 80, 'a value may start with "-" (taken as the value, then overridden)');
  t.same(run([...base, '--']), run(base), '"--" ends the flags');
  t.equal(parseDockerProxyArgv(['-h']).kind, 'help');
  t.equal(parseDockerProxyArgv(['--version']).kind, 'version');
  t.equal(parseDockerProxyArgv(['-v']).kind, 'version');
});

t.test('bad argv: coded errors', async (t) => {
  const base = ['-proto', 'tcp', '-host-ip', '0.0.0.0', '-host-port', '80', '-container-ip', '10.0.0.2', '-container-port', '8080'];
  t.equal(codeOf(() => parseDockerProxyArgv([...base, '-use-listen-fd', 'true'])), 'PF_USAGE', 'a boolean takes no separate value: "true" is a stray argument');
  t.equal(codeOf(() => parseDockerProxyArgv(base.map((a) => (a === '80' ? '0x50' : a)))), 'PF_PORT_INVALID', 'decimal ports only');
  t.equal(codeOf(() => parseDockerProxyArgv(base.map((a) => (a === '0.0.0.0' ? 'localhost' : a)))), 'PF_IP_INVALID', 'no host names');
  t.equal(codeOf(() => parseDockerProxyArgv(base.map((a) => (a === 'tcp' ? 'sctp' : a)))), 'PF_PROTOCOL_INVALID');
  t.equal(codeOf(() => parseDockerProxyArgv(['-=x', ...base])), 'PF_USAGE');
  t.equal(codeOf(() => parseDockerProxyArgv([])), 'PF_USAGE');
});

const args = (over: Partial<DockerProxyArgs> = {}): DockerProxyArgs => ({ protocol: 'tcp', hostIP: '0.0.0.0', hostPort: 8080, containerIP: '172.17.0.2', containerPort: 80, useListenFd: false, ...over });

t.test('rules: the first match wins, over the defaults; no file → the defaults', async (t) => {
  const config = await parseDockerProxyConfig(
    [
      'defaults: { udpIdleTimeout: 5m, connectTimeout: 2s }',
      'rules:',
      '  - match: { hostPort: "8000-8099", protocol: tcp, containerIP: 172.17.0.0/16 }',
      '    proxyProtocol: v2',
      '    proxyProtocolTLVs: [crc32c]',
      '  - match: { hostIP: "::" }',
      '    maxConnections: 10',
      '  - match: { containerPort: 53 }',
      '    proxyProtocol: v2',
      '    udpIdleTimeout: 10s',
      'drainTimeout: 500ms',
      '',
    ].join('\n'),
    '/etc/x.yaml',
  );
  t.equal(config.drainTimeoutMs, 500);
  const m = mappingFor(args(), config);
  t.equal(m.proxyProtocol, 'v2');
  t.same(m.proxyTlvs, { uniqueId: false, crc32c: true });
  t.equal(m.connectTimeoutMs, 2000, 'defaults apply under the rule');
  t.match(m.source, /\/etc\/x\.yaml rules\[0\]/, 'the mapping names the rule it came from');
  t.equal(matchRule(config, args({ containerIP: '10.0.0.2' })), null, 'outside the CIDR: no rule');
  t.equal(matchRule(config, args({ hostPort: 8100 })), null, 'outside the port range: no rule');
  t.equal(matchRule(config, args({ hostIP: '::' }))?.place, 'rules[0]', 'rule 0 matches first');
  t.equal(matchRule(config, args({ hostIP: '::', hostPort: 9000 }))?.place, 'rules[1]');
  const udp = mappingFor(args({ protocol: 'udp', hostPort: 5353, containerPort: 53 }), config);
  t.equal(udp.udpIdleTimeoutMs, 10_000);
  t.equal(mappingFor(args({ hostPort: 9000, containerPort: 81 }), config).proxyProtocol, null, 'no rule: defaults only');
  t.equal(mappingFor(args(), DEFAULT_CONFIG).udpIdleTimeoutMs, 90_000, "no file: docker's 90 s");
  t.equal((await parseDockerProxyConfig('', '/e.yaml')).rules.length, 0, 'an empty file is the defaults');
});

t.test('invalid files: every problem, with its place', async (t) => {
  const problems = async (text: string): Promise<string[]> => {
    try {
      await parseDockerProxyConfig(text, '/c.yaml');
    } catch (err) {
      const e = err as PortferryError;
      return (e.problems.length > 0 ? e.problems : [e]).map((p) => `${p.code} ${p.message}`);
    }
    return [];
  };
  t.matchOnly(await problems('rules: [ {'), [/^PF_CONFIG_PARSE \/c\.yaml:1:.*Flow map/, /^PF_CONFIG_PARSE \/c\.yaml:1:.*Flow sequence/]);
  t.matchOnly(await problems('rule: []\nlog: { level: loud, file: relative.log }\n'), [/PF_CONFIG_KEY .*rule: unknown key/, /log\.level: "loud"/, /log\.file: must be an absolute path/]);
  t.matchOnly(await problems('defaults: { netns: /proc/1/ns/net }\n'), [/PF_CONFIG_KEY .*defaults\.netns/]);
  t.matchOnly(await problems('rules:\n  - match: { protocol: udp }\n    proxyProtocol: v1\n'), [/PF_CONFIG_VALUE .*rules\[0\]\.proxyProtocol: PROXY protocol v1 cannot carry UDP/]);
  t.matchOnly(await problems('rules:\n  - match: { hostPort: "90-80", colour: red }\n'), [/PF_CONFIG_KEY .*rules\[0\]\.match\.colour/, /rules\[0\]\.match\.hostPort: range "90-80" ends before it starts/]);
  t.matchOnly(await problems('drainTimeout: 5m\n'), [/drainTimeout: at most 60s/]);
  // v1 is fine for tcp, but a udp port matched by a rule without a protocol fails when it starts.
  const config = await parseDockerProxyConfig('rules:\n  - proxyProtocol: v1\n', '/c.yaml');
  t.equal(codeOf(() => mappingFor(args({ protocol: 'udp' }), config)), 'PF_CONFIG_INVALID');
});
