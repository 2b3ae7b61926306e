// The TCP data path on real sockets: integrity, half-close, resets, backend down, ranges, IPv6.
import t from 'tap';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadMappings } from '../../src/config/index.js';
import { disableFastPath, restoreFastPath } from '../../src/internals.js';
import { silentLogger } from '../../src/log.js';
import { DirectDialer } from '../../src/proxy/dialer.js';
import { TcpListener } from '../../src/proxy/tcp.js';
import { testBinding, testMapping } from '../helpers/mapping.js';
import { skipUnless } from '../helpers/env.js';
import { connect, echoRoundTrip, echoServer, freePort, randomPayload, readAll, runCli, sha256, startManager, startServer, until } from '../helpers/net.js';

const MiB = 1024 * 1024;

t.test('200 concurrent connections each echo 4 MiB intact (SHA-256)', async (t) => {
  const echo = await echoServer(t.teardown);
  const mappings = [testMapping({ containerPort: echo.port })];
  const fwd = await startManager(t.teardown, mappings);
  const port = fwd.port();
  const results = await Promise.all(
    Array.from({ length: 200 }, async () => {
      const payload = randomPayload(4 * MiB);
      const r = await echoRoundTrip(port, payload);
      return { sent: sha256(payload), got: sha256(r.received), len: r.received.length };
    }),
  );
  const bad = results.filter((r) => r.sent !== r.got);
  t.equal(bad.length, 0, 'every connection got back exactly what it sent');
  t.equal(results.reduce((n, r) => n + r.len, 0), 200 * 4 * MiB, 'byte count matches');
  await until(() => fwd.manager.stats()[0]?.stats.protocol === 'tcp' && (fwd.manager.stats()[0]?.stats as { active: number }).active === 0, 10_000, 'relays to finish');
  const s = fwd.manager.stats()[0]?.stats;
  t.match(s, { accepted: 200, bytesToContainer: 200 * 4 * MiB, bytesToClient: 200 * 4 * MiB }, 'stats count every byte');
});

// A server that reads the whole request until EOF, then answers `size` bytes and ends.
async function replyAfterEofServer(t: { teardown: (fn: () => unknown) => void }, size: number, seen: { requestBytes: number; sawEof: boolean }[]) {
  return startServer(t.teardown, (s) => {
    const rec = { requestBytes: 0, sawEof: false };
    seen.push(rec);
    s.on('data', (c: Buffer) => (rec.requestBytes += c.length));
    s.on('end', () => {
      rec.sawEof = true;
      s.end(Buffer.alloc(size, 7));
    });
  });
}

t.test('half-close: client ends its write side and still receives a 16 MiB reply', async (t) => {
  const seen: { requestBytes: number; sawEof: boolean }[] = [];
  const server = await replyAfterEofServer(t, 16 * MiB, seen);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: server.port })]);
  const s = await connect(fwd.port());
  const result = readAll(s);
  s.end(Buffer.from('GET /big\r\n'));
  const r = await result;
  t.equal(r.ended, 'eof', 'the reply ends with a clean EOF');
  t.equal(r.data.length, 16 * MiB, 'the whole reply arrived');
  t.ok(r.data.every((b) => b === 7), 'reply bytes are intact');
  t.same(seen, [{ requestBytes: 10, sawEof: true }], 'the server saw the request and then EOF');
  s.destroy();
});

t.test('half-close, the other way: server ends first while the client keeps sending 16 MiB', async (t) => {
  let serverGot = 0;
  let serverSawEof = false;
  const done = new Promise<void>((resolve) => {
    void startServer(t.teardown, (s) => {
      s.end(Buffer.from('hello, then I stop talking\n')); // server half-closes at once
      s.on('data', (c: Buffer) => (serverGot += c.length));
      s.on('end', () => {
        serverSawEof = true;
        s.destroy();
        resolve();
      });
    }).then((srv) => start(srv.port));
  });
  let clientResult: Promise<{ data: Buffer; ended: string }> | undefined;
  async function start(port: number): Promise<void> {
    const fwd = await startManager(t.teardown, [testMapping({ containerPort: port })]);
    const s = await connect(fwd.port());
    clientResult = readAll(s);
    await new Promise<void>((r) => s.once('end', () => r())); // EOF from the server first
    s.end(Buffer.alloc(16 * MiB, 3)); // then the client sends its 16 MiB and ends
  }
  await done;
  const r = await clientResult;
  t.equal(r?.data.toString(), 'hello, then I stop talking\n', 'client got the greeting and EOF');
  t.equal(serverGot, 16 * MiB, 'server received every byte after it had half-closed');
  t.ok(serverSawEof, 'server saw EOF');
});

