// The runtime API (issue 10): Debian's real rootlessctl against `portferry run --api S --netns N`
// with backends inside N on 127.0.0.1; the native API (a 100-port range with PROXY v2 in one call,
// a conflict on one port binds none, remove by owner); bad input answered with coded 4xx while the
// server keeps serving; the socket's modes; a live socket refused, a stale one replaced.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ApiClient, apiRequest } from '../../src/control/client.js';
import { skipUnless } from '../helpers/env.js';
import { connectRefused as refused, freePort, runCli, until } from '../helpers/net.js';
import { scratchNetns } from '../helpers/netns.js';
import { fixture, lineReader, nodeArgv } from '../netns/util.js';

const run = promisify(execFile);

interface T {
  teardown(fn: () => unknown): void;
}

function socketDir(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-api-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'run', 'api.sock');
}

async function daemon(t: T, args: string[] = []): Promise<{ sock: string; client: ApiClient; cli: ReturnType<typeof runCli> }> {
  const sock = socketDir(t);
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, ...args]);
  await cli.ready;
  return { sock, client: new ApiClient(sock), cli };
}


/** Connects, reads the backend's greeting line. */
function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
      if (got.includes('\n')) {
        s.destroy();
        resolve(got.trim());
      }
    });
    s.once('error', reject);
    setTimeout(() => reject(new Error(`no greeting on ${port}`)), 5000).unref();
  });
}

function udpRoundTrip(port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error('no UDP answer'));
    }, 5000);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m.toString());
    });
    s.send(payload, port, '127.0.0.1');
  });
}

t.test('rootlessctl drives portferry run --api --netns (backends on 127.0.0.1 inside the namespace)', skipUnless({ root: true, tools: ['rootlessctl', 'ip'] }), async (t) => {
  const ns = scratchNetns(t.teardown.bind(t), 'api');
  for (const [proto, port] of [['tcp', '80'], ['udp', '53']] as const) {
    const [cmd, argv] = nodeArgv(fixture('server.mjs'), proto, '127.0.0.1', port, 'echo', 'hello-from-ns');
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    await lineReader(child).waitFor(/^ready \d+$/);
  }
  const { sock } = await daemon(t, ['--netns', `/run/netns/${ns}`]);
  const ctl = (...args: string[]): Promise<{ stdout: string; stderr: string }> => run('rootlessctl', ['--socket', sock, ...args]);

  const info = await ctl('info');
  t.match(info.stdout, /REST API version: 1\.1\.1/);
  t.match(info.stdout, /Port Driver: portferry/);

  const [tcpPort, udpPort] = [await freePort(), await freePort()];
  const added = await ctl('add-ports', `127.0.0.1:${tcpPort}:80/tcp`, `127.0.0.1:${udpPort}:53/udp`);
  const ids = added.stdout.trim().split(/\s+/).map(Number);
  t.equal(ids.length, 2, `two ids printed (${added.stdout.trim()})`);
  t.equal(await greeting(tcpPort), 'hello-from-ns', 'TCP reaches the backend on 127.0.0.1 inside the namespace');
  t.equal(await udpRoundTrip(udpPort, 'ping'), 'ping', 'UDP too');

  const list = (await ctl('list-ports')).stdout;
  t.match(list, new RegExp(`${ids[0]}\\s+tcp\\s+127\\.0\\.0\\.1\\s+${tcpPort}\\s+127\\.0\\.0\\.1\\s+80`), 'list-ports shows the tcp port');
  t.match(list, new RegExp(`${ids[1]}\\s+udp\\s+127\\.0\\.0\\.1\\s+${udpPort}\\s+127\\.0\\.0\\.1\\s+53`), 'and the udp port');

  const conflict = await ctl('add-ports', `127.0.0.1:${tcpPort}:81/tcp`).then(
    () => null,
    (e: { stderr: string; code: number }) => e,
  );
  t.ok(conflict !== null && conflict.code !== 0, 'a conflicting add-ports fails');
  t.match(conflict?.stderr ?? '', /PF_CONFLICT/, 'with our coded message');

  await ctl('remove-ports', String(ids[0]));
  t.ok(await refused(tcpPort), 'connection refused after remove-ports');

  // A malformed body, written by hand (apiRequest sends only JSON).
  const bad = await new Promise<{ status: number; body: string }>((resolve) => {
    const c = net.connect(sock);
    c.on('error', () => {});
    c.end('POST /v1/ports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{"proto":');
    let text = '';
    c.on('data', (d) => (text += d.toString()));
    c.on('close', () => resolve({ status: Number(/HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0), body: text.slice(text.indexOf('\r\n\r\n') + 4) }));
  });
  t.equal(bad.status, 400, 'malformed JSON → 400');
  t.match(JSON.parse(bad.body), { code: 'PF_API_REQUEST', message: /not JSON/ });
  t.equal(await udpRoundTrip(udpPort, 'still'), 'still', 'the forwarder still serves');
  t.match((await ctl('list-ports')).stdout, new RegExp(`${ids[1]}\\s+udp`), 'and the API still answers');
});

