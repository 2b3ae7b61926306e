// apply / check / delete against the real kernel, each in a fresh namespace: the nft backend
// (idempotence, check listing missing rules, delete leaving other containers, delete twice),
// atomicity (a refused apply leaves nothing), and the missing-tool error.
import t from 'tap';
import { skipUnless } from '../helpers/env.js';
import { PortferryError } from '../../src/errors.js';
import { applyRules, checkRules, deleteRules, prefixedRunner, type CommandRunner } from '../../src/rules/apply.js';
import { fromCniPortMappings, parseContainerCidr, type CniPortMapping, type PortmapOptionsInput } from '../../src/rules/model.js';
import { makeNs, natDump, nftDump, nsRunner } from './ns.js';

function input(containerID: string, ips: readonly string[], portMappings: readonly CniPortMapping[], options?: PortmapOptionsInput) {
  return fromCniPortMappings({
    network: 'mynet',
    containerID,
    containerNets: ips.map((c) => parseContainerCidr(c, 'test')),
    portMappings,
    ...(options === undefined ? {} : { options }),
  });
}

const A = input('ctra', ['10.88.0.2/24', 'fd00:88::2/64'], [
  { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
  { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' },
  { hostPort: 8443, containerPort: 443, protocol: 'tcp', hostIP: '::1' },
]);
const B = input('ctrb', ['10.88.0.3/24'], [{ hostPort: 9090, containerPort: 90, protocol: 'tcp' }]);

t.test('nftables backend: apply, apply again, check, delete, delete again', skipUnless({ root: true, tools: ['ip', 'nft'] }), async (t) => {
  const ns = makeNs(t, 'nft');
  const runner = nsRunner(ns);
  await applyRules(A, 'nftables', runner);
  await applyRules(B, 'nftables', runner);
  const v4 = await nftDump(ns, 'ip');
  const v6 = await nftDump(ns, 'ip6');
  t.match(v4, /comment "CNI portmap plugin"/, 'table comment');
  t.match(v4, /type nat hook prerouting priority dstnat; policy accept;/);
  t.match(v4, /tcp dport 8080 dnat to 10\.88\.0\.2:80 comment "ctra"/);
  t.match(v4, /ip daddr 127\.0\.0\.1 udp dport 5353 dnat to 10\.88\.0\.2:53 comment "ctra"/);
  t.match(v4, /ip saddr 127\.0\.0\.1 ip daddr 10\.88\.0\.2 masquerade comment "ctra"/);
  t.match(v4, /tcp dport 9090 dnat to 10\.88\.0\.3:90 comment "ctrb"/);
  t.match(v6, /ip6 daddr ::1 tcp dport 8443 dnat to \[fd00:88::2\]:443 comment "ctra"/);
  t.notMatch(v6, /5353/, 'no IPv4 host IP rule in ip6');

  await applyRules(A, 'nftables', runner);
  await applyRules(B, 'nftables', runner);
  t.equal(await nftDump(ns, 'ip'), v4, 'apply twice: ip table unchanged');
  t.equal(await nftDump(ns, 'ip6'), v6, 'apply twice: ip6 table unchanged');

  t.same(await checkRules(A, 'nftables', runner), { ok: true, missing: [] }, 'check passes');

  const del = await deleteRules({ network: 'mynet', containerID: 'ctra' }, 'nftables', runner);
  t.equal(del.scripts.length, 1, 'one transaction for both families');
  const after = await nftDump(ns, 'ip');
  t.notMatch(after, /"ctra"/, 'A gone');
  t.match(after, /comment "ctrb"/, 'B stays');
  t.match(after, /fib daddr type local jump hostports_all/, 'shared chains stay');

  const check = await checkRules(A, 'nftables', runner);
  t.equal(check.ok, false, 'check fails after delete');
  t.ok(check.missing.includes('add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.88.0.2:80 comment "ctra"'), 'and lists the missing rule');
  // A was the only container in ip6, so its delete removed that table: its 4 skeleton rules are missing too.
  t.equal(check.missing.length, 11, 'every rule of A (3 + 2 masquerade in ip, 1 + 1 in ip6) and the ip6 skeleton (4)');
  t.equal(await nftDump(ns, 'ip6'), '', 'the last container of ip6 gone: no ip6 table left');

  t.same((await deleteRules({ network: 'mynet', containerID: 'ctra' }, 'nftables', runner)).scripts, [], 'delete twice: nothing to do, no error');
  t.equal(await nftDump(ns, 'ip'), after);
});

t.test('iptables backend: check passes after apply and lists missing rules after delete', skipUnless({ root: true, tools: ['ip', 'iptables'] }), async (t) => {
  const ns = makeNs(t, 'ipt');
  const runner = nsRunner(ns);
  await applyRules(A, 'iptables', runner);
  t.same(await checkRules(A, 'iptables', runner), { ok: true, missing: [] }, 'check passes');
  await deleteRules({ network: 'mynet', containerID: 'ctra' }, 'iptables', runner);
  const check = await checkRules(A, 'iptables', runner);
  t.equal(check.ok, false);
  t.ok(check.missing.some((m) => m.startsWith('iptables -t nat -A CNI-DN-') && m.includes('--to-destination 10.88.0.2:80')), 'names the DNAT rule');
  t.ok(check.missing.some((m) => m.startsWith('ip6tables -t nat -A CNI-HOSTPORT-DNAT')), 'names the IPv6 entry rule');
  t.notOk(check.missing.some((m) => m.includes('CNI-HOSTPORT-SETMARK -m comment')), 'shared chains are still there');
});

t.test('a refused apply leaves nothing behind (atomic)', skipUnless({ root: true, tools: ['ip', 'iptables', 'nft'] }), async (t) => {
  const ns = makeNs(t, 'atm');
  const runner = nsRunner(ns);
  const before = { v4: await natDump(ns, 4), v6: await natDump(ns, 6) };
  // The external mark chain does not exist: IPv4 restore is refused (jump to a missing chain).
  const bad = input('ctrx', ['10.88.0.2/24', 'fd00:88::2/64'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], { externalSetMarkChain: 'NO-SUCH-CHAIN' });
  const err = await applyRules(bad, 'iptables', runner).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof PortferryError, 'rejects with a PortferryError');
  t.equal((err as PortferryError).code, 'PF_RULES_APPLY');
  t.match((err as PortferryError).message, /iptables-restore --noflush \(IPv4/);
  t.same({ v4: await natDump(ns, 4), v6: await natDump(ns, 6) }, before, 'tables as before');

  // IPv4 succeeds, IPv6 is refused (a bad condition): the IPv4 part is rolled back.
  const halfBad = input('ctry', ['10.88.0.2/24', 'fd00:88::2/64'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], { conditionsV6: ['--no-such-option'] });
  await t.rejects(applyRules(halfBad, 'iptables', runner), { code: 'PF_RULES_APPLY', message: /IPv6/ });
  t.same({ v4: await natDump(ns, 4), v6: await natDump(ns, 6) }, before, 'IPv4 rolled back too');

  const nftBad = input('ctrz', ['10.88.0.2/24', 'fd00:88::2/64'], [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], { conditionsV6: ['no such expression'] });
  await t.rejects(applyRules(nftBad, 'nftables', runner), { code: 'PF_RULES_APPLY' });
  t.equal(await nftDump(ns, 'ip'), '', 'no nft table left (one transaction for both families)');
});

t.test('a missing tool is PF_RULES_TOOL_MISSING naming the package', skipUnless({ root: true, tools: ['ip'] }), async (t) => {
  const ns = makeNs(t, 'tool');
  // PATH without the tools: a runner that enters the namespace with an empty PATH.
  const noTools: CommandRunner = prefixedRunner(['ip', 'netns', 'exec', ns, 'env', 'PATH=/nonexistent']);
  await t.rejects(applyRules(B, 'nftables', noTools), { code: 'PF_RULES_TOOL_MISSING', hint: /apt-get install -y (iproute2|nftables)/ });
  const snatOff = input('ctrb', ['10.88.0.3/24'], [{ hostPort: 9090, containerPort: 90, protocol: 'tcp' }], { snat: false });
  await t.rejects(applyRules(snatOff, 'iptables', noTools), { code: 'PF_RULES_TOOL_MISSING', message: /"iptables"/, hint: /apt-get install -y iptables/ });
  await t.rejects(applyRules(snatOff, 'nftables', noTools), { code: 'PF_RULES_TOOL_MISSING', message: /"nft"/, hint: /apt-get install -y nftables/ });
});

t.test('without conntrack, apply succeeds with a clear warning', skipUnless({ root: true, tools: ['ip', 'nft'] }), async (t) => {
  const ns = makeNs(t, 'ct');
  const inside = nsRunner(ns);
  // The same namespace, but `conntrack` resolves to a command that does not exist.
  const noConntrack: CommandRunner = { run: (cmd, args, stdin) => inside.run(cmd === 'conntrack' ? 'pf-no-such-conntrack' : cmd, args, stdin) };
  const res = await applyRules(A, 'nftables', noConntrack);
  // A's [::1] mapping brings the input's own ::1 warning first; the conntrack one follows it.
  t.same(res.warnings.slice(0, A.warnings.length), A.warnings, 'the input\'s warnings');
  t.equal(res.warnings.length, A.warnings.length + 1, 'and one more');
  t.match(res.warnings[A.warnings.length], /conntrack is not installed.*apt-get install -y conntrack/);
  t.match(await nftDump(ns, 'ip'), /udp dport 5353/, 'rules are in place');
  const withIt = await applyRules(A, 'nftables', inside);
  t.same(withIt.warnings, A.warnings, 'with conntrack: no warning of its own (UDP entries flushed, nothing matched)');
});

// A CNI runtime may run ADD for different containers at once. Each apply reads the live table and
// then writes it; without the rules lock, parallel applies on a fresh table each declared the
// shared chains (a --noflush restore that declares a chain flushes it): 5 of these 6 containers
// lost their entry rule (checked with the lock switched off).
t.test('six applies at once: every container\'s rules are there (the rules lock)', skipUnless({ root: true, tools: ['ip', 'iptables', 'nft'] }), async (t) => {
  for (const backend of ['iptables', 'nftables'] as const) {
    const ns = makeNs(t, 'par');
    const runner = nsRunner(ns);
    const inputs = Array.from({ length: 6 }, (_, i) => input(`par${i}`, [`10.88.0.${i + 2}/24`], [{ hostPort: 8000 + i, containerPort: 80, protocol: 'tcp' }]));
    await Promise.all(inputs.map((x) => applyRules(x, backend, runner)));
    const checks = await Promise.all(inputs.map((x) => checkRules(x, backend, runner)));
    t.same(checks.map((c) => c.missing), inputs.map(() => []), `${backend}: nothing missing for any container`);
  }
});