t.test('a reset from the server is seen as a reset by the client', async (t) => {
  const server = await startServer(t.teardown, (s) => {
    s.once('data', () => s.resetAndDestroy());
  });
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: server.port })]);
  const s = await connect(fwd.port());
  const r = readAll(s);
  s.write('please reset me');
  const res = await r;
  t.equal(res.ended, 'error', 'not a clean EOF');
  t.equal(res.errorCode, 'ECONNRESET', 'the client sees ECONNRESET');
  await until(() => (fwd.manager.stats()[0]?.stats as { active: number }).active === 0, 5000, 'relay to end');
  const reasons = fwd.records.filter((r) => r['msg'] === 'connection closed').map((r) => r['reason']);
  t.same(reasons, ['container-reset'], 'the relay logged why it ended');
});

t.test('a reset from the client is seen as a reset by the server', async (t) => {
  let serverResult: Promise<{ ended: string; errorCode?: string }> | undefined;
  const gotSocket = new Promise<void>((resolve) => {
    void startServer(t.teardown, (s) => {
      serverResult = readAll(s);
      s.once('data', () => resolve());
    }).then(async (srv) => {
      const fwd = await startManager(t.teardown, [testMapping({ containerPort: srv.port })]);
      const c = await connect(fwd.port());
      c.write('hello');
      await gotSocket;
      c.resetAndDestroy();
    });
  });
  await gotSocket;
  const res = await serverResult;
  t.equal(res?.ended, 'error', 'not a clean EOF');
  t.equal(res?.errorCode, 'ECONNRESET', 'the server sees ECONNRESET');
});

t.test('container port closed: the client is cut promptly, the listener keeps serving, and works once the backend is up', async (t) => {
  const backendPort = await freePort();
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: backendPort })]);
  for (let i = 0; i < 3; i++) {
    const s = await connect(fwd.port());
    const r = await readAll(s);
    t.equal(r.data.length, 0, `attempt ${i}: no data`);
    t.equal(r.errorCode, 'ECONNRESET', `attempt ${i}: the client is told by a reset`);
  }
  const st = fwd.manager.stats()[0]?.stats as { dialFailures: number };
  t.equal(st.dialFailures, 3, 'dial failures are counted');
  // Now the backend comes up on that very port.
  const server = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  await new Promise<void>((r) => server.listen(backendPort, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const r = await echoRoundTrip(fwd.port(), Buffer.from('back again'));
  t.equal(r.received.toString(), 'back again', 'the same listener serves once the backend is up');
});

/**
 * A loopback port whose SYNs go unanswered: a listener in a stopped process whose small backlog
 * is full, so the kernel drops further SYNs and a dial to it hangs until our connectTimeout.
 */
async function blackHolePort(t: { teardown: (fn: () => unknown) => void }): Promise<number> {
  return (await stoppedServer(t)).port;
}

/**
 * The black hole above, whose server can be woken (SIGCONT): it then accepts, and answers each
 * connection's EOF with "<bytes received> <their SHA-256>". A dial to it completes on the
 * kernel's next SYN retransmission after resume() (about a second).
 */