/** TCP backends on `count` consecutive ports that read a PROXY v2 header and answer with the source address in it. */
async function ppBackends(t: T, base: number, count: number): Promise<void> {
  const handler = (c: net.Socket): void => {
    c.once('readable', () => {
      const head = c.read(28) as Buffer | null;
      if (head === null || !head.subarray(0, 12).equals(Buffer.from('0d0a0d0a000d0a515549540a', 'hex'))) return void c.end('no-header\n');
      c.end(`${head.subarray(16, 20).join('.')}:${head.readUInt16BE(24)}\n`);
    });
    c.on('error', () => {});
  };
  for (let i = 0; i < count; i++) {
    const server = net.createServer(handler);
    await new Promise<void>((r) => server.listen(base + i, '127.0.0.1', () => r()));
    t.teardown(() => server.close());
  }
}

async function freeRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 22000 + Math.floor(Math.random() * 7000);
    const checks = await Promise.all(Array.from({ length: n }, (_, i) => refused(base + i)));
    if (checks.every(Boolean)) return base;
  }
  throw new Error('no free port range');
}

t.test('native API: a 100-port range with PROXY v2 in one call; a conflict on one port binds none; remove by owner', async (t) => {
  const { client, sock } = await daemon(t);
  const backendBase = await freeRange(100);
  await ppBackends(t, backendBase, 100);
  const backend = backendBase;
  const base = await freeRange(100);
  const [range] = await client.addMappings([{ name: 'range', hostIP: '127.0.0.1', hostPort: `${base}-${base + 99}`, containerIP: '127.0.0.1', containerPort: `${backendBase}-${backendBase + 99}`, proxyProtocol: 'v2' }], 'ctr-a');
  t.equal(range?.listeners.length, 100, '100 listeners from one mapping, added in one call');
  t.equal(range?.owner, 'ctr-a');
  for (const i of [0, 37, 99]) t.match(await greeting(base + i), /^127\.0\.0\.1:\d+$/, `port ${base + i}: the backend reads the client address from the v2 header`);
  const [extra] = await client.addMappings([{ name: 'a-extra', hostIP: '127.0.0.1', hostPort: await freePort(), containerIP: '127.0.0.1', containerPort: backend }], 'ctr-a');

  // A conflict on one port of a range: the range binds none of its ports.
  const base2 = await freeRange(20);
  const squatter = net.createServer();
  await new Promise<void>((r) => squatter.listen(base2 + 7, '127.0.0.1', () => r()));
  t.teardown(() => squatter.close());
  const err = await client.addMappings([{ hostIP: '127.0.0.1', hostPort: `${base2}-${base2 + 19}`, containerIP: '127.0.0.1', containerPort: `${backend}-${backend + 19}` }], 'ctr-b').then(
    () => null,
    (e: { code: string; details: Record<string, unknown> }) => e,
  );
  t.equal(err?.code, 'PF_BIND_ADDRINUSE', 'the taken port is named by code');
  t.equal(err?.details['status'], 409);
  const stillFree = await Promise.all([0, 6, 8, 19].map((i) => refused(base2 + i)));
  t.same(stillFree, [true, true, true, true], 'no other port of the range was left bound');

  // Another owner, then remove by owner: exactly that owner's mappings go.
  const other = await freePort();
  const [b] = await client.addMappings([{ name: 'b-web', hostIP: '127.0.0.1', hostPort: other, containerIP: '127.0.0.1', containerPort: backend }], 'ctr-b');
  const removed = await client.removeOwner('ctr-a');
  t.same(removed.sort(), [range?.id, extra?.id].sort(), 'ctr-a had the range and one more');
  t.same((await client.listMappings()).map((m) => m.id), [b?.id], 'only ctr-b is left');
  t.ok(await refused(base), 'ctr-a ports closed');
  t.notOk(await refused(other), 'ctr-b still served');
  t.same(await client.removeOwner('nobody-here'), [], 'removing an unknown owner is fine (idempotent)');

  // Replace an owner's set: identical mappings keep their ids; a second call changes nothing.
  const p1 = await freePort();
  const set = [{ name: 'c1', hostIP: '127.0.0.1', hostPort: p1, containerIP: '127.0.0.1', containerPort: backend }];
  const first = await client.replaceOwner('ctr-c', set);
  const second = await client.replaceOwner('ctr-c', set);
  t.same(second.map((m) => m.id), first.map((m) => m.id), 'PUT is idempotent: same ids');
  t.same((await client.owners()).map((o) => o.owner).sort(), ['ctr-b', 'ctr-c']);

  // Bad input: each a coded 4xx; nothing changes; the server keeps serving.
  const before = (await client.listMappings()).length;
  const cases: [string, string, unknown, number, string][] = [
    ['POST', '/v1/mappings', { mappings: [{ hostPort: 1 }] }, 400, 'PF_CONFIG_INVALID'],
    ['POST', '/v1/mappings', { mappings: [{ hostPort: p1, containerIP: '127.0.0.1', containerPort: 1, hostIP: '127.0.0.1' }] }, 409, 'PF_CONFIG_INVALID'],
    ['POST', '/v1/mappings', { mapping: [] }, 400, 'PF_API_REQUEST'],
    ['POST', '/v1/mappings', { mappings: [{ hostPort: 5, containerIP: '1.2.3.4', containerPort: 5, bogus: true }] }, 400, 'PF_CONFIG_INVALID'],
    ['DELETE', '/v1/mappings/999999', undefined, 404, 'PF_API_NOT_FOUND'],
    ['DELETE', '/v1/mappings/abc', undefined, 404, 'PF_API_NOT_FOUND'],
    ['GET', '/v2/nothing', undefined, 404, 'PF_API_REQUEST'],
    ['PATCH', '/v1/mappings', undefined, 405, 'PF_API_REQUEST'],
    ['POST', '/v1/ports', { proto: 'sctp', parentPort: 1, childPort: 1, childIP: '127.0.0.1' }, 400, 'PF_CONFIG_INVALID'],
    ['POST', '/v1/ports', { proto: 'tcp', parentPort: 1234, childPort: 1 }, 400, 'PF_CONFIG_INVALID'],
  ];
  for (const [method, url, body, status, code] of cases) {
    const res = await apiRequest(sock, method, url, body);
    t.equal(res.status, status, `${method} ${url} ${JSON.stringify(body) ?? ''} → ${status}`);
    t.match(res.body, { code, message: String, hint: String });
  }
  const big = await apiRequest(sock, 'POST', '/v1/mappings', { mappings: [{ name: 'x'.repeat(2 * 1024 * 1024) }] }).catch((e: Error) => ({ status: -1, body: e.message }));
  t.ok(big.status === 413 || big.status === -1, `a 2 MiB body is refused (${big.status})`);
  t.equal((await client.listMappings()).length, before, 'nothing changed');
  t.match(await client.info(), { apiVersion: '1.1.1' }, 'still serving');
});

t.test('the API socket: 0600 in a 0700 directory; a live one is refused, a stale one replaced', async (t) => {
  const { sock, cli } = await daemon(t);
  t.equal(fs.statSync(sock).mode & 0o777, 0o600);
  t.equal(fs.statSync(path.dirname(sock)).mode & 0o777, 0o700);
  const second = runCli(t.teardown.bind(t), ['run', '--api', sock]);
  t.equal(await second.exited, 1, 'a second daemon on a live socket exits 1');
  t.match(second.stderr(), /PF_API_SOCKET: another process already serves/);
  cli.child.kill('SIGKILL');
  await cli.exited;
  t.ok(fs.existsSync(sock), 'SIGKILL leaves a stale socket file');
  const third = runCli(t.teardown.bind(t), ['run', '--api', sock]);
  await third.ready;
  t.match(await new ApiClient(sock).info(), { apiVersion: '1.1.1' }, 'a new daemon replaced the stale socket');
  third.child.kill('SIGTERM');
  t.equal(await third.exited, 0);
  await until(() => !fs.existsSync(sock), 5000, 'socket removed on exit');
});
