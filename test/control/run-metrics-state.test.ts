// Issue 10, acceptance 5 and 6, end to end through `portferry run`: /metrics after a known
// transfer reports exactly the bytes moved each way (one process, and --workers 2 where the
// figures are the sum over workers), read by Prometheus's own parser; SIGKILL after runtime adds,
// a restart with the same --state brings back the same mappings and ids and traffic flows; a
// truncated state file stops the start with a coded error and is left as it was.
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { parsePrometheusText, promParserMissing, type MetricFamily } from '../helpers/prometheus.js';
import { connectRefused, freePort, runCli } from '../helpers/net.js';

interface T {
  teardown(fn: () => unknown): void;
}

function tempDir(t: T): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-rms-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A backend that reads `up` bytes, then answers with `down` bytes and closes. */
async function exactBackend(t: T, up: number, down: number): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    let got = 0;
    c.on('data', (d: Buffer) => {
      got += d.length;
      if (got === up) c.end(Buffer.alloc(down, 7));
    });
    c.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

function exchange(port: number, up: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let got = 0;
    s.on('data', (d: Buffer) => (got += d.length));
    s.on('end', () => {
      s.end();
      resolve(got);
    });
    s.on('error', reject);
    s.write(Buffer.alloc(up, 1));
  });
}

function scrape(port: number): Promise<MetricFamily[]> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve(parsePrometheusText(text)));
    }).on('error', reject);
  });
}

function sample(families: MetricFamily[], name: string, labels: Record<string, string>): number | undefined {
  for (const f of families) for (const s of f.samples) if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
  return undefined;
}

const parser = promParserMissing();
for (const workers of [1, 2]) {
  t.test(`/metrics reports exactly the bytes moved each way (--workers ${workers})`, parser === undefined ? {} : { skip: parser }, async (t) => {
    const [UP, DOWN, N] = [123_457, 98_765, 20];
    const backend = await exactBackend(t, UP, DOWN);
    const [port, mport] = [await freePort(), await freePort()];
    const sock = path.join(tempDir(t), 'api.sock');
    const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '--metrics', `127.0.0.1:${mport}`, '--workers', String(workers)]);
    await cli.ready;
    await new ApiClient(sock).addMappings([{ name: 'exact', hostIP: '127.0.0.1', hostPort: port, containerIP: '127.0.0.1', containerPort: backend }]);
    for (let i = 0; i < N; i++) t.equal(await exchange(port, UP), DOWN, `exchange ${i}`, { diagnostic: false });
    // The relay counts when a connection ends; the scrape may come a moment before the last one.
    let families: MetricFamily[] = [];
    for (let i = 0; i < 50; i++) {
      families = await scrape(mport);
      if (sample(families, 'portferry_connections_active', { mapping: 'exact' }) === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const labels = { mapping: 'exact', protocol: 'tcp' };
    t.equal(sample(families, 'portferry_connections_accepted_total', labels), N, 'connections accepted');
    t.equal(sample(families, 'portferry_bytes_to_container_total', labels), N * UP, 'bytes to the container, exact');
    t.equal(sample(families, 'portferry_bytes_to_client_total', labels), N * DOWN, 'bytes to the client, exact');
    cli.child.kill('SIGTERM');
    t.equal(await cli.exited, 0);
  });
}

t.test('state: SIGKILL after runtime adds, restart with the same --state → same mappings and ids, traffic flows; truncated file → coded error, unchanged', async (t) => {
  const dir = tempDir(t);
  const [sock, state] = [path.join(dir, 'api.sock'), path.join(dir, 'state.json')];
  const backend = await exactBackend(t, 10, 20);
  const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
  const first = runCli(t.teardown.bind(t), ['run', '--api', sock, '--state', state]);
  await first.ready;
  const client = new ApiClient(sock);
  const a = await client.addMappings([{ name: 'a', hostIP: '127.0.0.1', hostPort: p1, containerIP: '127.0.0.1', containerPort: backend }], 'ctr-1');
  const b = await client.addMappings([{ name: 'b', hostIP: '127.0.0.1', hostPort: `${p2}`, containerIP: '127.0.0.1', containerPort: backend, proxyProtocol: 'v2', protocol: 'udp' }], 'ctr-2');
  const c = await client.addMappings([{ name: 'c', hostIP: '127.0.0.1', hostPort: p3, containerIP: '127.0.0.1', containerPort: backend }]);
  await client.removeMapping(c[0]?.id ?? 0);
  const before = await client.listMappings();
  first.child.kill('SIGKILL');
  await first.exited;

  const second = runCli(t.teardown.bind(t), ['run', '--api', sock, '--state', state]);
  await second.ready;
  const after = await client.listMappings();
  t.same(after.map((m) => [m.id, m.name, m.owner, m.mapping]), before.map((m) => [m.id, m.name, m.owner, m.mapping]), 'same mappings, ids and owners');
  t.same(after.map((m) => m.id), [a[0]?.id, b[0]?.id]);
  t.equal(await exchange(p1, 10), 20, 'traffic flows on the restored mapping');
  const [d] = await client.addMappings([{ name: 'd', hostIP: '127.0.0.1', hostPort: p3, containerIP: '127.0.0.1', containerPort: backend }]);
  t.ok((d?.id ?? 0) > (c[0]?.id ?? 0), `ids go on after a restart (${d?.id} > removed ${c[0]?.id})`);
  second.child.kill('SIGKILL');
  await second.exited;

  const whole = fs.readFileSync(state);
  fs.writeFileSync(state, whole.subarray(0, Math.floor(whole.length / 2)));
  const truncated = fs.readFileSync(state);
  const third = runCli(t.teardown.bind(t), ['run', '--api', sock, '--state', state]);
  t.equal(await third.exited, 1, 'the start stops');
  t.match(third.stderr(), /PF_STATE_PARSE/, 'with a coded error');
  t.match(third.stderr(), new RegExp(state.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')), 'naming the file');
  t.ok(fs.readFileSync(state).equals(truncated), 'the file is unchanged');
  const refused = await connectRefused(p1);
  t.ok(refused, 'nothing was bound');
});
