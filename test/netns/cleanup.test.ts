// The cleanup itself: a child process (running the built dist) holds a topology and a process
// inside it, then dies without calling destroy() — by an uncaught throw, by process.exit, by
// SIGINT or SIGTERM. Nothing it made may be left: no namespace, no link, no process.
import t from 'tap';
import { spawn } from 'node:child_process';
import { skipUnless } from '../helpers/env.js';
import { exited, fixture, lineReader, linkNames, netnsList, nodeArgv, pidAlive, until } from './util.js';

interface Made {
  names: Record<string, string | null>;
  paths: Record<string, string | null>;
  sleeperPid: number;
  holderPid: number | null;
}

const cases: { action: 'throw' | 'exit' | 'wait'; mode: 'root' | 'rootless'; signal?: NodeJS.Signals }[] = [
  { action: 'throw', mode: 'root' },
  { action: 'exit', mode: 'root' },
  { action: 'wait', mode: 'root', signal: 'SIGINT' },
  { action: 'wait', mode: 'root', signal: 'SIGTERM' },
  { action: 'throw', mode: 'rootless' },
  { action: 'wait', mode: 'rootless', signal: 'SIGINT' },
];

for (const c of cases) {
  const how = c.signal === undefined ? c.action : c.signal;
  t.test(`${c.mode}: a process that ends by ${how} while holding a topology leaves nothing`, skipUnless({ root: true, tools: ['ip', 'nsenter', 'unshare', 'setpriv'] }), async (t) => {
    const [cmd, args] = nodeArgv(fixture('topology-child.mjs'), c.action, c.mode);
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const end = exited(child);
    const line = await lineReader(child).waitFor(/^\{.*\}$/, 20_000);
    const made = JSON.parse(line[0]) as Made;
    t.ok(pidAlive(made.sleeperPid), 'the process inside ctr runs');
    if (c.mode === 'root') {
      const names = Object.values(made.names).filter((n): n is string => n !== null);
      t.equal(names.length, 3);
      for (const n of names) t.ok(netnsList().includes(n), `${n} exists while the child runs`);
    } else {
      t.ok(made.holderPid !== null && pidAlive(made.holderPid), 'the namespace holder runs');
    }

    if (c.signal !== undefined) child.kill(c.signal);
    else child.stdin.write('go\n');
    const { code, signal } = await end;
    if (c.action === 'throw') {
      t.equal(code, 1, 'the throw ended the child');
      t.match(stderr, /thrown on purpose/);
    } else if (c.action === 'exit') {
      t.equal(code, 0);
    } else {
      t.equal(signal, c.signal, 'the signal is re-raised after cleanup: the child dies of it');
    }

    const names = Object.values(made.names).filter((n): n is string => n !== null);
    const ns = netnsList();
    t.same(names.filter((n) => ns.includes(n)), [], 'no namespace left');
    t.same(linkNames().filter((l) => l === 'to-ctr' || l === 'to-client'), [], 'no link left');
    await until(() => !pidAlive(made.sleeperPid), 'the process inside ctr to be gone');
    t.pass('the process inside ctr is gone');
    if (made.holderPid !== null) {
      const holder = made.holderPid;
      await until(() => !pidAlive(holder), 'the namespace holder to be gone');
      t.pass('the namespace holder is gone');
    }
  });
}
