// Acceptance 6: a UDP mapping on the unspecified address answers each client from the address the
// client targeted. In a throwaway network namespace with several addresses on its loopback interface (no dummy module needed),
// the forwarder (built code, test/fixtures/udp/forwarder.mjs) and a client (client.mjs) run inside
// it. A naive wildcard echo server in the same place answers from the wrong address: the control
// proves the setup can tell the difference.
import t from 'tap';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { skipUnless } from '../helpers/env.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const fixtures = path.join(root, 'test/fixtures/udp');
const run = promisify(execFile);

interface Ping {
  target: string;
  from: string | null;
  fromPort: number | null;
  ok: boolean;
}

interface HasTeardown {
  teardown(fn: () => unknown): void;
}

async function makeNamespace(t: HasTeardown): Promise<string> {
  const name = `pf-udp-${randomBytes(4).toString('hex')}`;
  await run('ip', ['netns', 'add', name]);
  t.teardown(() => run('ip', ['netns', 'del', name]).catch(() => {}));
  const sh = async (...args: string[]): Promise<void> => void (await run('ip', ['-n', name, ...args]));
  await sh('link', 'set', 'lo', 'up');
  for (const a of ['10.201.0.1/24', '10.201.0.2/24']) await sh('addr', 'add', a, 'dev', 'lo');
  for (const a of ['fd55::1/64', 'fd55::2/64']) await sh('addr', 'add', a, 'dev', 'lo', 'nodad');
  return name;
}

interface Forwarder {
  readonly port: number;
  readonly addresses: { ip: string; port: number }[];
  command(cmd: string): Promise<string>;
}

/** Starts forwarder.mjs inside the namespace; resolves on its `ready` line; killed by PID in teardown. */
function startForwarder(t: HasTeardown, ns: string, host: string): Promise<Forwarder> {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns, process.execPath, path.join(fixtures, 'forwarder.mjs'), '--host', host, '--rescan-ms', '200'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
  });
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  readline.createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    const w = waiters.shift();
    if (w) w(line);
    else lines.push(line);
  });
  const nextLine = (what: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const queued = lines.shift();
      if (queued !== undefined) return resolve(queued);
      const timer = setTimeout(() => reject(new Error(`forwarder in ${ns}: no ${what} within 10 s`)), 10_000);
      const onExit = (code: number | null): void => reject(new Error(`forwarder in ${ns} exited (${code}) before ${what}`));
      child.once('exit', onExit);
      waiters.push((line) => {
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve(line);
      });
    });
  return nextLine('ready line').then((line) => {
    if (!line.startsWith('ready ')) throw new Error(`forwarder in ${ns} did not start: ${line}`);
    const ready = JSON.parse(line.slice(6)) as { port: number; addresses: { ip: string; port: number }[] };
    return {
      ...ready,
      command: (cmd: string) => {
        child.stdin?.write(`${cmd}\n`);
        return nextLine(`answer to ${cmd}`);
      },
    };
  });
}

/** Runs client.mjs inside the namespace; one result per target. */
async function ping(ns: string, bind: string, port: number | 'control', targets: string[]): Promise<Ping[]> {
  const how = port === 'control' ? ['--control'] : ['--port', String(port)];
  const { stdout } = await run('ip', ['netns', 'exec', ns, process.execPath, path.join(fixtures, 'client.mjs'), '--bind', bind, ...how, ...targets], { timeout: 20_000 });
  return stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Ping);
}

async function pollUntil<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 8000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('built code is present and not older than the source', async (t) => {
  const built = statSync(path.join(root, 'dist/proxy/udp.js'), { throwIfNoEntry: false });
  t.ok(built, 'dist/proxy/udp.js exists (run `npm run build`)');
  const src = statSync(path.join(root, 'src/proxy/udp.ts'));
  t.ok(built !== undefined && built.mtimeMs >= src.mtimeMs, 'dist/proxy/udp.js is newer than src/proxy/udp.ts (run `npm run build`)');
});

