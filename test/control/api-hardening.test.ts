// Issue 20: the runtime API against a hostile or careless local client. Bug 1: a request target
// `new URL` cannot parse (`GET //`) ended the daemon; bug 7a: a malformed `%` escape in
// /v1/owners/{owner} was a 500; bug 7b: a chunked body over 1 MiB reset the connection; bug 3:
// the socket was connectable by other users between listen() and chmod(); bug 4: a non-root
// daemon and its clients used a default socket directory another user owned.
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { CATALOGUE } from '../../src/errors.js';
import { skipUnless } from '../helpers/env.js';
import { cliPath, echoRoundTrip, echoServer, freePort, runCli, until } from '../helpers/net.js';

interface T {
  teardown(fn: () => unknown): void;
}

function tempDir(t: T, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface RawAnswer {
  readonly status: number;
  readonly head: string;
  readonly body: string;
}

/** Writes `bytes` on a fresh connection to the unix socket and reads until the server closes (bounded). */
export function rawExchange(sock: string, bytes: Buffer | string, waitMs = 3000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    const chunks: Buffer[] = [];
    const done = (): void => {
      clearTimeout(timer);
      c.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const split = text.indexOf('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0), head: split < 0 ? text : text.slice(0, split), body: split < 0 ? '' : text.slice(split + 4) });
    };
    const timer = setTimeout(done, waitMs);
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', () => {});
    c.on('close', done);
    c.write(bytes);
  });
}

function coded(t: Test, answer: RawAnswer, status: number, what: string): void {
  t.equal(answer.status, status, `${what} → ${status}`);
  let body: unknown = null;
  try {
    body = JSON.parse(answer.body);
  } catch {
    // checked below
  }
  const code = (body as { code?: unknown } | null)?.code;
  t.ok(typeof code === 'string' && code in CATALOGUE, `${what}: the body is JSON with a catalogue code (${String(code)})`);
}

async function daemonWithMapping(t: T): Promise<{ sock: string; port: number; cli: ReturnType<typeof runCli> }> {
  const sock = path.join(tempDir(t, 'pf-harden-'), 'api.sock');
  const echo = await echoServer(t.teardown.bind(t));
  const port = await freePort();
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '-p', `127.0.0.1:${port}:127.0.0.1:${echo.port}`]);
  await cli.ready;
  return { sock, port, cli };
}

