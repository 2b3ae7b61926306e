// Issue 20 bug 5: a failed state write was reported as success. With the state file on a full
// file system every POST got 201 while PF_STATE_WRITE went only to the log; after a restart the
// mappings were missing and ids were handed out again. Now the change is undone (listeners
// unbound, the registry as before) and the client gets 507 PF_STATE_WRITE; nextId in the file
// never goes back. And two daemons on one state file both handed out id 1: the second one is now
// refused with PF_STATE_LOCKED naming the file and the first one's pid.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { apiRequest, ApiClient } from '../../src/control/client.js';
import { skipUnless } from '../helpers/env.js';
import { connectRefused, echoServer, freePort, runCli, until } from '../helpers/net.js';

interface T {
  teardown(fn: () => unknown): void;
}

function tempDir(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-stw-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A 64 KiB tmpfs on a fresh directory, lazily unmounted in teardown (also when the test fails). */
function smallTmpfs(t: T, parent: string): string {
  const dir = path.join(parent, 'fs');
  fs.mkdirSync(dir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'pf-state-test', dir]);
  t.teardown(() => {
    try {
      execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
    } catch {
      // already unmounted
    }
  });
  return dir;
}

/** Writes a file until the file system is full (ENOSPC); returns its path. */
function fill(dir: string): string {
  const filler = path.join(dir, 'filler');
  const fd = fs.openSync(filler, 'w');
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(4096, 1));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    fs.closeSync(fd);
  }
  return filler;
}

function nextIdOf(file: string): number {
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { nextId: number }).nextId;
}

const mapping = (name: string, port: number, backend: number): Record<string, unknown> => ({ name, hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: backend });

t.test('bug 5: a state write that fails (ENOSPC) undoes the change and answers 507 PF_STATE_WRITE; ids are never reused, also after a restart', skipUnless({ root: true, tools: ['mount', 'umount'] }), async (t) => {
  const dir = tempDir(t);
  const small = smallTmpfs(t, dir);
  const [sock, state] = [path.join(dir, 'api.sock'), path.join(small, 'state.json')];
  const echo = await echoServer(t.teardown.bind(t));
  const [pa, pb, pc, pd, pe, pf] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  // A command-line mapping too: the state file does not keep it, so its reload needs no write.
  const conf = path.join(dir, 'pf.yaml');
  const confWith = (port: number): string => `mappings:\n  - {name: cli, hostIP: 127.0.0.1, hostPort: ${port}, containerIP: 127.0.0.1, containerPort: ${echo.port}}\n`;
  fs.writeFileSync(conf, confWith(pe));
  const first = runCli(t.teardown.bind(t), ['run', '-c', conf, '--api', sock, '--state', state]);
  await first.ready;
  const client = new ApiClient(sock);
  const nextIds: number[] = [];

  const [a] = await client.addMappings([mapping('a', pa, echo.port)], 'ctr');
  nextIds.push(nextIdOf(state));
  const saved = fs.readFileSync(state);

  const filler = fill(small);
  const post = await apiRequest(sock, 'POST', '/v1/mappings', { owner: 'ctr', mappings: [mapping('b', pb, echo.port)] });
  t.equal(post.status, 507, 'POST on a full file system: 507, not 201');
  t.match(post.body, { code: 'PF_STATE_WRITE', message: /ENOSPC/ });
  t.ok(await connectRefused(pb), 'the mapping of the refused POST is not bound');
  const del = await apiRequest(sock, 'DELETE', `/v1/mappings/${a?.id}`);
  t.equal(del.status, 507, 'DELETE: 507');
  t.match(del.body, { code: 'PF_STATE_WRITE' });
  t.notOk(await connectRefused(pa), 'the mapping of the refused DELETE still serves');
  const put = await apiRequest(sock, 'PUT', '/v1/owners/ctr', { mappings: [mapping('c', pc, echo.port)] });
  t.equal(put.status, 507, 'PUT /v1/owners: 507');
  t.notOk(await connectRefused(pa), 'the replaced set is back: a serves');
  t.ok(await connectRefused(pc), 'the replacing set is not bound');
  const rootless = await apiRequest(sock, 'POST', '/v1/ports', { proto: 'tcp', parentIP: '127.0.0.1', parentPort: pd, childIP: '127.0.0.1', childPort: echo.port });
  t.equal(rootless.status, 507, 'rootlesskit POST /v1/ports: 507');
  t.ok(await connectRefused(pd));
  t.same((await client.listMappings()).filter((m) => m.origin !== 'cli').map((m) => m.name), ['a'], 'the registry is as before the refused changes');
  fs.writeFileSync(conf, confWith(pf));
  first.child.kill('SIGHUP');
  await until(() => first.stderr().includes('"msg":"reloaded"'), 10_000, 'the reload');
  t.ok(await connectRefused(pe), 'a SIGHUP reload of the command line works on the full file system (nothing the file keeps changed)');
  t.notOk(await connectRefused(pf));
  t.ok(fs.readFileSync(state).equals(saved), 'the state file is unchanged');
  t.equal(first.child.exitCode, null, 'the daemon serves on');

  fs.rmSync(filler);
  const [b] = await client.addMappings([mapping('b', pb, echo.port)], 'ctr');
  const handedOut = (a?.id ?? 0) + 4; // to b, c and the rootlesskit port (refused), and the reloaded cli mapping
  t.ok((b?.id ?? 0) > handedOut, `an id handed out to a refused change is not handed out again (b got ${b?.id})`);
  t.notOk(await connectRefused(pb), 'b serves');
  nextIds.push(nextIdOf(state));
  await client.removeMapping(b?.id ?? 0);
  nextIds.push(nextIdOf(state));
  const [b2] = await client.addMappings([mapping('b2', pb, echo.port)], 'ctr');
  nextIds.push(nextIdOf(state));
  const before = await client.listMappings();
  first.child.kill('SIGKILL');
  await first.exited;

  const second = runCli(t.teardown.bind(t), ['run', '-c', conf, '--api', sock, '--state', state]);
  await second.ready;
  const after = await client.listMappings();
  const runtime = (ms: typeof after): unknown[] => ms.filter((m) => m.origin !== 'cli').map((m) => [m.id, m.name, m.owner]);
  t.same(runtime(after), runtime(before), 'after SIGKILL and a restart: exactly the mappings the API acknowledged');
  const [e] = await client.addMappings([mapping('e', pc, echo.port)]);
  t.ok((e?.id ?? 0) > (b2?.id ?? Infinity), `no id is handed out again after the restart (${e?.id} > ${b2?.id})`);
  nextIds.push(nextIdOf(state));
  t.same([...nextIds].sort((x, y) => x - y), nextIds, `nextId in the file never went back (${nextIds.join(' → ')})`);
  second.child.kill('SIGTERM');
  t.equal(await second.exited, 0);
});