t.test('0.0.0.0: each client is answered from the IPv4 address it targeted', skipUnless({ root: true, tools: ['ip'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '0.0.0.0');
  const bound = fwd.addresses.map((a) => a.ip);
  t.same([...bound].sort(), ['10.201.0.1', '10.201.0.2', '127.0.0.1'], `a socket per local address and no wildcard socket: ${bound.join(' ')}`);

  const control = await ping(ns, '127.0.0.1', 'control', ['10.201.0.1', '10.201.0.2']);
  t.ok(
    control.every((r) => r.ok && r.from !== r.target),
    `control: a plain wildcard socket answers from the wrong address here (${control.map((r) => `${r.target}<-${r.from}`).join(', ')})`,
  );

  const results = await ping(ns, '127.0.0.1', fwd.port, ['10.201.0.1', '10.201.0.2', '127.0.0.1']);
  for (const r of results) {
    t.ok(r.ok, `${r.target}: answered`);
    t.equal(r.from, r.target, `${r.target}: the reply comes from the address the client targeted`);
    t.equal(r.fromPort, fwd.port, `${r.target}: and from the mapped port`);
  }

  // An address added after the listener started: the re-scan binds it (until then it is not served).
  await run('ip', ['-n', ns, 'addr', 'add', '10.201.0.3/24', 'dev', 'lo']);
  const [late] = await pollUntil('a reply from 10.201.0.3', () => ping(ns, '127.0.0.1', fwd.port, ['10.201.0.3']), (v) => v[0]?.from === '10.201.0.3');
  t.equal(late?.from, '10.201.0.3', 'an address added later is answered from itself after the re-scan');

  await run('ip', ['-n', ns, 'addr', 'del', '10.201.0.3/24', 'dev', 'lo']);
  const after = await pollUntil('the socket of 10.201.0.3 to close', async () => JSON.parse(await fwd.command('addresses')) as string[], (v) => !v.includes('10.201.0.3'));
  t.notOk(after.includes('10.201.0.3'), 'the socket of a removed address is closed');
  // One flow per client socket (client ip:port), whichever host address it targets.
  const stats = JSON.parse(await fwd.command('stats')) as { flowsCreated: number; drops: Record<string, number> };
  t.ok(stats.flowsCreated >= 2, `a flow per client process (${stats.flowsCreated})`);
  t.same(stats.drops, {}, 'nothing dropped');
});

t.test('::: each client is answered from the IPv6 address it targeted', skipUnless({ root: true, tools: ['ip'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '::');
  const bound = fwd.addresses.map((a) => a.ip);
  t.ok(['fd55::1', 'fd55::2', '::1'].every((ip) => bound.includes(ip)) && !bound.includes('::'), `a socket per local address and no wildcard socket: ${bound.join(' ')}`);

  const control = await ping(ns, '::1', 'control', ['fd55::1', 'fd55::2']);
  t.ok(
    control.every((r) => r.ok && r.from !== r.target),
    `control: a plain wildcard socket answers from the wrong address here (${control.map((r) => `${r.target}<-${r.from}`).join(', ')})`,
  );

  const results = await ping(ns, '::1', fwd.port, ['fd55::1', 'fd55::2', '::1']);
  for (const r of results) {
    t.ok(r.ok, `${r.target}: answered`);
    t.equal(r.from, r.target, `${r.target}: the reply comes from the address the client targeted`);
    t.equal(r.fromPort, fwd.port);
  }
});

// Issue 14 item 4: with the per-address sockets bound with SO_REUSEADDR, an unprivileged user could
// bind 127.0.0.1:PORT with SO_REUSEADDR too and receive every datagram meant for the container.
const ATTACKER = `
  const dgram = require('node:dgram');
  const [port, ...ips] = process.argv.slice(1);
  const result = {}; const sockets = []; let received = 0;
  (async () => {
    for (const ip of ips) {
      const s = dgram.createSocket({ type: ip.includes(':') ? 'udp6' : 'udp4', reuseAddr: true, ipv6Only: ip.includes(':') });
      result[ip] = await new Promise((resolve) => {
        s.once('error', (e) => resolve(e.code));
        s.bind(Number(port), ip, () => { s.on('message', () => received++); sockets.push(s); resolve('bound'); });
      });
    }
    console.log(JSON.stringify(result));
    process.stdin.resume();
    process.stdin.on('end', () => { console.log(JSON.stringify({ received })); process.exit(0); });
  })();`;

t.test('another user cannot take over the port: its SO_REUSEADDR binds fail, the container gets the traffic', skipUnless({ root: true, tools: ['ip', 'setpriv'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '0.0.0.0');
  const attacker = spawn('ip', ['netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', ATTACKER, String(fwd.port), '127.0.0.1', '10.201.0.1', '0.0.0.0'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (attacker.pid !== undefined && attacker.exitCode === null && attacker.signalCode === null) process.kill(attacker.pid, 'SIGKILL');
  });
  const lines = readline.createInterface({ input: attacker.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
  const binds = JSON.parse(String((await lines.next()).value)) as Record<string, string>;
  t.same(binds, { '127.0.0.1': 'EADDRINUSE', '10.201.0.1': 'EADDRINUSE', '0.0.0.0': 'EADDRINUSE' }, `nobody's binds of the port fail (${JSON.stringify(binds)})`);
  const results = await ping(ns, '127.0.0.1', fwd.port, ['127.0.0.1', '10.201.0.1']);
  for (const r of results) t.ok(r.ok && r.from === r.target, `${r.target}: the container answered, from the address the client targeted (${r.from})`);
  attacker.stdin?.end();
  const { received } = JSON.parse(String((await lines.next()).value)) as { received: number };
  t.equal(received, 0, 'the other user received nothing');
});