async function stoppedServer(t: { teardown: (fn: () => unknown) => void }): Promise<{ port: number; resume: () => void }> {
  const script =
    "const h=require('crypto');const s=require('net').createServer({allowHalfOpen:true},(c)=>{const d=h.createHash('sha256');let n=0;c.on('error',()=>{});" +
    "c.on('data',(b)=>{n+=b.length;d.update(b)});c.on('end',()=>c.end(n+' '+d.digest('hex')))});" +
    "s.listen({port:0,host:'127.0.0.1',backlog:1},()=>{console.log(s.address().port)})";
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const port = await new Promise<number>((resolve) => child.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  process.kill(child.pid as number, 'SIGSTOP');
  const fillers: net.Socket[] = [];
  t.teardown(() => fillers.forEach((f) => f.destroy()));
  for (let i = 0; i < 4; i++) {
    const f = net.connect({ port, host: '127.0.0.1' });
    f.on('error', () => {});
    fillers.push(f);
  }
  await new Promise((r) => setTimeout(r, 200)); // let the fillers' handshakes reach the queue
  return { port, resume: () => process.kill(child.pid as number, 'SIGCONT') };
}

const openFds = (): number => readdirSync('/proc/self/fd').length;

t.test('connect timeout: a container that never answers the SYN is given up on, and the client is reset', async (t) => {
  const port = await blackHolePort(t);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: port, connectTimeoutMs: 300 })]);
  const s = await connect(fwd.port());
  const r = await readAll(s);
  t.equal(r.errorCode, 'ECONNRESET', 'the client is reset after the connect timeout');
  const rec = fwd.records.find((x) => x['msg'] === 'dial to container failed');
  t.equal(rec?.['err'], 'PF_DIAL_TIMEOUT', 'logged as a dial timeout');
  t.equal(rec?.['errno'], 'ETIMEDOUT', 'with its errno');
});

// Issue 14.3: accepted sockets are paused while we dial, so a client that reset was not noticed
// and both descriptors stayed until connectTimeout (300 clients held 600 descriptors).
t.test('clients that reset while the container is dialled are noticed at once: dials cancelled, descriptors freed', async (t) => {
  const port = await blackHolePort(t);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: port, connectTimeoutMs: 30_000 })]);
  const active = (): number => (fwd.manager.stats()[0]?.stats as { active: number }).active;
  const before = openFds();
  const n = 60;
  const clients = await Promise.all(Array.from({ length: n }, () => connect(fwd.port())));
  await until(() => active() === n, 5000, 'every connection to be dialling');
  t.ok(openFds() - before >= 3 * n, 'each holds a client, an accepted and a dialling socket here');
  for (const c of clients) c.resetAndDestroy();
  await until(() => active() === 0, 5000, 'the dials to be cancelled (connectTimeout is 30 s)');
  await until(() => openFds() - before <= 5, 5000, 'the descriptors to be released');
  const st = fwd.manager.stats()[0]?.stats as { dialFailures: number };
  t.equal(st.dialFailures, 0, 'a cancelled dial is not a dial failure');
  // A FIN is not a departure: a client may half-close after its request and wait for the reply.
  const half = await connect(fwd.port());
  t.teardown(() => half.destroy());
  await until(() => active() === 1, 5000, 'the half-closing client to be dialling');
  half.end('request');
  await new Promise((r) => setTimeout(r, 300));
  t.equal(active(), 1, 'a client that half-closes while we dial is still being served');
});

// While we dial, the client is read already: its first 64 KiB wait here (the rest in the kernel)
// and its FIN is remembered; all of it must reach the container, in order, once it answers.
t.test('bytes and a FIN sent while the container is being dialled arrive intact and in order once it answers', async (t) => {
  const backend = await stoppedServer(t);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: backend.port, connectTimeoutMs: 30_000 })]);
  const active = (): number => (fwd.manager.stats()[0]?.stats as { active: number }).active;
  const payloads = [randomPayload(300 * 1024), Buffer.from('short request')];
  const clients = await Promise.all(payloads.map(() => connect(fwd.port())));
  const replies = clients.map((c) => readAll(c));
  clients.forEach((c, i) => c.end(payloads[i] as Buffer));
  await until(() => active() === 2, 5000, 'both connections to be dialling');
  await new Promise((r) => setTimeout(r, 300)); // their bytes and FINs reach the forwarder meanwhile
  t.equal(active(), 2, 'still dialling: the container has not answered');
  backend.resume();
  const got = await Promise.all(replies);
  got.forEach((r, i) => {
    const p = payloads[i] as Buffer;
    t.equal(r.data.toString(), `${p.length} ${sha256(p)}`, `${p.length} bytes arrived in order, then the FIN (the backend answered at EOF)`);
  });
  clients.forEach((c) => c.destroy());
});

