// The package as users get it (issue 15, acceptance 5): `npm pack` → `npm install` of the tarball
// in a temporary directory → the installed `portferry` runs `bench --help`, `demo --once` and a
// tiny real `bench` (which used to need the TypeScript dev dependency and sources the tarball did
// not hold). Packed with --ignore-scripts: the suite has just built dist/, and rebuilding it here
// would rewrite files other tests are reading. Installed with --prefer-offline (the dependencies
// are in npm's cache after `npm ci`). The temporary directory is removed afterwards.
import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PATH_NAMES, WORKLOAD_IDS } from '../src/bench/types.js';
import { hasTool, skipUnless } from './helpers/env.js';

const root = fileURLToPath(new URL('..', import.meta.url));

function run(cmd: string, args: readonly string[], cwd: string, timeoutMs = 120_000): SpawnSyncReturns<string> {
  // npm_* variables of an enclosing `npm test` would point npm at this checkout.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_') && k !== 'NODE_OPTIONS'));
  return spawnSync(cmd, [...args], { cwd, encoding: 'utf8', timeout: timeoutMs, env });
}

/** The test message: what ran, and when it failed, how and what it said. */
function explain(what: string, r: SpawnSyncReturns<string>): string {
  return r.status === 0 ? what : `${what}: exit ${r.status ?? r.signal}: ${(r.stderr || r.stdout || String(r.error ?? '')).trim().slice(-1500)}`;
}

/** The installed command, as a user runs it (without tap's NODE_OPTIONS hooks). */
function portferry(bin: string, args: readonly string[], cwd: string, timeoutMs?: number): SpawnSyncReturns<string> {
  return run('env', ['-u', 'NODE_OPTIONS', bin, ...args], cwd, timeoutMs);
}

t.test('npm pack → npm install of the tarball → the installed portferry works', skipUnless({ tools: ['npm'] }), async (t) => {
  t.ok(existsSync(join(root, 'dist', 'cli', 'main.js')), 'built (npm run build) before packing');
  const dir = mkdtempSync(join(tmpdir(), 'pf-pack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  const pack = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], root);
  t.equal(pack.status, 0, explain('npm pack', pack));
  const [info] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
  t.ok(info, 'npm pack reported the tarball');
  if (info === undefined) return;
  const files = info.files.map((f) => f.path);
  for (const f of ['bin/portferry.js', 'dist/cli/main.js', 'dist/bench/index.js', 'bench/gen/pfgen.c', 'bench/naive-proxy.mjs', 'native/pf-nsd.c', 'scripts/build-nsd.mjs']) t.ok(files.includes(f), `the tarball holds ${f}`);
  t.notOk(files.some((f) => f.startsWith('native/build/')), 'no prebuilt binary in the tarball: the install builds it');
  t.notOk(files.some((f) => f.startsWith('src/') || f.startsWith('test/')), 'no sources or tests in the tarball');

  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), '{ "name": "pf-pack-check", "version": "1.0.0", "private": true }\n');
  const install = run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, info.filename)], app, 240_000);
  t.equal(install.status, 0, explain('npm install of the tarball', install));
  t.notOk(existsSync(join(app, 'node_modules', 'typescript')), 'no TypeScript installed: the package needs no compiler at run time');
  if (hasTool('cc')) t.ok(existsSync(join(app, 'node_modules', 'portferry', 'native', 'build', 'pf-nsd')), 'the install built the native namespace helper (pf-nsd) with cc');
  const bin = join(app, 'node_modules', '.bin', 'portferry');
  t.ok(existsSync(bin), 'node_modules/.bin/portferry');

  const help = portferry(bin, ['bench', '--help'], app);
  t.equal(help.status, 0, explain('bench --help', help));
  const text = help.stdout.replace(/\s+/g, ' ');
  for (const p of PATH_NAMES) t.ok(text.includes(p), `bench --help lists the ${p} path`);
  for (const w of WORKLOAD_IDS) t.ok(text.includes(w), `bench --help lists the ${w} workload`);

  t.test('demo --once --no-netns (no root needed)', async (t) => {
    const r = portferry(bin, ['demo', '--once', '--no-netns', '--port', '0'], app, 60_000);
    t.equal(r.status, 0, explain('demo --once --no-netns', r));
    t.match(r.stdout, /ok: GET .* answered 200: hello from the portferry demo backend/);
  });

  t.test('demo --once in a throwaway namespace', skipUnless({ root: true, tools: ['ip', 'nsenter'] }), async (t) => {
    const r = portferry(bin, ['demo', '--once', '--port', '0'], app, 60_000);
    t.equal(r.status, 0, explain('demo --once', r));
    t.match(r.stdout, /backend: .* inside network namespace pf-ctr-/);
    t.match(r.stdout, /ok: GET .* answered 200: hello from the portferry demo backend/);
  });

  t.test('a tiny bench from the installed package: pfgen built from the shipped source, the naive proxy started', skipUnless({ root: true, tools: ['ip', 'nsenter', 'iperf3', 'cc', 'prlimit', 'ss'] }), async (t) => {
    const r = portferry(bin, ['bench', '--paths', 'naive', '--workloads', 'rr', '--reps', '1', '--seconds', '0.5', '--no-install'], app, 120_000);
    t.equal(r.status, 0, explain('bench', r));
    t.match(r.stdout, /\| direct \| [\d,.]+ \(1\.00×\)/);
    t.match(r.stdout, /\| naive \| [\d,.]+ \(\d\.\d\d×\)/);
    t.notMatch(r.stdout, /FAILED/);
  });
});
