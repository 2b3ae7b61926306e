// `portferry bench --scenario rootless` for real, in its smallest form (one repetition, very short
// runs, 2 connection loops): every path — rootlesskit's two port drivers, pasta, portferry --netns
// (this build, and this same build as --baseline), portferry's loopback path, no forwarder — gives
// a validated figure for every workload that applies to it, and afterwards nothing is left: not the
// user (nor its group, subordinate ids or processes), not a namespace, and /dev/net/tun has its
// mode back. An abort mid-run (the CLI on Ctrl-C) removes all of it too. Plus the CLI's refusals.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/env.js';
import { runRootlessBench } from '../../src/bench/rootless.js';
import { BenchInterrupted } from '../../src/bench/run.js';
import { alive } from '../../src/bench/proc.js';
import { renderMarkdown } from '../../src/bench/report.js';
import { ROOTLESS_PATH_NAMES, ROOTLESS_WORKLOAD_IDS, WORKLOADS } from '../../src/bench/types.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = `${root}bin/portferry.js`;
const TOOLS = ['ip', 'ss', 'iperf3', 'cc', 'prlimit', 'nsenter', 'unshare', 'setpriv', 'rootlesskit', 'rootlessctl', 'slirp4netns', 'pasta', 'newuidmap', 'newgidmap', 'useradd', 'userdel'];
const needs = skipUnless({ root: true, tools: TOOLS });

function tunMode(): number {
  return statSync('/dev/net/tun').mode & 0o7777;
}