// Issue 20.6: a graceful drain dropped connections that were still dialling — the client (request
// + FIN sent) got a clean EOF with 0 bytes. Draining means dials under way finish and relay like
// established connections, within the drain timeout. The container answers late here because its
// accept queue is full (its first SYNs are dropped) until the test wakes it.
for (const path of ['raw', 'socket'] as const) {
  t.test(`drain (${path} path): a connection still dialling when the listener drains is dialled and served`, async (t) => {
    if (path === 'socket') {
      disableFastPath('rawTcp', 'the drain test on net.Sockets');
      t.teardown(() => restoreFastPath('rawTcp'));
    }
    const backend = await stoppedServer(t);
    const fwd = await startManager(t.teardown, [testMapping({ containerPort: backend.port, connectTimeoutMs: 30_000 })]);
    const active = (): number => (fwd.manager.stats()[0]?.stats as { active: number } | undefined)?.active ?? 0;
    const c = await connect(fwd.port());
    const reply = readAll(c);
    const request = randomPayload(100 * 1024);
    c.end(request);
    await until(() => active() === 1, 5000, 'the connection to be dialling');
    let settled = false;
    void reply.then(() => (settled = true));
    const closed = fwd.manager.close(10_000);
    await new Promise((r) => setTimeout(r, 300));
    t.equal(settled, false, 'the client is still waiting while the listener drains (the dial is under way)');
    backend.resume();
    const r = await reply;
    t.equal(r.data.toString(), `${request.length} ${sha256(request)}`, 'the request reached the container and its reply came back');
    t.equal(r.ended, 'eof');
    await closed;
    t.pass('and the drain completed once the connection ended');
    c.destroy();
  });
}

t.test('drain on SIGTERM (--drain-timeout 10s): a connection still dialling is dialled and served, then the process exits 0', async (t) => {
  const backend = await stoppedServer(t);
  const listenPort = await freePort();
  const cli = runCli(t.teardown, ['run', '-p', `127.0.0.1:${listenPort}:127.0.0.1:${backend.port}`, '--drain-timeout', '10s']);
  await cli.ready;
  const c = await connect(listenPort);
  const reply = readAll(c);
  c.end('request');
  await new Promise((r) => setTimeout(r, 300)); // accepted; the dial waits on the full accept queue
  cli.child.kill('SIGTERM');
  await until(() => /drain/i.test(cli.stderr()), 5000, 'the daemon to start draining');
  backend.resume();
  const r = await reply;
  t.equal(r.data.toString(), `7 ${sha256(Buffer.from('request'))}`, 'the reply arrived (not a clean EOF with 0 bytes)');
  t.equal(await cli.exited, 0, 'then the daemon exits 0');
  c.destroy();
});

t.test('dial-failure warnings name the errno, say when the shortage is local (EMFILE), and do not repeat keys', skipUnless({ tools: ['prlimit'] }), async (t) => {
  // Refused: the warning carries ECONNREFUSED.
  const closed = await freePort();
  const listenPort = await freePort();
  const cli = runCli(t.teardown, ['run', '-p', `127.0.0.1:${listenPort}:127.0.0.1:${closed}`]);
  await cli.ready;
  // The reset may even beat the client's own 'connect' event: then connect() itself fails with it.
  const r = await connect(listenPort).then(readAll, (e: NodeJS.ErrnoException) => ({ errorCode: e.code }));
  t.equal(r.errorCode, 'ECONNRESET', 'the client is reset');
  await until(() => cli.stderr().includes('connecting to the container failed'), 5000, 'the warning');
  const line = cli.stderr().split('\n').find((l) => l.includes('connecting to the container failed')) ?? '';
  t.match(JSON.parse(line), { level: 40, err: 'PF_DIAL_FAILED', errno: 'ECONNREFUSED' }, 'the warning names the errno');
  t.equal(line.split('"target"').length - 1, 1, 'the target key appears once');
  // EMFILE: a forwarder with 40 descriptors, dialling a black hole, runs out of them here. Each
  // connection holds two (the client and the dial), so whether the last free one goes to an accept
  // (the dial then fails: EMFILE) or the accept finds none (libuv sheds it silently) depends on how
  // many the process opened at start (Node 22+ opens 3 more than Node 20): try both parities.
  const hole = await blackHolePort(t);
  let emfile = '';
  for (const nofile of [40, 41]) {
    const port2 = await freePort();
    const limited = runCli(t.teardown, ['run', '-p', `127.0.0.1:${port2}:127.0.0.1:${hole}`], {}, ['prlimit', `--nofile=${nofile}:${nofile}`]);
    await limited.ready;
    const clients: net.Socket[] = [];
    t.teardown(() => clients.forEach((c) => c.destroy()));
    for (let i = 0; i < 40 && !limited.stderr().includes('local shortage'); i++) {
      const c = net.connect({ port: port2, host: '127.0.0.1' });
      c.on('error', () => {});
      clients.push(c);
      await new Promise((res) => setTimeout(res, 20));
    }
    await until(() => limited.stderr().includes('local shortage') || limited.stderr().includes('descriptor limit nearly reached'), 5000, `a descriptor warning (nofile ${nofile})`);
    emfile ||= limited.stderr().split('\n').find((l) => l.includes('local shortage')) ?? '';
    limited.child.kill('SIGKILL');
    clients.forEach((c) => c.destroy());
  }
  t.ok(emfile !== '', 'with one of the two limits the dial found no descriptor (EMFILE)');
  t.match(JSON.parse(emfile || '{}'), { level: 40, errno: 'EMFILE', msg: /no descriptor left here to dial the container/ }, 'a local EMFILE is reported as a local shortage');
  t.notMatch(emfile, /connecting to the container failed/, 'not as a container failure');
});

