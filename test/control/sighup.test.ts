// Issue 14 item 8: SIGHUP killed `run` at once with no drain (a client could take a truncated
// stream for a clean EOF). Now SIGHUP reloads the command line's mappings: the -c file is read
// again and the difference applied through the forwarder's queue; unchanged mappings keep their
// live connections; an invalid file is logged and changes nothing; runtime mappings stay.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { echoServer, connectRefused as refused, freePort, runCli, until } from '../helpers/net.js';


function echoOnce(s: net.Socket, text: string): Promise<string> {
  return new Promise((resolve) => {
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.write(text);
  });
}

t.test('SIGHUP reloads -c: added, removed, unchanged (live connection kept); invalid file changes nothing', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-hup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'pf.yaml');
  const sock = path.join(dir, 'api.sock');
  const echo = await echoServer(t.teardown.bind(t));
  const [keep, drop, add, api] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const mapping = (name: string, port: number): string => `  - {name: ${name}, hostIP: 127.0.0.1, hostPort: ${port}, containerIP: 127.0.0.1, containerPort: ${echo.port}}\n`;
  fs.writeFileSync(file, `mappings:\n${mapping('keep', keep)}${mapping('drop', drop)}`);
  const cli = runCli(t.teardown.bind(t), ['run', '-c', file, '--api', sock]);
  await cli.ready;
  const client = new ApiClient(sock);
  await client.addMappings([{ name: 'runtime', hostIP: '127.0.0.1', hostPort: api, containerIP: '127.0.0.1', containerPort: echo.port }], 'ctr');
  const live = net.connect(keep, '127.0.0.1');
  t.teardown(() => live.destroy());
  await new Promise((r) => live.once('connect', r));
  t.equal(await echoOnce(live, 'before'), 'before');
  const keepId = (await client.listMappings()).find((m) => m.name === 'keep')?.id;

  fs.writeFileSync(file, `mappings:\n${mapping('keep', keep)}${mapping('add', add)}`);
  cli.child.kill('SIGHUP');
  await until(() => cli.stderr().includes('"msg":"reloaded"'), 10_000, 'reloaded');
  t.equal(cli.child.exitCode, null, 'still running after SIGHUP');
  t.ok(await refused(drop), 'the mapping removed from the file is closed');
  t.notOk(await refused(add), 'the mapping added to the file serves');
  t.equal(await echoOnce(live, 'after'), 'after', 'the unchanged mapping kept its live connection');
  const names = (await client.listMappings()).map((m) => `${m.id}:${m.name}`);
  t.ok(names.includes(`${keepId}:keep`), 'the unchanged mapping kept its id');
  t.ok(names.some((n) => n.endsWith(':runtime')), 'the runtime mapping is untouched');

  fs.writeFileSync(file, 'mappings: [ {hostPort: nope} ]\n');
  cli.child.kill('SIGHUP');
  await until(() => cli.stderr().includes('reload failed'), 10_000, 'reload failed logged');
  t.match(cli.stderr(), /PF_CONFIG_INVALID/);
  t.notOk(await refused(add), 'an invalid file changes nothing');
  t.equal(await echoOnce(live, 'still'), 'still');
  live.end();
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0, 'SIGTERM still drains and exits 0');
});

// Issue 20 bug 7e: a SIGHUP while a big state file was being restored killed the daemon (exit
// 129, no log line): the handlers were installed only once it was ready. Now they are installed
// first thing: SIGHUP before ready is logged and the reload runs once ready; SIGTERM before ready
// stops cleanly (exit 0), the state file untouched.
const RESTORED = 1000;

/** A state file of RESTORED mappings, each on its own loopback address and the same port. */
function bigState(dir: string, port: number, backend: number, count = RESTORED): string {
  const file = path.join(dir, 'state.json');
  const entries = Array.from({ length: count }, (_, i) => ({
    id: i + 1,
    owner: 'ctr',
    mapping: { name: `m${i}`, hostIP: `127.20.${Math.floor(i / 250)}.${(i % 250) + 1}`, hostPort: port, containerIP: '127.0.0.1', containerPort: backend },
  }));
  fs.writeFileSync(file, JSON.stringify({ version: 1, nextId: count + 1, entries }));
  return file;
}

/** The `msg` of every JSON log line, in order. */
function messages(stderr: string): string[] {
  return stderr.split('\n').flatMap((line) => {
    try {
      return [String((JSON.parse(line) as { msg?: unknown }).msg)];
    } catch {
      return [];
    }
  });
}

t.test('bug 7e: SIGHUP during a long state restore: the daemon survives, logs it, reaches ready, serves, then reloads', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-hup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const echo = await echoServer(t.teardown.bind(t));
  const port = await freePort();
  const state = bigState(dir, port, echo.port);
  const sock = path.join(dir, 'api.sock');
  const cli = runCli(t.teardown.bind(t), ['run', '--state', state, '--api', sock]);
  // The first log line comes at the start of the start-up, long before 1000 mappings are restored.
  await until(() => messages(cli.stderr()).length > 0, 10_000, 'the first log line');
  cli.child.kill('SIGHUP');
  await cli.ready;
  const msgs = messages(cli.stderr());
  const hup = msgs.findIndex((m) => /SIGHUP before ready/.test(m));
  t.ok(hup >= 0, 'the SIGHUP is logged');
  t.ok(hup < msgs.indexOf('ready'), 'it came during the start-up, before ready');
  t.equal(cli.child.exitCode, null, 'the daemon lives');
  await until(() => messages(cli.stderr()).includes('reloaded'), 10_000, 'the deferred reload');
  const last = net.connect(port, `127.20.${Math.floor((RESTORED - 1) / 250)}.${((RESTORED - 1) % 250) + 1}`);
  t.teardown(() => last.destroy());
  await new Promise((r) => last.once('connect', r));
  t.equal(await echoOnce(last, 'restored'), 'restored', 'the last restored mapping serves');
  last.end();
  t.equal((await new ApiClient(sock).listMappings()).length, RESTORED, 'every mapping was restored');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0);
});

t.test('bug 7e: SIGTERM during a long state restore stops cleanly: exit 0, nothing left bound, the state file untouched', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-hup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  // Three times the SIGHUP test's file, and the signal sent from the first stderr chunk itself
  // (no polling delay): on a quiet machine 1,000 mappings were restored before a polled signal
  // arrived, and the daemon was rightly ready by then.
  const state = bigState(dir, port, 9, 3 * RESTORED);
  const before = fs.readFileSync(state);
  const cli = runCli(t.teardown.bind(t), ['run', '--state', state, '--api', path.join(dir, 'api.sock')]);
  await new Promise<void>((resolve) => cli.child.stderr?.once('data', () => resolve()));
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0, 'a clean stop');
  const msgs = messages(cli.stderr());
  t.notOk(msgs.includes('ready'), 'it stopped before ready');
  t.ok(msgs.includes('stopped'), 'and says so');
  t.ok(fs.readFileSync(state).equals(before), 'the state file is unchanged');
  t.ok(await refused(port, '127.20.0.1'), 'nothing is bound');
  t.same(fs.readdirSync(dir).sort(), ['state.json'], 'no socket, lock or temp file is left');
});
