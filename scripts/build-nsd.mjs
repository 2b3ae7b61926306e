#!/usr/bin/env node
// Builds the native namespace socket helper (native/pf-nsd.c → native/build/pf-nsd) with the
// system's C compiler. Run by `npm install`/`npm ci` (the package's "install" script) and by
// `npm run build`. It never fails the install: without `cc`, or when the build fails, it says so
// and portferry uses its Node helper for namespaces instead (docs/netns.md). Up to date: nothing
// to do. The binary is written under a temporary name and renamed, so a running helper is never
// overwritten in place.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'native', 'pf-nsd.c');
const out = join(root, 'native', 'build', 'pf-nsd');
const say = (msg) => process.stderr.write(`portferry: ${msg}\n`);

function main() {
  if (process.platform !== 'linux') return say('the native namespace helper is Linux-only; skipped');
  if (!existsSync(src)) return say(`${src} is missing; the Node namespace helper will be used`);
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) return;
  const cc = process.env.CC || 'cc';
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const r = spawnSync(cc, ['-O2', '-Wall', '-o', tmp, src], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) {
    rmSync(tmp, { force: true });
    const why = r.error !== undefined ? r.error.message : (r.stderr || `exit ${r.status}`).trim();
    return say(`could not build the native namespace helper with ${cc} (${why}); the Node helper will be used for --netns (install a C compiler and run \`npm run build:native\` for the faster one)`);
  }
  renameSync(tmp, out);
}

try {
  main();
} catch (err) {
  say(`building the native namespace helper failed: ${err instanceof Error ? err.message : String(err)}; the Node helper will be used`);
}
