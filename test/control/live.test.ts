// Issue 10, acceptance 3 and the workers part: runtime changes never touch live traffic. A 1 GiB
// transfer on one mapping completes with a matching SHA-256 while 200 add/remove cycles run on
// other ports through the API; with --workers 2 a runtime add reaches every worker (both serve
// the new port) and a remove reaches every worker too.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { connectRefused, freePort, runCli, until } from '../helpers/net.js';

interface T {
  teardown(fn: () => unknown): void;
}

function socketPath(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-live-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'api.sock');
}

/** A sink that hashes what it receives and answers with `BYTES SHA256\n` after the client's EOF. */
async function hashSink(t: T): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    const h = createHash('sha256');
    let n = 0;
    c.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    c.on('end', () => c.end(`${n} ${h.digest('hex')}\n`));
    c.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

/** Sends `total` bytes (a random 1 MiB block repeated, with backpressure); resolves with what the sink reported and the expected hash. */
function send(port: number, total: number): Promise<{ reported: string; expected: string }> {
  return new Promise((resolve, reject) => {
    const block = randomBytes(1 << 20);
    const h = createHash('sha256');
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let sent = 0;
    let answer = '';
    const pump = (): void => {
      while (sent < total) {
        const chunk = block.subarray(0, Math.min(block.length, total - sent));
        h.update(chunk);
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      s.end();
    };
    s.once('connect', pump);
    s.setEncoding('utf8');
    s.on('data', (d: string) => (answer += d));
    s.on('end', () => resolve({ reported: answer.trim(), expected: `${total} ${h.digest('hex')}` }));
    s.on('error', reject);
  });
}

t.test('a 1 GiB transfer is untouched by 200 add/remove cycles on other ports', async (t) => {
  const sock = socketPath(t);
  const sink = await hashSink(t);
  const port = await freePort();
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '-p', `127.0.0.1:${port}:127.0.0.1:${sink}`]);
  await cli.ready;
  const client = new ApiClient(sock);
  const transfer = send(port, 1 << 30);
  let cycles = 0;
  let done = false;
  let doneBeforeFirstCycle = false;
  void transfer.finally(() => (done = true));
  const churn = (async () => {
    while (cycles < 200) {
      if (cycles === 1) doneBeforeFirstCycle = done;
      const p = await freePort();
      const [m] = await client.addMappings([{ hostIP: '127.0.0.1', hostPort: p, containerIP: '127.0.0.1', containerPort: sink, protocol: cycles % 2 === 0 ? 'tcp' : 'udp' }], 'churn');
      await client.removeMapping(m?.id ?? 0);
      cycles++;
    }
  })();
  const [result] = await Promise.all([transfer, churn]);
  t.equal(cycles, 200, '200 add/remove cycles ran');
  t.equal(result.reported, result.expected, '1 GiB arrived complete, SHA-256 matches');
  t.notOk(doneBeforeFirstCycle, 'the transfer was still running while the add/remove cycles ran');
  t.same((await client.listMappings()).map((m) => m.origin), ['cli'], 'only the command line mapping is left');
});

t.test('--workers 2: a runtime add reaches every worker, a remove too', async (t) => {
  const sock = socketPath(t);
  const sink = await hashSink(t);
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '--workers', '2']);
  const ready = await cli.ready;
  t.equal((ready['workerPids'] as number[]).length, 2);
  const client = new ApiClient(sock);
  const port = await freePort();
  const [m] = await client.addMappings([{ hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: sink }]);
  // SCHED_NONE: the kernel hands connections to whichever worker accepts; over 200 connections
  // both get some only if both have the listener.
  for (let i = 0; i < 200; i++) {
    const r = await send(port, 1000);
    if (r.reported !== r.expected) t.fail(`connection ${i} corrupted`);
  }
  const stats = await client.stats();
  const rows = stats.find((s) => s.id === m?.id)?.listeners ?? [];
  t.equal(rows.length, 2, 'one stats row per worker: both bound the new port');
  const accepted = rows.map((r) => Number(r.stats['accepted']));
  t.equal(accepted.reduce((a, b) => a + b, 0), 200, `200 connections in all (${accepted.join(' + ')})`);
  await client.removeMapping(m?.id ?? 0);
  const refused = await connectRefused(port);
  t.ok(refused, 'removed from every worker: the port is closed');
  const conflict = await client.addMappings([{ hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: sink }, { hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: 1 }]).catch((e: { code: string }) => e.code);
  t.equal(conflict, 'PF_CONFIG_INVALID', 'a conflicting add is refused before any worker binds');
  t.same(await client.listMappings(), [], 'nothing added');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0);
});

// A replacement worker is handed every mapping when it says hello; changes that land while that
// first add is under way were broadcast to the live workers only. It must catch up: a mapping
// removed meanwhile must not stay bound in it (the port would keep accepting), one added
// meanwhile must reach it.
t.test('--workers 2: a replacement worker catches up with changes made while it was starting', async (t) => {
  const sock = socketPath(t);
  const sink = await hashSink(t);
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '--workers', '2']);
  const pids = (await cli.ready)['workerPids'] as number[];
  const client = new ApiClient(sock);
  // Many mappings make the replacement's first add long (each listen is a round trip to the
  // primary), so that changes land while it runs.
  const taken = new Set<number>();
  const unusedPort = async (): Promise<number> => {
    for (;;) {
      const p = await freePort();
      if (!taken.has(p)) return taken.add(p), p;
    }
  };
  const many = [];
  for (let i = 0; i < 150; i++) many.push({ hostIP: '127.0.0.1', hostPort: await unusedPort(), containerIP: '127.0.0.1', containerPort: sink });
  await client.addMappings(many);
  process.kill(pids[0] as number, 'SIGKILL');
  await until(() => cli.stderr().includes('a worker died; starting a replacement'), 5000, 'the replacement to be forked');
  const removed: number[] = [];
  const stopAt = Date.now() + 2500;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (Date.now() < stopAt) {
        const port = await unusedPort();
        const [m] = await client.addMappings([{ hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: sink }]);
        await new Promise((r) => setTimeout(r, 5));
        await client.removeMapping(m?.id ?? 0);
        removed.push(port);
      }
    }),
  );
  const late = await unusedPort();
  await client.addMappings([{ hostIP: '127.0.0.1', hostPort: late, containerIP: '127.0.0.1', containerPort: sink }]);
  await until(() => cli.stderr().includes('replacement worker ready'), 30_000, 'the replacement to be ready');
  const stale = [];
  for (const port of removed) if (!(await connectRefused(port))) stale.push(port);
  t.same(stale, [], `none of the ${removed.length} mappings removed while the replacement started still accepts`);
  const stats = await client.stats();
  const rows = stats.flatMap((s) => s.listeners);
  t.equal(rows.length, 2 * 151, 'both workers hold every mapping there is, and only those');
});
