// Issue 20, item 7h: `run -c A.yaml -c B.yaml` silently served only B (commander kept the last
// -c). Several -c files are merged: run, validate, rules and `ports add` take every one, each
// file's `defaults:` stay its own, a name used in two files is PF_NAME_DUPLICATE naming both
// files, the same file twice is PF_CONFIG_REPEATED, and SIGHUP reloads every file.
import t, { type Test } from 'tap';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { connectRefused as refused, echoRoundTrip, echoServer, freePort, runCli, until } from '../helpers/net.js';

interface Run {
  readonly code: number | string;
  readonly stdout: string;
  readonly stderr: string;
}

async function cli(t: Test, args: string[]): Promise<Run> {
  const p = runCli(t.teardown.bind(t), args);
  const code = await p.exited;
  for (const s of [p.child.stdout, p.child.stderr]) if (s !== null && !s.closed) await once(s, 'close');
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

function tmp(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-multi-c-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const mapping = (name: string, port: number, target: number): string => `  - {name: ${name}, hostIP: 127.0.0.1, hostPort: ${port}, containerIP: 127.0.0.1, containerPort: ${target}}\n`;

t.test('validate -c A -c B: both files, each with its own defaults', async (t) => {
  const dir = tmp(t);
  const a = path.join(dir, 'a.yaml');
  const b = path.join(dir, 'b.yaml');
  fs.writeFileSync(a, `defaults: {proxyProtocol: v2}\nmappings:\n${mapping('from-a', 8001, 80)}`);
  fs.writeFileSync(b, `mappings:\n${mapping('from-b', 8002, 80)}`);
  const r = await cli(t, ['validate', '--json', '-c', a, '-c', b]);
  t.equal(r.code, 0, r.stderr);
  const got = JSON.parse(r.stdout) as { name: string; proxyProtocol: string | null }[];
  t.same(got.map((m) => m.name), ['from-a', 'from-b'], 'the mappings of both files, in the order given');
  t.equal(got[0]?.proxyProtocol, 'v2', 'a.yaml\'s defaults apply to a.yaml\'s mapping');
  t.not(got[1]?.proxyProtocol, 'v2', 'and not to b.yaml\'s');
  const text = await cli(t, ['validate', '-c', a, '-c', b, '-p', '8003:127.0.0.1:80']);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /ok: 3 mappings/, 'with -p as well: three');
  // `rules` prints the kernel rules of every file (printing needs neither root nor nft).
  const ra = path.join(dir, 'ra.yaml');
  const rb = path.join(dir, 'rb.yaml');
  fs.writeFileSync(ra, 'mappings:\n  - {name: a, hostPort: 8001, containerIP: 10.88.0.2, containerPort: 80}\n');
  fs.writeFileSync(rb, 'mappings:\n  - {name: b, hostPort: 8002, containerIP: 10.88.0.2, containerPort: 80}\n');
  const rules = await cli(t, ['rules', '-c', ra, '-c', rb, '--backend', 'nftables', '--network', 'n', '--container-id', 'c0ffee', '--container-cidr', '10.88.0.2/16']);
  t.equal(rules.code, 0, rules.stderr);
  t.match(rules.stdout, /dport 8001/, 'rules: ra.yaml\'s port');
  t.match(rules.stdout, /dport 8002/, 'rules: rb.yaml\'s port');
});

t.test('a name in two files is PF_NAME_DUPLICATE naming both; a port in two is PF_CONFLICT; a file twice is PF_CONFIG_REPEATED', async (t) => {
  const dir = tmp(t);
  const a = path.join(dir, 'a.yaml');
  const b = path.join(dir, 'b.yaml');
  const c = path.join(dir, 'c.yaml');
  fs.writeFileSync(a, `mappings:\n${mapping('web', 8001, 80)}`);
  fs.writeFileSync(b, `mappings:\n${mapping('web', 8002, 80)}`);
  fs.writeFileSync(c, `mappings:\n${mapping('other', 8001, 80)}`);
  const dup = await cli(t, ['validate', '-c', a, '-c', b]);
  t.equal(dup.code, 1, 'exit 1');
  t.match(dup.stderr, /PF_NAME_DUPLICATE/);
  t.match(dup.stderr, new RegExp(`${b.replace(/[.]/g, '\\.')} mappings\\[0\\] and ${a.replace(/[.]/g, '\\.')} mappings\\[0\\] are both named "web"`), 'the message names both files');
  t.equal(dup.stdout, '', 'nothing printed as valid');
  const conflict = await cli(t, ['validate', '-c', a, '-c', c]);
  t.equal(conflict.code, 1);
  t.match(conflict.stderr, /PF_CONFLICT: .*a\.yaml.*c\.yaml|PF_CONFLICT: .*c\.yaml.*a\.yaml/, 'a host port in two files is a conflict naming both');
  const twice = await cli(t, ['validate', '-c', a, '-c', path.join(dir, '.', 'a.yaml')]);
  t.equal(twice.code, 1);
  t.match(twice.stderr, /PF_CONFIG_REPEATED: -c .*a\.yaml: the file is given twice/);
  const run = await cli(t, ['run', '-c', a, '-c', b]);
  t.equal(run.code, 1, 'run refuses the duplicate name before binding anything');
  t.match(run.stderr, /PF_NAME_DUPLICATE/);
});

t.test('run -c A -c B serves both; SIGHUP reloads both; ports add -c C -c D adds both', async (t) => {
  const dir = tmp(t);
  const echo = await echoServer(t.teardown.bind(t));
  const [pa, pb, pb2, pc, pd] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const a = path.join(dir, 'a.yaml');
  const b = path.join(dir, 'b.yaml');
  fs.writeFileSync(a, `mappings:\n${mapping('from-a', pa, echo.port)}`);
  fs.writeFileSync(b, `mappings:\n${mapping('from-b', pb, echo.port)}`);
  const sock = path.join(dir, 'api.sock');
  const daemon = runCli(t.teardown.bind(t), ['run', '-c', a, '-c', b, '--api', sock]);
  const ready = await daemon.ready;
  t.same((ready['mappings'] as { name: string }[]).map((m) => m.name).sort(), ['from-a', 'from-b'], 'ready lists both files\' mappings');
  const hello = Buffer.from('hello');
  t.equal((await echoRoundTrip(pa, hello)).received.toString(), 'hello', 'a.yaml\'s port serves');
  t.equal((await echoRoundTrip(pb, hello)).received.toString(), 'hello', 'b.yaml\'s port serves');

  fs.writeFileSync(b, `mappings:\n${mapping('from-b2', pb2, echo.port)}`);
  daemon.child.kill('SIGHUP');
  await until(() => daemon.stderr().includes('"msg":"reloaded"'), 10_000, 'reloaded');
  t.notOk(await refused(pa), 'after SIGHUP a.yaml\'s port still serves');
  t.ok(await refused(pb), 'b.yaml\'s old port is closed');
  t.equal((await echoRoundTrip(pb2, hello)).received.toString(), 'hello', 'b.yaml\'s new port serves');

  const c = path.join(dir, 'c.yaml');
  const d = path.join(dir, 'd.yaml');
  fs.writeFileSync(c, `mappings:\n${mapping('from-c', pc, echo.port)}`);
  fs.writeFileSync(d, `mappings:\n${mapping('from-d', pd, echo.port)}`);
  const add = await cli(t, ['ports', 'add', '--api', sock, '-c', c, '-c', d]);
  t.equal(add.code, 0, add.stderr);
  t.match(add.stdout, /added 2 mappings/);
  const names = (await new ApiClient(sock).listMappings()).map((m) => m.name).sort();
  t.same(names, ['from-a', 'from-b2', 'from-c', 'from-d'], 'the daemon serves every file\'s mappings');
  t.equal((await echoRoundTrip(pd, hello)).received.toString(), 'hello', 'd.yaml\'s port serves');
  daemon.child.kill('SIGTERM');
  t.equal(await daemon.exited, 0);
});