function processesOfUid(uid: number): number[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).flatMap((n) => {
    try {
      const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${n}/status`, 'utf8'));
      return m !== null && Number(m[1]) === uid && alive(Number(n)) ? [Number(n)] : [];
    } catch {
      return [];
    }
  });
}

interface Seen {
  namespaces: string[];
  pids: number[];
  user: { name: string; uid: number } | null;
}

function observer(seen: Seen): { namespaces(n: readonly string[]): void; processes(p: readonly number[]): void; user(name: string, uid: number): void } {
  return {
    namespaces: (n) => seen.namespaces.push(...n),
    processes: (p) => seen.pids.push(...p),
    user: (name, uid) => (seen.user = { name, uid }),
  };
}

/** Nothing the run made is left. */
function nothingLeft(t: Test, seen: Seen, modeBefore: number): void {
  t.not(seen.user, null, 'a user was made');
  const user = seen.user ?? { name: 'pf-bench-none', uid: -1 };
  t.match(user.name, /^pf-bench-[0-9a-f]{8}$/, 'named with the bench prefix');
  t.not(spawnSync('id', [user.name], { stdio: 'ignore' }).status, 0, `user ${user.name} removed`);
  t.not(spawnSync('getent', ['group', user.name], { stdio: 'ignore' }).status, 0, 'its group removed');
  for (const f of ['/etc/subuid', '/etc/subgid']) t.notOk(readFileSync(f, 'utf8').split('\n').some((l) => l.startsWith(`${user.name}:`)), `its ${f} range removed`);
  t.same(processesOfUid(user.uid), [], 'no process of its uid is left');
  t.equal(tunMode().toString(8), modeBefore.toString(8), '/dev/net/tun has its mode back');
  t.equal(seen.namespaces.length, 2, 'two namespaces were made');
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const n of seen.namespaces) t.notMatch(left, new RegExp(`^${n}\\b`, 'm'), `namespace ${n} removed`);
  t.same(seen.pids.filter((p) => alive(p)), [], 'every process started is gone');
  const owned = readdirSync('/tmp').filter((e) => {
    try {
      return statSync(`/tmp/${e}`).uid === user.uid;
    } catch {
      return false;
    }
  });
  t.same(owned, [], 'no file of its uid is left in /tmp (its work directory included)');
}

t.test('rootless mini run: every path, every workload that applies, validated figures; nothing left', needs, async (t) => {
  t.ok(existsSync(`${root}dist/cli/main.js`), 'portferry is built (npm run build)');
  const modeBefore = tunMode();
  const seen: Seen = { namespaces: [], pids: [], user: null };
  const result = await runRootlessBench({
    baseline: root,
    reps: 1,
    bulkSeconds: 1,
    otherSeconds: 0.5,
    connLoops: 2,
    installTools: false,
    graceMs: 10_000,
    observe: observer(seen),
  });
  t.same(result.paths.map((p) => `${p.name}:${p.status}`), ROOTLESS_PATH_NAMES.map((p) => `${p}:measured`), 'every path measured (this build as its own baseline)');
  t.same(result.workloads, [...ROOTLESS_WORKLOAD_IDS]);
  const notApplicable = (path: string, w: string): boolean => (w === 'rss' && path === 'direct') || (w === 'netns-10' && !path.startsWith('portferry-netns'));
  for (const c of result.cells) {
    if (notApplicable(c.path, c.workload)) {
      t.equal(c.status, 'skipped', `${c.path}/${c.workload}: n/a (${c.reason ?? ''})`);
      continue;
    }
    t.equal(c.status, 'ok', `${c.path}/${c.workload} ok${c.reason === undefined ? '' : `: ${c.reason}`}`);
    const v = c.metrics?.[WORKLOADS[c.workload].primary] ?? 0;
    t.ok(v > 0, `${c.path}/${c.workload}: ${WORKLOADS[c.workload].primary} = ${v} > 0`);
  }
  const rss = (p: string): Readonly<Record<string, number>> | undefined => result.cells.find((c) => c.path === p && c.workload === 'rss')?.metrics;
  t.ok((rss('rootlesskit-builtin')?.['processes'] ?? 0) >= 3, 'rootlesskit: the whole runtime counted (parent, child, slirp4netns)');
  t.ok((rss('portferry-netns')?.['processes'] ?? 0) >= 1, 'portferry --netns: its tree counted');
  const ten = result.cells.find((c) => c.path === 'portferry-netns' && c.workload === 'netns-10')?.metrics ?? {};
  t.ok((ten['rss10MiB'] ?? 0) > (ten['rss1MiB'] ?? 0), `10 namespaces hold more than 1 (${ten['rss1MiB']} → ${ten['rss10MiB']} MiB)`);
  t.ok((result.cells.find((c) => c.path === 'portferry-netns' && c.workload === 'tcp-1')?.metrics?.['cpuSecPerGB'] ?? 0) > 0, 'CPU per GB measured');
  t.equal(result.meta.scenario, 'rootless');
  const md = renderMarkdown(result);
  t.match(md, /^portferry bench --scenario rootless — /);
  t.match(md, /\| rootlesskit-builtin \| [\d.]+ \(/);
  t.match(md, /\| pasta \| [\d.]+ \(/);
  nothingLeft(t, seen, modeBefore);
});

t.test('rootless: an abort mid-run removes the user, the namespaces and every process, and restores /dev/net/tun', needs, async (t) => {
  const modeBefore = tunMode();
  const seen: Seen = { namespaces: [], pids: [], user: null };
  const abort = new AbortController();
  const started = Date.now();
  const run = runRootlessBench({
    paths: ['portferry-netns'],
    workloads: ['rr'],
    reps: 50,
    otherSeconds: 2,
    installTools: false,
    signal: abort.signal,
    progress: (l) => {
      if (l.startsWith('starting portferry-netns')) setTimeout(() => abort.abort('SIGINT'), 1500);
    },
    observe: observer(seen),
  });
  await t.rejects(run, BenchInterrupted);
  t.ok(Date.now() - started < 60_000, 'it stopped well before the 100 cells it was asked for');
  nothingLeft(t, seen, modeBefore);
});

t.test('portferry bench --scenario: refusals before anything runs, and the help', skipUnless({ root: true }), async (t) => {
  const bad = spawnSync(process.execPath, [bin, 'bench', '--scenario', 'cloud'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.match(bad.stderr, /PF_USAGE: --scenario: unknown "cloud"; choose from default, rootless/);
  const idle = spawnSync(process.execPath, [bin, 'bench', '--scenario', 'rootless', '--idle', '5'], { encoding: 'utf8' });
  t.equal(idle.status, 2);
  t.match(idle.stderr, /PF_USAGE: --scenario rootless: --idle belongs to the default scenario/);
  const path = spawnSync(process.execPath, [bin, 'bench', '--scenario', 'rootless', '--paths', 'nginx'], { encoding: 'utf8' });
  t.equal(path.status, 2);
  t.match(path.stderr, /PF_USAGE: --paths: unknown "nginx"; choose from direct, portferry-loopback/);
  const help = spawnSync(process.execPath, [bin, 'bench', '--help'], { encoding: 'utf8' }).stdout.replace(/\s+/g, ' ');
  for (const p of ROOTLESS_PATH_NAMES) t.ok(help.includes(p), `--paths lists ${p}`);
  for (const w of ROOTLESS_WORKLOAD_IDS) t.ok(help.includes(w), `--workloads lists ${w}`);
});