t.test('bug 5: a second daemon on the same state file is refused with PF_STATE_LOCKED naming the file and the pid; a dead holder\'s lock is taken over', async (t) => {
  const dir = tempDir(t);
  const state = path.join(dir, 'state.json');
  const echo = await echoServer(t.teardown.bind(t));
  const [p1, p2] = [await freePort(), await freePort()];
  // As in the report: both start on a state file that does not exist yet, then each adds a mapping.
  const first = runCli(t.teardown.bind(t), ['run', '--api', path.join(dir, 'a.sock'), '--state', state]);
  await first.ready;
  const second = runCli(t.teardown.bind(t), ['run', '--api', path.join(dir, 'b.sock'), '--state', state]);
  t.equal(await Promise.race([second.exited, second.ready.then(() => 'ready')]), 1, 'the second daemon does not start');
  t.match(second.stderr(), /PF_STATE_LOCKED/, 'with a coded error');
  t.match(second.stderr(), new RegExp(`${state.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}.*\\b${first.child.pid}\\b`), 'naming the file and the pid of the daemon that has it');
  t.notOk(fs.existsSync(state), 'the second daemon wrote nothing');
  const [a] = await new ApiClient(path.join(dir, 'a.sock')).addMappings([mapping('a', p1, echo.port)], 'ctr-a');
  t.equal(a?.id, 1);
  t.notOk(await connectRefused(p1), 'the first daemon serves on');

  // A holder killed with SIGKILL leaves its lock behind: the next start sees it is dead.
  first.child.kill('SIGKILL');
  await first.exited;
  const third = runCli(t.teardown.bind(t), ['run', '--api', path.join(dir, 'c.sock'), '--state', state]);
  await third.ready;
  const client = new ApiClient(path.join(dir, 'c.sock'));
  t.same((await client.listMappings()).map((m) => m.id), [a?.id], 'the mapping of the first daemon came back');
  const [b] = await client.addMappings([mapping('b', p2, echo.port)]);
  t.equal(b?.id, (a?.id ?? 0) + 1, 'and ids go on from it');
  third.child.kill('SIGTERM');
  t.equal(await third.exited, 0);
  t.same(fs.readdirSync(dir).filter((n) => n.includes('lock')), [], 'a clean stop removes the lock');
});
