// The relay's bulk mode (reads into its own ring of buffers after 1 MiB): integrity under
// backpressure from a slow reader on either side, half-close after the switch, and proof that
// the mode was actually used (so these tests cannot pass with it silently off).
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { testMapping } from '../helpers/mapping.js';
import { connect, startManager, startServer, until } from '../helpers/net.js';

const MiB = 1024 * 1024;

/** Reads everything, pausing for a moment every `every` bytes: a slow reader. */
function slowRead(s: net.Socket, every: number): Promise<{ hash: string; bytes: number }> {
  return new Promise((resolve) => {
    const h = createHash('sha256');
    let bytes = 0;
    let sincePause = 0;
    s.on('data', (c: Buffer) => {
      h.update(c);
      bytes += c.length;
      sincePause += c.length;
      if (sincePause >= every) {
        sincePause = 0;
        s.pause();
        setTimeout(() => s.resume(), 5);
      }
    });
    s.on('end', () => resolve({ hash: h.digest('hex'), bytes }));
  });
}

/** Writes `total` random bytes in chunks, honouring backpressure; returns their hash. */
async function writeAll(s: net.Socket, total: number): Promise<string> {
  const h = createHash('sha256');
  let left = total;
  while (left > 0) {
    const chunk = randomBytes(Math.min(left, 1 + Math.floor(Math.random() * 300_000)));
    h.update(chunk);
    left -= chunk.length;
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  }
  s.end();
  return h.digest('hex');
}

for (const direction of ['client→container', 'container→client'] as const) {
  t.test(`bulk ${direction}: 64 MiB to a slow reader arrive intact, in bulk mode`, async (t) => {
    let serverResult: Promise<{ hash: string; bytes: number }> | undefined;
    let serverSent: Promise<string> | undefined;
    const server = await startServer(t.teardown, (s) => {
      if (direction === 'client→container') {
        serverResult = slowRead(s, 4 * MiB);
        void serverResult.then(() => s.end());
      } else {
        serverSent = writeAll(s, 64 * MiB);
        s.resume();
      }
    });
    const fwd = await startManager(t.teardown, [testMapping({ containerPort: server.port })]);
    const c = await connect(fwd.port());
    if (direction === 'client→container') {
      const sent = await writeAll(c, 64 * MiB);
      await until(() => serverResult !== undefined, 5000, 'the server');
      const got = await serverResult;
      t.equal(got?.bytes, 64 * MiB, 'every byte');
      t.equal(got?.hash, sent, 'in order, unchanged');
    } else {
      const got = await slowRead(c, 4 * MiB);
      const sent = await serverSent;
      t.equal(got.bytes, 64 * MiB, 'every byte');
      t.equal(got.hash, sent, 'in order, unchanged');
      c.end();
    }
    await until(() => fwd.records.some((r) => r['msg'] === 'connection closed'), 10_000, 'the relay to end');
    const rec = fwd.records.find((r) => r['msg'] === 'connection closed');
    t.equal(rec?.['reason'], 'done');
    t.ok(Number(rec?.['bulk']) >= 1, `the bulk direction read into the relay's own buffers (bulk=${String(rec?.['bulk'])})`);
  });
}

t.test('a small exchange stays in event mode (no buffers held for small or idle connections)', async (t) => {
  const server = await startServer(t.teardown, (s) => s.pipe(s));
  const fwd = await startManager(t.teardown, [testMapping({ containerPort: server.port })]);
  const c = await connect(fwd.port());
  c.end('small');
  await new Promise((r) => c.on('end', r).resume());
  await until(() => fwd.records.some((r) => r['msg'] === 'connection closed'), 5000, 'the relay to end');
  t.equal(fwd.records.find((r) => r['msg'] === 'connection closed')?.['bulk'], 0);
});