t.test('IPv6: [::1]:P:[::1]:Q works, and 0.0.0.0 does not bind ::', async (t) => {
  const echo6 = await echoServer(t.teardown, '::1');
  const fwd = await startManager(t.teardown, [testMapping({ hostIP: '::1', containerIP: '::1', containerPort: echo6.port })]);
  const addr = fwd.manager.listeners()[0]?.address();
  t.equal(addr?.ip, '::1', 'bound on ::1');
  const r = await echoRoundTrip(fwd.port(), Buffer.from('over IPv6'), '::1');
  t.equal(r.received.toString(), 'over IPv6');

  const port = await freePort('0.0.0.0');
  const echo4 = await echoServer(t.teardown);
  const fwd4 = await startManager(t.teardown, await loadMappings({ specs: [`0.0.0.0:${port}:127.0.0.1:${echo4.port}`] }));
  t.equal(fwd4.manager.listeners().length, 1, 'one listener for 0.0.0.0');
  const r4 = await echoRoundTrip(port, Buffer.from('v4'), '127.0.0.1');
  t.equal(r4.received.toString(), 'v4', 'IPv4 reaches it');
  const err = await connect(port, '::1').then(
    (s) => {
      s.destroy();
      return 'connected';
    },
    (e: NodeJS.ErrnoException) => e.code,
  );
  t.equal(err, 'ECONNREFUSED', 'nothing listens on [::1] for a 0.0.0.0 mapping');
  // and :: on the same port is free for someone else
  const other = net.createServer();
  await new Promise<void>((resolve, reject) => {
    other.once('error', reject);
    other.listen({ host: '::', port, ipv6Only: true }, () => resolve());
  });
  other.close();
  t.pass(':: with the same port can still be bound');
});

t.test('no host IP binds both 0.0.0.0 and ::', async (t) => {
  const echo = await echoServer(t.teardown);
  const port = await freePort('0.0.0.0');
  const fwd = await startManager(t.teardown, await loadMappings({ specs: [`${port}:127.0.0.1:${echo.port}`] }));
  t.same(fwd.manager.listeners().map((l) => l.address()?.ip).sort(), ['0.0.0.0', '::'], 'two listeners');
  t.equal((await echoRoundTrip(port, Buffer.from('a'), '127.0.0.1')).received.toString(), 'a', 'IPv4 path');
  t.equal((await echoRoundTrip(port, Buffer.from('b'), '::1')).received.toString(), 'b', 'IPv6 path');
});

t.test('idle timeout closes a silent connection; traffic keeps it open', async (t) => {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port, idleTimeoutMs: 300 })]);
  const s = await connect(fwd.port());
  const r = readAll(s);
  for (let i = 0; i < 5; i++) {
    s.write('x');
    await new Promise((res) => setTimeout(res, 100));
  }
  const res = await r; // then silence: the forwarder closes it
  t.equal(res.data.toString(), 'xxxxx', 'echoed while active');
  await until(() => fwd.records.some((x) => x['reason'] === 'idle-timeout'), 5000, 'idle-timeout log');
  t.pass('closed for idleness');
});

