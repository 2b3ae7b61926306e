// `portferry ports ls|add|rm` against a real `node bin/portferry.js run --api S`: traffic through
// the ports it adds, the table's counters, --json, owners, and coded errors (daemon not running,
// bad specs refused before anything is sent, conflicts, unknown ids, usage).
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { humanBytes } from '../../src/cli/ports.js';
import { connect, echoRoundTrip, echoServer, freePort, randomPayload, runCli } from '../helpers/net.js';

interface Run {
  readonly code: number | string;
  readonly stdout: string;
  readonly stderr: string;
}

async function ports(t: Test, ...args: string[]): Promise<Run> {
  const p = runCli(t.teardown, ['ports', ...args]);
  const code = await p.exited;
  for (const s of [p.child.stdout, p.child.stderr]) if (s !== null && !s.closed) await once(s, 'close');
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

/** The rows of a printed table as objects keyed by the header. */
function parseTable(text: string): Record<string, string>[] {
  const [header, ...rows] = text.trimEnd().split('\n').filter((l) => /^(ID|\d+)\s/.test(l));
  const keys = (header ?? '').split(/\s{2,}/);
  return rows.map((r) => Object.fromEntries(r.split(/\s{2,}/).map((v, i) => [keys[i] ?? `col${i}`, v])));
}

async function daemon(t: Test): Promise<string> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pf-ports-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const api = path.join(dir, 'run', 'api.sock');
  const p = runCli(t.teardown, ['run', '--api', api, '--log-level', 'info']);
  const ready = await p.ready;
  t.equal(ready['api'], api, 'the daemon serves the API socket');
  return api;
}

t.test('no daemon: PF_API_UNREACHABLE with a hint naming `portferry run --api PATH`, exit 1', async (t) => {
  const api = path.join(tmpdir(), `pf-none-${process.pid}`, 'api.sock');
  for (const args of [['ls'], ['rm', '1'], ['add', '127.0.0.1:8080:127.0.0.1:80']]) {
    const r = await ports(t, ...args, '--api', api);
    t.equal(r.code, 1, `${args[0]}: exit 1`);
    t.match(r.stderr, new RegExp(`PF_API_UNREACHABLE: cannot reach the portferry daemon at ${api}: ENOENT`));
    t.match(r.stderr, new RegExp(`hint: Start the daemon with \`portferry run --api ${api}\``));
  }
});

t.test('bad input is refused before anything is sent: bad spec, bad id, ids and --owner together', async (t) => {
  const api = path.join(tmpdir(), `pf-none-${process.pid}`, 'api.sock'); // nothing serves it: the errors come first
  const spec = await ports(t, 'add', '0:127.0.0.1:80', '8080:10.0.0.1:80-81', '--api', api);
  t.equal(spec.code, 1);
  t.match(spec.stderr, /PF_CONFIG_INVALID[\s\S]*PF_PORT_INVALID: -p 0:127\.0\.0\.1:80[\s\S]*PF_PORT_RANGE/, 'every problem, naming the spec');
  t.notMatch(spec.stderr, /PF_API_UNREACHABLE/);
  const netns = await ports(t, 'add', '8080:10.0.0.1:80', '--netns', 'relative/path', '--api', api);
  t.match(netns.stderr, /PF_NETNS_INVALID/);
  const none = await ports(t, 'add', '--api', api);
  t.equal(none.code, 1);
  t.match(none.stderr, /PF_NO_MAPPINGS/);
  const rmBad = await ports(t, 'rm', '3', 'x', '0', '--api', api);
  t.equal(rmBad.code, 2, 'a bad id is a usage error');
  t.match(rmBad.stderr, /PF_USAGE: not a mapping id: x, 0/);
  t.equal((await ports(t, 'rm', '--api', api)).code, 2, 'neither ids nor --owner');
  t.equal((await ports(t, 'rm', '1', '--owner', 'a', '--api', api)).code, 2, 'both ids and --owner');
  const pp = await ports(t, 'add', '8080:10.0.0.1:80', '--proxy-protocol', 'v3', '--api', api);
  t.equal(pp.code, 1, 'a bad option value is refused as `run` refuses it, nothing sent');
  t.match(pp.stderr, /PF_CONFIG_VALUE: .*proxyProtocol/);
});

