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
