// A real mini run (direct, portferry, the naive proxy and, when installed, haproxy with splice;
// very short durations): every cell measured with positive figures, the pinned workloads included,
// and nothing left behind — no namespace, no process. An abort (what the CLI does on a signal)
// removes everything at once. Plus the CLI's refusals and its help.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/env.js';
import { BenchInterrupted, runBench } from '../../src/bench/run.js';
import { PATH_NAMES, WORKLOADS, WORKLOAD_IDS } from '../../src/bench/types.js';
import { alive } from '../../src/bench/proc.js';
import { renderMarkdown, renderSvg } from '../../src/bench/report.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = `${root}bin/portferry.js`;

t.test('mini run: direct, portferry, naive haproxy-splice, positive figures, no leftovers', skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'prlimit', 'ss', 'nsenter', 'taskset', 'haproxy'] }), async (t) => {
  t.ok(existsSync(`${root}dist/cli/main.js`), 'portferry is built (npm run build)');
  const namespaces: string[] = [];
  const pids: number[] = [];
  const result = await runBench({
    paths: ['portferry', 'naive', 'haproxy-splice'],
    workloads: ['tcp-1', 'tcp-1-local', 'rr', 'rr-pinned', 'cps', 'cps-pinned', 'idle', 'udp-64'],
    reps: 1,
    bulkSeconds: 1,
    otherSeconds: 0.5,
    idleConnections: 200,
    installTools: false,
    graceMs: 10_000,
    observe: { namespaces: (n) => namespaces.push(...n), processes: (p) => pids.push(...p) },
  });
  t.same(result.paths.map((p) => `${p.name}:${p.status}`), ['direct:measured', 'portferry:measured', 'haproxy-splice:measured', 'naive:measured']);
  for (const c of result.cells) {
    if (c.path === 'haproxy-splice' && c.workload === 'udp-64') {
      t.match(c, { status: 'skipped', reason: 'haproxy does not forward UDP' });
      continue;
    }
    t.equal(c.status, 'ok', `${c.path}/${c.workload} ok${c.reason === undefined ? '' : `: ${c.reason}`}`);
    const v = c.metrics?.[WORKLOADS[c.workload].primary] ?? 0;
    t.ok(v > 0, `${c.path}/${c.workload}: ${WORKLOADS[c.workload].primary} = ${v} > 0`);
  }
  const pf = result.cells.find((c) => c.path === 'portferry' && c.workload === 'tcp-1');
  t.ok((pf?.metrics?.['cpuSecPerGB'] ?? 0) > 0, 'forwarder CPU per GB measured');
  t.ok((pf?.ratio ?? 0) > 0, 'ratio to direct');
  const idle = result.cells.find((c) => c.path === 'portferry' && c.workload === 'idle');
  t.equal(idle?.metrics?.['open'], 200, 'every idle connection open end to end');
  t.ok((idle?.metrics?.['rssMiB'] ?? 0) > 0, 'forwarder RSS measured');
  t.match(result.meta, { cpus: Number, kernel: String, node: process.version, reps: 1, connLoops: 16, pinnedCpu: Number });
  const md = renderMarkdown(result);
  t.match(md, /\| portferry \| [\d.]+ \(/);
  t.match(md, /\| naive \| [\d.]+ \(/);
  t.match(md, /connections, 1 CPU \(conn\/s\)/);
  t.match(renderSvg(result), /<\/svg>\n$/);

  t.equal(namespaces.length, 3, 'three namespaces were made');
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const n of namespaces) t.notMatch(left, new RegExp(`^${n}\\b`, 'm'), `namespace ${n} removed`);
  t.ok(pids.length >= 5, 'backends and forwarders were observed');
  t.same(pids.filter((p) => alive(p)), [], 'every process started is gone');
});