t.test('add, traffic, ls with counters, --json, owners, conflicts, rm — against a live daemon', async (t) => {
  const api = await daemon(t);
  const echo = await echoServer(t.teardown);
  const [webPort, dnsPort, ppPort, filePort] = [await freePort(), await freePort(), await freePort(), await freePort()];

  t.equal((await ports(t, 'ls', '--api', api)).stdout, 'no mappings\n', 'an empty daemon');

  const added = await ports(t, 'add', `127.0.0.1:${webPort}:127.0.0.1:${echo.port}`, `127.0.0.1:${dnsPort}:127.0.0.1:53/udp`, '--owner', 'ctr-a', '--api', api);
  t.equal(added.code, 0, added.stderr);
  t.match(added.stdout, /^added 2 mappings\n/);
  t.same(
    parseTable(added.stdout).map((r) => [r['ID'], r['OWNER'], r['PROTO'], r['HOST'], r['CONTAINER']]),
    [
      ['1', 'ctr-a', 'tcp', `127.0.0.1:${webPort}`, `127.0.0.1:${echo.port}`],
      ['2', 'ctr-a', 'udp', `127.0.0.1:${dnsPort}`, '127.0.0.1:53'],
    ],
  );

  // PROXY v2 from the command line, and a YAML file's mappings (with its own names), under another owner.
  const ppAdd = await ports(t, 'add', `127.0.0.1:${ppPort}:127.0.0.1:${echo.port}`, '--proxy-protocol', 'v2', '--owner', 'ctr-b', '--json', '--api', api);
  t.equal(ppAdd.code, 0, ppAdd.stderr);
  const ppJson = JSON.parse(ppAdd.stdout) as { mappings: { id: number; owner: string; mapping: Record<string, unknown> }[] };
  t.match(ppJson.mappings, [{ id: 3, owner: 'ctr-b', mapping: { proxyProtocol: 'v2', hostPort: ppPort } }]);
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'pf-ports-yaml-')), 'more.yaml');
  t.teardown(() => rmSync(path.dirname(file), { recursive: true, force: true }));
  writeFileSync(file, `mappings:\n  - name: from-file\n    hostIP: 127.0.0.1\n    hostPort: ${filePort}\n    containerIP: 127.0.0.1\n    containerPort: ${echo.port}\n    maxConnections: 7\n`);
  const fileAdd = await ports(t, 'add', '-c', file, '--owner', 'ctr-b', '--api', api);
  t.equal(fileAdd.code, 0, fileAdd.stderr);
  t.match(parseTable(fileAdd.stdout), [{ ID: '4', NAME: 'from-file', OWNER: 'ctr-b' }]);

  // Traffic through the added TCP port; ls shows it.
  const payload = randomPayload(3000);
  const rt = await echoRoundTrip(webPort, payload);
  t.equal(rt.received.length, 3000, 'the port added at runtime forwards');
  const open = await connect(filePort); // one connection left open: ACTIVE 1
  t.teardown(() => open.destroy());
  open.on('error', () => {}); // reset when its mapping is removed, below
  const openClosed = new Promise((resolve) => open.once('close', resolve));
  open.write('x');
  await once(open, 'data');
  const ls = await ports(t, 'ls', '--api', api);
  t.equal(ls.code, 0, ls.stderr);
  const rows = parseTable(ls.stdout);
  t.same(Object.keys(rows[0] ?? {}), ['ID', 'NAME', 'OWNER', 'PROTO', 'HOST', 'CONTAINER', 'ACTIVE', 'IN', 'OUT']);
  t.match(rows, [
    { ID: '1', OWNER: 'ctr-a', ACTIVE: '0', IN: '2.9 KiB', OUT: '2.9 KiB' },
    { ID: '2', PROTO: 'udp', ACTIVE: '0', IN: '0 B', OUT: '0 B' },
    { ID: '3', OWNER: 'ctr-b', IN: '0 B' },
    { ID: '4', NAME: 'from-file', ACTIVE: '1', IN: '1 B', OUT: '1 B' },
  ]);
  const lsJson = JSON.parse((await ports(t, 'ls', '--json', '--api', api)).stdout) as { mappings: { id: number; traffic: Record<string, number> }[] };
  t.same(lsJson.mappings.find((m) => m.id === 1)?.traffic, { active: 0, bytesIn: 3000, bytesOut: 3000 }, '--json: exact byte counts');
  const onlyB = parseTable((await ports(t, 'ls', '--owner', 'ctr-b', '--api', api)).stdout);
  t.same(onlyB.map((r) => r['ID']), ['3', '4'], 'ls --owner filters');

  // A conflict with a live mapping: coded error, exit 1, nothing added.
  const conflict = await ports(t, 'add', `127.0.0.1:${dnsPort + 0}:127.0.0.1:9/udp`, `127.0.0.1:${await freePort()}:127.0.0.1:9`, '--api', api);
  t.equal(conflict.code, 1);
  t.match(conflict.stderr, /PF_CONFLICT/);
  t.equal(parseTable((await ports(t, 'ls', '--api', api)).stdout).length, 4, 'all or nothing: the other spec was not added either');

  // rm by id: the port is closed; an unknown id is PF_API_NOT_FOUND.
  const rm1 = await ports(t, 'rm', '1', '--api', api);
  t.equal(rm1.stdout, 'removed 1\n');
  await t.rejects(connect(webPort), { code: 'ECONNREFUSED' }, 'the removed port refuses connections');
  const rm99 = await ports(t, 'rm', '99', '--api', api);
  t.equal(rm99.code, 1);
  t.match(rm99.stderr, /PF_API_NOT_FOUND: .*no mapping has id 99/);

  // rm --owner removes exactly that owner's mappings.
  const rmB = await ports(t, 'rm', '--owner', 'ctr-b', '--json', '--api', api);
  t.same(JSON.parse(rmB.stdout), { removed: [3, 4] });
  await openClosed;
  t.pass('the connection open through a removed mapping was closed');
  t.same(parseTable((await ports(t, 'ls', '--api', api)).stdout).map((r) => r['ID']), ['2'], 'ctr-a\'s mapping is left');
  t.equal((await ports(t, 'rm', '--owner', 'nobody', '--api', api)).stdout, 'removed nothing: owner nobody has no mappings\n');
});

t.test('humanBytes', async (t) => {
  t.equal(humanBytes(0), '0 B');
  t.equal(humanBytes(1023), '1023 B');
  t.equal(humanBytes(1024), '1.0 KiB');
  t.equal(humanBytes(1536), '1.5 KiB');
  t.equal(humanBytes(200 * 1024 * 1024), '200 MiB');
  t.equal(humanBytes(2 ** 30 * 1.25), '1.3 GiB');
});
