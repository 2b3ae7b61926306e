// Issue 14, acceptance 2: a bounded soak (well under a minute). portferry runs under a descriptor
// limit small enough to be hit; TCP clients move data with SHA-256 checks the whole time; a flood
// of UDP clients (one datagram from each of 400 source ports, to a mapping without host IP, so the
// address rescan runs under EMFILE) and a pile of idle TCP connections exhaust the descriptors; the
// TCP backend goes away and comes back; SIGHUP arrives twice. The forwarder must never exit, must
// recover (a clean TCP transfer and a UDP exchange work at the end), and every TCP exchange that
// ends cleanly must carry exactly the bytes sent — a failure may only ever be a visible error.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { skipUnless } from '../helpers/env.js';
import { freePort, runCli, until } from '../helpers/net.js';

const LIMIT = 256;

/** Sink: reads until the client's EOF, answers `BYTES SHA256`, closes. Can be stopped and restarted on its port. */
class Sink {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  constructor(readonly port: number) {}

  async start(): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true }, (c) => {
      this.sockets.add(c);
      c.on('close', () => this.sockets.delete(c));
      c.write('+'); // relaying has begun: from here on, a clean end must carry the whole answer
      const h = createHash('sha256');
      let n = 0;
      c.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
      });
      c.on('end', () => c.end(`${n} ${h.digest('hex')}`));
      c.on('error', () => {});
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    // The backend dies: its connections are reset (a clean FIN would be the backend's own answer).
    for (const c of this.sockets) c.resetAndDestroy();
    if (s !== null) await new Promise<void>((r) => s.close(() => r()));
  }
}

/**
 * ok: the whole answer; error: a visible error (reset, timeout); unserved: closed before the
 * backend was reached (libuv sheds a connection it cannot accept under EMFILE with a plain close);
 * corrupt: the relay had begun and the stream ended "cleanly" without all of the answer.
 */
type Outcome = 'ok' | 'error' | 'unserved' | 'corrupt';

/** One exchange: `size` random bytes up, the sink's `BYTES SHA256` back. */
function exchange(port: number, size: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const data = randomBytes(size);
    const expected = `+${size} ${createHash('sha256').update(data).digest('hex')}`;
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let reply = '';
    let done = false;
    const finish = (o: Outcome): void => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(o);
    };
    s.setTimeout(15_000, () => finish('error'));
    s.on('error', () => finish('error'));
    s.on('data', (d: Buffer) => (reply += d.toString()));
    // A clean end must carry the whole answer: anything else is a truncation passed off as EOF.
    s.on('end', () => finish(reply === expected ? 'ok' : reply === '' ? 'unserved' : 'corrupt'));
    s.end(data);
  });
}

t.test('soak: descriptor exhaustion, UDP flood, backend down and up, SIGHUP — never exits, recovers, no byte corrupted', skipUnless({ tools: ['prlimit'] }), async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-soak-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sink = new Sink(await freePort());
  await sink.start();
  t.teardown(() => sink.stop());
  const udpBackend = dgram.createSocket('udp4');
  udpBackend.on('message', (m, r) => udpBackend.send(m, r.port, r.address));
  await new Promise<void>((r) => udpBackend.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => udpBackend.close());

  const [tcpPort, udpPort] = [await freePort(), await freePort()];
  const file = path.join(dir, 'pf.yaml');
  fs.writeFileSync(
    file,
    `mappings:\n  - {name: tcp, hostIP: 127.0.0.1, hostPort: ${tcpPort}, containerIP: 127.0.0.1, containerPort: ${sink.port}, connectTimeout: 2s}\n` +
      `  - {name: udp, protocol: udp, hostPort: ${udpPort}, containerIP: 127.0.0.1, containerPort: ${(udpBackend.address() as net.AddressInfo).port}, udpIdleTimeout: 5s}\n`,
  );
  // The descriptor limit is set from the start, as `ulimit -n` would, so the UDP flow budget is
  // computed from it.
  const cli = runCli(t.teardown.bind(t), ['run', '-c', file, '--log-level', 'warn'], {}, ['prlimit', `--nofile=${LIMIT}:${LIMIT}`]);
  await until(async () => (await exchange(tcpPort, 10)) === 'ok', 15_000, 'forwarder serving');

  const counts: Record<Outcome, number> = { ok: 0, error: 0, unserved: 0, corrupt: 0 };
  let running = true;
  const loops = Array.from({ length: 6 }, async () => {
    while (running) counts[await exchange(tcpPort, 1 + Math.floor(Math.random() * 200_000))]++;
  });

  const phase = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  await phase(1500);
  // 1. UDP flood: 400 sockets, one datagram each, to the mapping without host IP.
  // Each client sends once a second, so its flow (and its descriptor) lives through a rescan.
  const udpClients: dgram.Socket[] = [];
  for (let i = 0; i < 400; i++) {
    const s = dgram.createSocket('udp4');
    s.on('error', () => {});
    udpClients.push(s);
  }
  const flood = (): void => udpClients.forEach((s) => s.send('flood', udpPort, '127.0.0.1'));
  flood();
  const flooding = setInterval(flood, 1000);
  t.teardown(() => {
    clearInterval(flooding);
    udpClients.forEach((s) => s.close());
  });
  // 2. A pile of idle TCP connections on top.
  const idle: net.Socket[] = [];
  for (let i = 0; i < 300; i++) {
    const s = net.connect(tcpPort, '127.0.0.1');
    s.on('error', () => {});
    idle.push(s);
  }
  await phase(11_000); // past one address rescan (every 10 s) while descriptors are short
  idle.forEach((s) => s.destroy());
  clearInterval(flooding);
  // 3. The backend goes away and comes back.
  await sink.stop();
  await phase(2000);
  await sink.start();
  // 4. SIGHUP twice.
  cli.child.kill('SIGHUP');
  await phase(1000);
  cli.child.kill('SIGHUP');
  await phase(3000);
  running = false;
  await Promise.all(loops);

  t.equal(cli.child.exitCode, null, 'the forwarder never exited');
  t.equal(cli.child.signalCode, null);
  t.equal(counts.corrupt, 0, `no exchange ended cleanly with wrong bytes (ok ${counts.ok}, error ${counts.error}, unserved ${counts.unserved})`);
  t.ok(counts.ok > 20, `healthy exchanges went through (${counts.ok})`);
  udpClients.forEach((s) => s.close());
  udpClients.length = 0; // (their flows expire after udpIdleTimeout)
  // Recovered: a clean TCP transfer and a UDP exchange.
  await until(async () => (await exchange(tcpPort, 1 << 20)) === 'ok', 20_000, 'TCP serves again');
  const answer = await new Promise<string>((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    const timer = setInterval(() => s.send('after', udpPort, '127.0.0.1'), 200);
    const stop = setTimeout(() => {
      clearInterval(timer);
      s.close();
      reject(new Error('no UDP answer after the soak'));
    }, 15_000);
    s.on('message', (m) => {
      clearInterval(timer);
      clearTimeout(stop);
      s.close();
      resolve(m.toString());
    });
  });
  t.equal(answer, 'after', 'UDP serves again');
  t.notMatch(cli.stderr(), /uncaught|unhandled|SystemError/i, 'no crash in the log');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0, 'and still drains and exits 0');
});