t.test('bug 1: request targets new URL() cannot parse get a coded 400 and the daemon keeps forwarding', async (t) => {
  const { sock, port, cli } = await daemonWithMapping(t);
  for (const target of ['//', '//x', '//x:99999/v1/info', '///v1/info', '//[::1', '//a@b/', '*']) {
    coded(t, await rawExchange(sock, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`), target === '*' ? 400 : 404, `GET ${target}`);
    t.equal(cli.child.exitCode, null, `the daemon is alive after GET ${target}`);
  }
  // The path after the origin: `GET //` is the route `//`, which does not exist; `///v1/info` neither.
  t.match(await new ApiClient(sock).info(), { apiVersion: '1.1.1' }, 'GET /v1/info still answers');
  const payload = Buffer.from('still forwarding');
  t.same((await echoRoundTrip(port, payload)).received, payload, 'the mapping still forwards');
});

t.test('bug 7a: a malformed % escape in /v1/owners/{owner} is a coded 400, not a 500', async (t) => {
  const { sock } = await daemonWithMapping(t);
  const body = '{"mappings":[{"hostIP":"127.0.0.1","hostPort":1,"containerIP":"127.0.0.1","containerPort":1}]}';
  for (const owner of ['%zz', '%', 'a%2', '%E2%82', '%C0%AF']) {
    coded(t, await rawExchange(sock, `DELETE /v1/owners/${owner} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`), 400, `DELETE /v1/owners/${owner}`);
    coded(t, await rawExchange(sock, `PUT /v1/owners/${owner} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`), 400, `PUT /v1/owners/${owner}`);
  }
  t.same(await new ApiClient(sock).owners(), [], 'nothing was added');
  t.same((await new ApiClient(sock).removeOwner('a b%c')), [], 'a well-formed escaped owner still works');
});

t.test('bug 7b: a body over 1 MiB, chunked or declared, is a coded 413, not a reset', async (t) => {
  const { sock, port } = await daemonWithMapping(t);
  const chunk = Buffer.alloc(64 * 1024, 'a');
  const frames: Buffer[] = [Buffer.from('POST /v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')];
  for (let i = 0; i < 24; i++) frames.push(Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n'));
  frames.push(Buffer.from('0\r\n\r\n'));
  const chunked = await rawExchange(sock, Buffer.concat(frames));
  coded(t, chunked, 413, 'a chunked 1.5 MiB body');
  t.match(chunked.body, /over 1048576 bytes/, 'the message says the limit');
  coded(t, await rawExchange(sock, `POST /v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n{"mappings":`), 413, 'a declared 2 MiB body');
  t.same((await new ApiClient(sock).listMappings()).length, 1, 'nothing was added');
  const payload = Buffer.from('still forwarding');
  t.same((await echoRoundTrip(port, payload)).received, payload, 'the mapping still forwards');
});

t.test('bug 3: another user never connects to the socket, not even while it is being created (umask 000)', skipUnless({ root: true, tools: ['setpriv'] }), async (t) => {
  // A root-owned 0755 directory (as systemd's RuntimeDirectory= makes one): nobody may search it,
  // so only the socket's own mode keeps nobody out.
  const dir = tempDir(t, 'pf-umask-');
  fs.chmodSync(dir, 0o755);
  const sock = path.join(dir, 'api.sock');
  // Eight connect() loops as nobody, each retrying at once; prints CONNECTED for every success.
  const racer = `
    const net = require('node:net');
    const loop = () => {
      const s = net.connect(${JSON.stringify(sock)});
      s.on('connect', () => { process.stdout.write('CONNECTED\\n'); s.destroy(); setImmediate(loop); });
      s.on('error', () => setImmediate(loop));
    };
    for (let i = 0; i < 8; i++) loop();
    process.stdout.write('racing\\n');`;
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', racer], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  await until(() => out.includes('racing'), 10_000, 'the racer to start');
  const starts = 12;
  const exits: (number | string)[] = [];
  for (let i = 0; i < starts; i++) {
    const cli = runCli(t.teardown.bind(t), ['run', '--api', sock], {}, ['sh', '-c', 'umask 000; exec "$0" "$@"']);
    await cli.ready;
    t.equal(fs.statSync(sock).mode & 0o777, 0o600, `start ${i + 1}: the socket is 0600`);
    cli.child.kill('SIGTERM');
    exits.push(await cli.exited);
  }
  t.comment(`exits: ${exits.join(' ')}`);
  t.equal(out.split('\n').filter((l) => l === 'CONNECTED').length, 0, `nobody never connected over ${starts} starts`);
  // The racer works: a socket nobody may write to is connected to at once. (A daemon that got
  // SIGTERM right after `ready`, before its signal handlers, leaves its socket behind.)
  fs.rmSync(sock, { force: true });
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(sock, () => r()));
  t.teardown(() => server.close());
  fs.chmodSync(sock, 0o666);
  await until(() => out.includes('CONNECTED'), 10_000, 'the racer to connect to a 0666 socket (control)');
  t.pass('control: the racer connects to a socket that lets it');
});

t.test('bug 4: a non-root daemon and its client refuse a default socket directory another user controls', skipUnless({ root: true, tools: ['setpriv'] }), async (t) => {
  const uid = 40000 + randomInt(20000);
  const dir = `/tmp/portferry-${uid}`;
  const clean = (): void => fs.rmSync(dir, { recursive: true, force: true });
  clean();
  t.teardown(clean);
  const asUser = ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-u', 'XDG_RUNTIME_DIR'];
  const run = async (args: string[], env: NodeJS.ProcessEnv = {}, prefix = asUser): Promise<{ code: number | string; stderr: string; stdout: string }> => {
    const p = runCli(t.teardown.bind(t), args, env, prefix);
    // A daemon that starts after all is a failure, reported at once rather than by a timeout.
    const started = p.ready.then(() => 'started (it should have refused)', () => 'exited');
    const code = await Promise.race([p.exited, started.then((s) => (s === 'exited' ? p.exited : s))]);
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    for (const s of [p.child.stdout, p.child.stderr]) if (s !== null && !s.closed) await once(s, 'close');
    return { code, stderr: p.stderr(), stdout: p.stdout() };
  };

  // nobody made the directory first, mode 1777, and serves a fake daemon in it.
  fs.mkdirSync(dir);
  fs.chownSync(dir, 65534, 65534);
  fs.chmodSync(dir, 0o1777);
  const daemon = await run(['run', '--api']);
  t.equal(daemon.code, 1, 'the daemon does not start');
  t.match(daemon.stderr, new RegExp(`PF_API_SOCKET_UNSAFE: the API socket's directory ${dir} belongs to uid 65534`), 'it names the directory and its owner');
  t.match(daemon.stderr, /hint: .*rm -r/, 'and says what to do');
  t.same(fs.readdirSync(dir), [], 'and put nothing there');

  let fakeHits = 0;
  const fake = net.createServer((s) => {
    fakeHits++;
    s.on('error', () => {});
    const answer = '{"mappings":[]}';
    s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${answer.length}\r\nConnection: close\r\n\r\n${answer}`);
  });
  fs.rmSync(path.join(dir, 'api.sock'), { force: true }); // left by a daemon that wrongly started
  await new Promise<void>((r) => fake.listen(path.join(dir, 'api.sock'), () => r()));
  t.teardown(() => fake.close());
  fs.chmodSync(path.join(dir, 'api.sock'), 0o666);
  const ls = await run(['ports', 'ls']);
  t.not(ls.code, 0, 'portferry ports ls fails');
  t.match(ls.stderr, new RegExp(`PF_API_SOCKET_UNSAFE: the API socket's directory ${dir} belongs to uid 65534`), 'with the coded refusal');
  t.equal(fakeHits, 0, 'the client never connected to the socket in it');
  await new Promise<void>((r) => fake.close(() => r()));

  // The user's own directory, but writable by others: refused too.
  clean();
  fs.mkdirSync(dir);
  fs.chownSync(dir, uid, uid);
  fs.chmodSync(dir, 0o777);
  const writable = await run(['run', '--api']);
  t.equal(writable.code, 1);
  t.match(writable.stderr, /PF_API_SOCKET_UNSAFE: .* can be written by its group and every user \(mode 777\)/);
  const lsWritable = await run(['ports', 'ls']);
  t.match(lsWritable.stderr, /PF_API_SOCKET_UNSAFE/, 'the client refuses it as well');

  // $XDG_RUNTIME_DIR, when set, is where the daemon and its clients meet.
  clean();
  const xdg = tempDir(t, 'pf-xdg-');
  fs.chownSync(xdg, uid, uid);
  const xdgEnv = { XDG_RUNTIME_DIR: xdg };
  const asUserXdg = ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups'];
  const served = runCli(t.teardown.bind(t), ['run', '--api'], xdgEnv, asUserXdg);
  const ready = await served.ready;
  t.equal(ready['api'], `${xdg}/portferry/api.sock`, 'the daemon serves in $XDG_RUNTIME_DIR/portferry');
  t.equal(fs.statSync(`${xdg}/portferry`).mode & 0o777, 0o700);
  const lsXdg = await run(['ports', 'ls'], xdgEnv, asUserXdg);
  t.equal(lsXdg.code, 0, `the client finds it there (${lsXdg.stderr.trim()})`);
  t.equal(lsXdg.stdout, 'no mappings\n');
  t.notOk(fs.existsSync(dir), 'and /tmp/portferry-UID was not used');
  served.child.kill('SIGTERM');
  await served.exited;
  t.ok(fs.existsSync(cliPath), 'ran the built CLI');
});

t.test('bug 4: checkSocketDir names the fault and never advises changing a shared directory', async (t) => {
  const { checkSocketDir } = await import('../../src/control/client.js');
  const me = 4242;
  const refusal = (dir: string, uid: number): { code?: string; message?: string; hint?: string } => {
    try {
      checkSocketDir(dir, uid);
      return {};
    } catch (err) {
      return err as { code: string; message: string; hint: string };
    }
  };
  const shared = refusal('/tmp', me);
  t.equal(shared.code, 'PF_API_SOCKET_UNSAFE', '/tmp (root, 1777) is refused');
  t.match(shared.hint, /Do not change a shared directory: pass --api a path in a directory of its own, e\.g\. --api \/tmp\/portferry-4242\/api\.sock/);
  t.notMatch(shared.hint, /chmod|rm -r/, 'and never says to chmod or remove /tmp');
  t.same(refusal(path.join(os.tmpdir(), 'pf-does-not-exist-9f3a'), me), {}, 'a missing directory passes (the daemon creates it; a client then finds nothing)');
  const dir = tempDir(t, 'pf-sockdir-');
  t.same(refusal(dir, isRootUid() ? 0 : process.geteuid?.() ?? 0), {}, 'a private directory of ours passes');
  if (isRootUid()) {
    const link = path.join(dir, 'link');
    fs.symlinkSync(dir, link);
    fs.lchownSync(link, 65534, 65534);
    const r = refusal(link, 0);
    t.equal(r.code, 'PF_API_SOCKET_UNSAFE', 'a symbolic link owned by another user is refused even when it points to a good directory');
    t.match(r.message, /is a symbolic link owned by uid 65534/);
  }
});

function isRootUid(): boolean {
  return process.geteuid?.() === 0;
}