// TCP_NODELAY is set once on the listening socket (accepted sockets inherit it on Linux) and on
// each dialled socket. Read back from the kernel through a copy of each descriptor (pidfd_getfd).
t.test('TCP_NODELAY on both sockets of a relayed connection: the accepted one inherits it from the listener', skipUnless({ root: true, tools: ['python3'] }), async (t) => {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port })]);
  const client = await connect(fwd.port());
  t.teardown(() => client.destroy());
  client.write('x');
  await until(() => client.bytesRead === 1, 5000, 'the echo');
  const script = fileURLToPath(new URL('../fixtures/tcp/nodelay.py', import.meta.url));
  const r = spawnSync('python3', [script, String(process.pid), String(fwd.port()), String(echo.port)], { encoding: 'utf8' });
  t.equal(r.status, 0, `the probe ran (${r.stderr.trim()})`);
  const socks = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { local: number; peer: number | null; nodelay: number });
  const accepted = socks.filter((s) => s.local === fwd.port() && s.peer !== null);
  const dialled = socks.filter((s) => s.peer === echo.port);
  t.same(accepted.map((s) => s.nodelay), [1], 'the accepted socket has TCP_NODELAY');
  t.same(dialled.map((s) => s.nodelay), [1], 'the dialled socket has TCP_NODELAY');
});

t.test('maxConnections refuses connections over the limit and counts them', async (t) => {
  const echo = await echoServer(t.teardown);
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: echo.port, maxConnections: 2 })]);
  const a = await connect(fwd.port());
  const b = await connect(fwd.port());
  a.write('1');
  b.write('2');
  await until(() => (fwd.manager.stats()[0]?.stats as { active: number }).active === 2, 5000, 'two active');
  const rc = await readAll(net.connect({ port: fwd.port(), host: '127.0.0.1' }));
  t.equal(rc.errorCode, 'ECONNRESET', 'the third is refused with a reset');
  t.equal((fwd.manager.stats()[0]?.stats as { refused: number }).refused, 1, 'refusal counted');
  a.destroy();
  b.destroy();
});

// Issue 10: destroy() while listen() was pending left that promise pending forever (and the port
// bound once the bind completed); listen() after destroy() resolved with nothing bound.
t.test('lifecycle: destroy() or close() while binding rejects listen() with PF_BIND_FAILED and leaves the port free', async (t) => {
  for (const how of ['destroy', 'close'] as const) {
    const port = await freePort();
    const l = new TcpListener(testBinding({ hostPort: port }), { dialer: new DirectDialer(), logger: silentLogger() });
    const listening = l.listen();
    if (how === 'destroy') l.destroy();
    else void l.close(1000);
    const outcome = await Promise.race([
      listening.then(() => 'resolved', (e: { code?: string }) => e.code ?? 'rejected'),
      new Promise((r) => setTimeout(() => r('still pending'), 2000)),
    ]);
    t.equal(outcome, 'PF_BIND_FAILED', `${how} while binding: listen() rejects with a coded error`);
    await l.close(0);
    t.equal(l.address(), null, `${how}: no address`);
    const err = await connect(port).then(
      (s) => {
        s.destroy();
        return 'connected';
      },
      (e: NodeJS.ErrnoException) => e.code,
    );
    t.equal(err, 'ECONNREFUSED', `${how} while binding: the port is not left bound`);
  }
});

t.test('lifecycle: listen() after destroy() or close() rejects; listen() twice binds once', async (t) => {
  const mk = (): TcpListener => new TcpListener(testBinding(), { dialer: new DirectDialer(), logger: silentLogger() });
  const a = mk();
  a.destroy();
  await t.rejects(a.listen(), { code: 'PF_BIND_FAILED' }, 'listen() after destroy() rejects');
  t.equal(a.address(), null, 'nothing bound');
  const b = mk();
  await b.listen();
  await b.close(0);
  await t.rejects(b.listen(), { code: 'PF_BIND_FAILED' }, 'listen() after close() rejects');
  const c = mk();
  t.teardown(() => c.destroy());
  const [p1, p2] = [c.listen(), c.listen()];
  t.equal(p1, p2, 'a second listen() while binding is the same promise');
  await p1;
  t.ok((c.address()?.port ?? 0) > 0, 'bound once');
  await c.listen();
  t.pass('listen() once listening resolves again');
});