t.test('portferry bench without root: PF_NOT_ROOT', skipUnless({ root: true, tools: ['setpriv'] }), async (t) => {
  // As root, drop to nobody for the child; the check runs before anything is built or created.
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, bin, 'bench', '--quick'], { encoding: 'utf8', cwd: '/' });
  t.equal(r.status, 1, 'exit 1');
  t.match(r.stderr, /PF_NOT_ROOT: portferry bench needs root/);
  t.match(r.stderr, /sudo npx portferry bench/);
});

t.test('portferry bench --paths with an unknown name: PF_USAGE before anything runs', skipUnless({ root: true }), async (t) => {
  const r = spawnSync(process.execPath, [bin, 'bench', '--paths', 'portferry,envoy'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  t.match(r.stderr, /PF_USAGE: --paths: unknown "envoy"; choose from direct, portferry/);
  t.equal(r.stdout, '');
});

t.test('--baseline: another build measured as portferry-base in the same run', skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'prlimit', 'ss', 'nsenter'] }), async (t) => {
  // This very build serves as its own baseline: what matters is that both run and are told apart.
  const result = await runBench({ paths: ['portferry'], baseline: root, workloads: ['rr'], reps: 1, otherSeconds: 0.5, installTools: false, graceMs: 10_000 });
  t.same(result.paths.map((p) => `${p.name}:${p.status}`), ['direct:measured', 'portferry:measured', 'portferry-base:measured'], 'the baseline is added to the paths asked for');
  t.match(result.paths.find((p) => p.name === 'portferry-base')?.description, `at ${root.replace(/\/$/, '')}`);
  for (const c of result.cells) t.ok(c.status === 'ok' && (c.metrics?.['tps'] ?? 0) > 0, `${c.path}: ${c.status} ${c.reason ?? ''}`);
  const without = await runBench({ paths: ['portferry-base'], workloads: ['rr'], reps: 1, otherSeconds: 0.5, installTools: false });
  t.match(without.paths.find((p) => p.name === 'portferry-base'), { status: 'skipped', reason: /no baseline given \(--baseline DIR/ }, 'asked for without --baseline: skipped, says why');
});

t.test('an abort mid-run (the CLI on SIGINT) removes everything at once and rejects with BenchInterrupted', skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'prlimit', 'ss', 'nsenter'] }), async (t) => {
  const namespaces: string[] = [];
  const pids: number[] = [];
  const abort = new AbortController();
  const lines: string[] = [];
  const started = Date.now();
  const run = runBench({
    paths: ['naive'],
    workloads: ['rr', 'cps'],
    reps: 50,
    otherSeconds: 2,
    installTools: false,
    signal: abort.signal,
    progress: (l) => {
      lines.push(l);
      // Abort while the first cell's client runs.
      if (l.startsWith('starting naive')) setTimeout(() => abort.abort('SIGINT'), 1500);
    },
    observe: { namespaces: (n) => namespaces.push(...n), processes: (p) => pids.push(...p) },
  });
  await t.rejects(run, BenchInterrupted);
  t.ok(Date.now() - started < 30_000, 'it stopped well before the 100 cells it was asked for');
  t.ok(lines.some((l) => l.startsWith('interrupted: removing')), 'says what it does');
  t.equal(namespaces.length, 3, 'namespaces had been made');
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const n of namespaces) t.notMatch(left, new RegExp(`^${n}\\b`, 'm'), `namespace ${n} removed`);
  t.same(pids.filter((p) => alive(p)), [], 'every process started is gone');
});

t.test('portferry bench --help lists every path and workload', async (t) => {
  const r = spawnSync(process.execPath, [bin, 'bench', '--help'], { encoding: 'utf8' });
  t.equal(r.status, 0);
  const help = r.stdout.replace(/\s+/g, ' ');
  for (const p of PATH_NAMES) t.ok(help.includes(p), `--paths lists ${p}`);
  for (const w of WORKLOAD_IDS) t.ok(help.includes(w), `--workloads lists ${w}`);
  t.match(help, /--conn-loops <n>/);
  t.match(help, /--cpu <n>/);
});
