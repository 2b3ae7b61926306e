// The cleanup itself: a child process (running the built dist) holds a topology and a process
// inside it, then dies without calling destroy() — by an uncaught throw, by process.exit, by
// SIGINT or SIGTERM. Nothing it made may be left: no namespace, no link, no process.
import t from 'tap';
import { spawn } from 'node:child_process';
import { skipUnless } from '../helpers/env.js';
import { createTopology, destroyAllTopologies } from '../../src/netns/topology.js';
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

// Issue 15: the topology module used to install SIGINT/SIGTERM/SIGHUP handlers of its own (and
// the bench worked around them). Signals belong to the program: these fail on that code.
t.test('creating a topology leaves the process signals alone', skipUnless({ root: true, tools: ['ip', 'nsenter'] }), async (t) => {
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const before = signals.map((s) => process.listenerCount(s));
  const topo = await createTopology({ mode: 'root', ipv6: false });
  t.teardown(() => topo.destroy());
  t.same(signals.map((s) => process.listenerCount(s)), before, 'no signal listener added');
});

t.test('destroyAllTopologies while one is being created (a signal during setup): it fails and leaves nothing', skipUnless({ root: true, tools: ['ip', 'nsenter'] }), async (t) => {
  for (const step of ['netns', 'links', 'addresses', 'forwarding']) {
    let names: string[] = [];
    const made = createTopology({ mode: 'root', client: true, ipv6: false }, {
      afterStep: async (s, topo) => {
        names = Object.values(topo.names).filter((n): n is string => n !== null);
        if (s === step) await destroyAllTopologies();
      },
    });
    await t.rejects(made, { code: 'PF_NETNS_SETUP' }, `destroyed after ${step}: creation fails`);
    t.equal(names.length, 3, `after ${step}: the namespaces had been made`);
    const ns = netnsList();
    t.same(names.filter((n) => ns.includes(n)), [], `after ${step}: no namespace left`);
  }
});
