// A real mini run (direct and portferry, very short durations): every cell measured with positive
// figures, and nothing left behind — no namespace, no process. Plus the CLI's refusals.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/env.js';
import { runBench } from '../../bench/run.js';
import { WORKLOADS } from '../../bench/types.js';
import { alive } from '../../bench/proc.js';
import { renderMarkdown, renderSvg } from '../../bench/report.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = `${root}bin/portferry.js`;

t.test('mini run: direct and portferry, positive figures, no leftovers', skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'prlimit', 'ss', 'nsenter'] }), async (t) => {
  t.ok(existsSync(`${root}dist/cli/main.js`), 'portferry is built (npm run build)');
  const namespaces: string[] = [];
  const pids: number[] = [];
  const result = await runBench({
    paths: ['portferry'],
    workloads: ['tcp-1', 'tcp-1-local', 'rr', 'cps', 'idle', 'udp-64'],
    reps: 1,
    bulkSeconds: 1,
    otherSeconds: 0.5,
    idleConnections: 200,
    installTools: false,
    graceMs: 10_000,
    observe: { namespaces: (n) => namespaces.push(...n), processes: (p) => pids.push(...p) },
  });
  t.same(result.paths.map((p) => `${p.name}:${p.status}`), ['direct:measured', 'portferry:measured']);
  for (const c of result.cells) {
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
  t.match(result.meta, { cpus: Number, kernel: String, node: process.version, reps: 1 });
  t.match(renderMarkdown(result), /\| portferry \| [\d.]+ \(/);
  t.match(renderSvg(result), /<\/svg>\n$/);

  t.equal(namespaces.length, 3, 'three namespaces were made');
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const n of namespaces) t.notMatch(left, new RegExp(`^${n}\\b`, 'm'), `namespace ${n} removed`);
  t.ok(pids.length >= 4, 'backends and forwarder were observed');
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
