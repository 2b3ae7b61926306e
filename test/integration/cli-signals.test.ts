// Signals belong to the CLI (issue 15): `portferry bench` and `portferry demo` hold SIGINT/SIGTERM,
// remove every namespace and process they made, then end — bench by the signal itself (as a shell
// expects of an interrupted command), demo with exit 0 once it serves (Ctrl-C is how it stops).
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { LineReader } from '../../src/bench/proc.js';
import { skipUnless } from '../helpers/env.js';
import { nodeArgv } from '../helpers/net.js';
import { exited, lineReader, netnsList } from '../netns/util.js';

const bin = fileURLToPath(new URL('../../bin/portferry.js', import.meta.url));

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  t.test(`bench: ${sig} mid-run removes the namespaces and processes, then the signal ends it`, skipUnless({ root: true, tools: ['ip', 'nsenter', 'iperf3', 'cc', 'prlimit', 'ss'] }), async (t) => {
    // Without tap's NODE_OPTIONS hooks (they add signal handlers of their own to the child).
    const child = spawn(...nodeArgv(bin, 'bench', '--paths', 'naive', '--workloads', 'rr', '--reps', '50', '--seconds', '1', '--no-install'), { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const end = exited(child);
    const err = new LineReader(child.stderr);
    const names = ((await err.waitFor((l) => l.startsWith('bench: namespaces: '), 60_000)) ?? '').replace('bench: namespaces: ', '');
    const made = names.split(', ');
    t.equal(made.length, 3, `three namespaces: ${names}`);
    t.ok(await err.waitFor((l) => /rep 1\/50 rr/.test(l), 60_000), 'the first cell ran');
    for (const n of made) t.ok(netnsList().includes(n), `${n} exists while it runs`);
    child.kill(sig);
    const { code, signal } = await end;
    t.equal(signal, sig, `ended by ${sig} (exit code ${code})`);
    t.ok(err.lines.some((l) => l.includes(`${sig}: removing namespaces`)), 'it said what it does');
    const left = netnsList();
    t.same(made.filter((n) => left.includes(n)), [], 'no namespace left');
  });
}

t.test('demo: Ctrl-C while it serves removes its namespace and exits 0', skipUnless({ root: true, tools: ['ip', 'nsenter'] }), async (t) => {
  const child = spawn(...nodeArgv(bin, 'demo', '--port', '0'), { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const end = exited(child);
  const out = lineReader(child);
  const [, ns = ''] = await out.waitFor(/inside network namespace (pf-ctr-[0-9a-f]+)/, 30_000);
  await out.waitFor(/^try: /, 30_000);
  t.ok(netnsList().includes(ns), `${ns} exists while it serves`);
  child.kill('SIGINT');
  t.same(await end, { code: 0, signal: null }, 'exit 0');
  t.notOk(netnsList().includes(ns), `${ns} removed`);
});
