// `portferry rules` end to end: the built CLI (bin/portferry.js → dist), spawned inside a fresh
// namespace for --apply / --check / --delete; printing needs no root.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { skipUnless } from '../helpers/env.js';
import { makeNs, natDump } from './ns.js';

// PF_TEST_BIN: another entry point with the same interface (to try the command before main.ts wires it).
const BIN = process.env['PF_TEST_BIN'] ?? fileURLToPath(new URL('../../bin/portferry.js', import.meta.url));

function cli(args: readonly string[], ns?: string): { code: number; stdout: string; stderr: string } {
  const argv = ns === undefined ? [process.execPath, BIN, 'rules', ...args] : ['ip', 'netns', 'exec', ns, process.execPath, BIN, 'rules', ...args];
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const gateRoot = skipUnless({ root: true, tools: ['ip', 'iptables', 'nft'] });

const common = ['--network', 'podman', '--container-id', 'cli1', '--container-cidr', '10.88.0.2/16'];
const specs = ['-p', '8080:10.88.0.2:80', '-p', '127.0.0.1:5353:10.88.0.2:53/udp'];

t.test('prints the script without an action', async (t) => {
  const nft = cli([...specs, '--backend', 'nftables', ...common]);
  t.equal(nft.code, 0, nft.stderr);
  t.match(nft.stdout, 'add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.88.0.2:80 comment "cli1"');
  const ipt = cli([...specs, '--backend', 'iptables', ...common, '--no-snat']);
  t.equal(ipt.code, 0, ipt.stderr);
  t.match(ipt.stdout, /-A CNI-DN-\S+ -p udp --dport 5353 -d 127\.0\.0\.1 -j DNAT --to-destination 10\.88\.0\.2:53/);
  t.notMatch(ipt.stdout, /SETMARK/, '--no-snat: no mark rules');
});

t.test('usage and config errors', async (t) => {
  const both = cli([...specs, '--backend', 'iptables', ...common, '--apply', '--check']);
  t.equal(both.code, 2);
  t.match(both.stderr, /PF_USAGE: --apply, --check cannot be combined/);
  const bad = cli(['-p', '8080:nope:80', '--backend', 'iptables', ...common]);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /PF_CONFIG_INVALID/);
  const backend = cli([...specs, '--backend', 'pf', ...common]);
  t.equal(backend.code, 2);
  t.match(backend.stderr, /use iptables or nftables/);
});

for (const backend of ['iptables', 'nftables']) {
  t.test(`--apply, --check, --delete (${backend})`, gateRoot, async (t) => {
    const ns = makeNs(t, 'cli');
    const args = [...specs, '--backend', backend, ...common];
    const applied = cli([...args, '--apply'], ns);
    t.equal(applied.code, 0, applied.stderr);
    const once = backend === 'iptables' ? await natDump(ns, 4) : '';
    t.equal(cli([...args, '--apply'], ns).code, 0, 'apply twice');
    if (backend === 'iptables') t.equal(await natDump(ns, 4), once, 'second apply changes nothing');
    const ok = cli([...args, '--check'], ns);
    t.equal(ok.code, 0, ok.stderr);
    t.match(ok.stdout, /^ok: /);
    const del = cli(['--backend', backend, '--network', 'podman', '--container-id', 'cli1', '--delete'], ns);
    t.equal(del.code, 0, del.stderr);
    const missing = cli([...args, '--check'], ns);
    t.equal(missing.code, 1, 'check fails after delete');
    t.match(missing.stdout, /missing: .*8080/);
    t.match(missing.stderr, /PF_RULES_CHECK/);
    const again = cli(['--backend', backend, '--network', 'podman', '--container-id', 'cli1', '--delete'], ns);
    t.equal(again.code, 0, 'delete twice is fine');
    t.match(again.stdout, /nothing was there/);
  });
}

t.test('issue 14: every missing required option at once, marked in --help; nft alias; nftables-only limits; ::1 warning', async (t) => {
  const none = cli(['-p', '8080:10.88.0.2:80']);
  t.equal(none.code, 2);
  t.match(none.stderr, /PF_USAGE: missing required options: --backend <iptables\|nftables>, --network <name>, --container-id <id>/, 'all three named in one run');
  const help = cli(['--help']);
  t.match(help.stdout, /--backend <name>\s+\(required\)/);
  t.match(help.stdout, /--network <name>\s+\(required\)/);
  t.match(help.stdout, /--container-id <id>\s+\(required\)/);
  t.match(help.stdout, /Example:\n\s+portferry rules -p/);

  const alias = cli([...specs, '--backend', 'nft', ...common]);
  t.equal(alias.code, 0, alias.stderr);
  t.match(alias.stdout, /add table ip cni_hostport/, '--backend nft renders nftables');

  const longId = 'a'.repeat(129);
  const tooLong = cli([...specs, '--backend', 'nftables', '--network', 'podman', '--container-id', longId]);
  t.equal(tooLong.code, 1);
  t.match(tooLong.stderr, /PF_CONFIG_INVALID[\s\S]*nftables takes rule comments of at most 128/, 'refused before any nft runs');
  t.equal(tooLong.stdout, '', 'nothing printed');
  t.equal(cli([...specs, '--backend', 'iptables', '--network', 'podman', '--container-id', longId]).code, 0, 'iptables takes it (the comment is trimmed, as the plugin does)');

  const v6 = cli(['-p', '[::1]:8443:[fd00::2]:443', '--backend', 'iptables', '--network', 'podman', '--container-id', 'v6lo']);
  t.equal(v6.code, 0, v6.stderr);
  t.match(v6.stderr, /warning: tcp\/\[::1\]:8443: the kernel cannot DNAT connections to ::1/);
  t.match(v6.stdout, /-d ::1 -j DNAT --to-destination \[fd00::2\]:443/, 'the rule is still written, as the plugin writes it');
});
