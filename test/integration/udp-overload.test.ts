// Regression tests for the UDP back-to-back overload hang (issue 13; issue 14 item 2). Under
// overload the host socket's receive buffer stays full; after the client has gone, everything in
// it still reaches the container through the client's old flow. A server that "accepts" a UDP
// client by connect()ing to the first sender (iperf3, many game and VPN servers) and is restarted
// for the next client then locked onto the dead flow, and the next client was never answered. With
// the old 4 MiB buffer (8 MiB accounted) that was ~11,000 stale datagrams, a quarter of a second
// and more; the fix bounds it to a few hundred (a few ms). Both tests below fail on the old code.
import t from 'tap';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { nodeArgv, freePort, runCli } from '../helpers/net.js';
import { skipUnless } from '../helpers/env.js';
import { startEcho, startListener, waitFor, type HasTeardown } from '../fixtures/udp/helpers.js';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/udp');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Blaster {
  command(line: string): Promise<Record<string, unknown>>;
}

/** test/fixtures/udp/blaster.mjs in a process of its own (so it can overload this one). */
async function startBlaster(t: HasTeardown): Promise<Blaster> {
  const [cmd, argv] = nodeArgv(path.join(fixtures, 'blaster.mjs'));
  const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const waiters: ((line: string) => void)[] = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => waiters.shift()?.(line));
  const next = (): Promise<string> => new Promise((resolve) => waiters.push(resolve));
  const ready = await next();
  if (ready !== 'ready') throw new Error(`blaster did not start: ${ready}`);
  return {
    command: async (line) => {
      const answer = next();
      child.stdin.write(`${line}\n`);
      return JSON.parse(await answer) as Record<string, unknown>;
    },
  };
}

/**
 * A server that serves one client at a time the way iperf3 does: a fresh socket per session, which
 * connect()s to the sender of the first datagram it gets and echoes that datagram back to it; after
 * that the kernel only delivers that sender's datagrams to it.
 */
class LockingServer {
  port = 0;
  received = 0;
  private socket: dgram.Socket | null = null;

  async open(): Promise<void> {
    const s = dgram.createSocket('udp4');
    s.on('error', () => {});
    await new Promise<void>((resolve) => s.bind(this.port, '127.0.0.1', () => resolve()));
    this.port = s.address().port;
    this.socket = s;
    let locked = false;
    s.on('message', (msg, rinfo) => {
      this.received++;
      if (locked) return;
      locked = true;
      s.connect(rinfo.port, rinfo.address, () => s.send(msg));
    });
  }

  close(): void {
    this.socket?.close();
    this.socket = null;
  }
}

t.test('a client that has gone leaves at most a few hundred stale datagrams behind, not thousands', async (t) => {
  // The container answers hellos only (the blaster's burst datagrams are 64 bytes of 'b').
  const container = await startEcho(t, '127.0.0.1', 0, (msg) => msg[0] === 0x62);
  const { listener, port } = await startListener(t, { containerPort: container.port });
  const blaster = await startBlaster(t);
  t.same(await blaster.command(`hello 127.0.0.1 ${port}`), { ack: true }, 'the flow is open');
  const before = container.received;
  // The blaster sends for 300 ms while this process (the listener) cannot read: the host socket's
  // receive buffer fills to whatever it can hold, and the client is gone before anything is read.
  const answer = blaster.command('burst 300');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 800);
  const { sent } = (await answer) as { sent: number };
  let last = -1;
  await waitFor('the backlog to drain', () => {
    const done = container.received === last;
    last = container.received;
    return done;
  }, 10_000, 250);
  const stale = container.received - before;
  t.ok(sent > 5_000, `the client overloaded the listener (${sent} datagrams sent)`);
  t.ok(stale > 0, 'some of it reached the container through the flow');
  t.ok(stale <= 1_500, `${stale} datagrams reached the container after their client had gone (the old 4 MiB buffer: ~11,000)`);
  t.equal(listener.stats().flows, 1);
});

t.test('two overload bursts, then a clean exchange completes (a connect-to-first-sender server, restarted per client)', async (t) => {
  const server = new LockingServer();
  await server.open();
  server.close(); // it only picked the port; each session opens it again
  const { port } = await startListener(t, { containerPort: server.port });
  const blaster = await startBlaster(t);
  t.teardown(() => server.close());
  // 100 ms between sessions: about what two back-to-back iperf3 runs leave (its result exchange,
  // process exit and start, TCP setup), and far less than the old buffer took to drain.
  for (const [i, burstMs] of [1000, 1000, 0].entries()) {
    await server.open();
    const r = (await blaster.command(`session 127.0.0.1 ${port} ${burstMs}`)) as { ack: boolean; sent: number };
    server.close();
    t.ok(r.ack, `session ${i + 1}: the new client was answered${burstMs > 0 ? ` (then sent ${r.sent} datagrams at full rate)` : ''}`);
    if (!r.ack) break;
    await sleep(100);
  }
});

t.test('iperf3 -u -b 0 twice through portferry run, then a third run: each completes', skipUnless({ tools: ['iperf3'] }), async (t) => {
  const backendPort = await freePort();
  const hostPort = await freePort();
  const server = spawn('iperf3', ['-s', '-p', String(backendPort)], { stdio: 'ignore' });
  t.teardown(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });
  const cli = runCli(t.teardown.bind(t), ['run', '-p', `127.0.0.1:${hostPort}:127.0.0.1:${backendPort}/tcp`, '-p', `127.0.0.1:${hostPort}:127.0.0.1:${backendPort}/udp`]);
  await cli.ready;
  await sleep(200); // iperf3 -s listening
  for (let i = 1; i <= 3; i++) {
    const client = spawn('iperf3', ['-c', '127.0.0.1', '-p', String(hostPort), '-u', '-b', '0', '-l', '64', '-t', '1'], { stdio: 'ignore' });
    const code = await new Promise<number | string>((resolve) => {
      const timer = setTimeout(() => client.kill('SIGKILL'), 10_000);
      client.once('exit', (c, s) => {
        clearTimeout(timer);
        resolve(c ?? s ?? -1);
      });
    });
    t.equal(code, 0, `run ${i} completed (a hang is killed after 10 s)`);
    if (code !== 0) break;
  }
});
