// The /metrics endpoint as Prometheus sees it: scraped over loopback, parsed by the reference
// Python parser, exact values from a known snapshot (rows of one mapping summed), names, types,
// help texts; docs/metrics.md lists exactly what is registered; bad addresses and taken ports
// give coded errors.
import t, { type Test } from 'tap';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import type { TcpStats, UdpStats } from '../../src/api.js';
import { DROPS_METRIC, MAPPING_METRICS, createMetricsRegistry, parseMetricsAddress, startMetricsServer, type MetricsRow } from '../../src/control/metrics.js';
import { PortferryError } from '../../src/errors.js';
import { memoryLogger, silentLogger } from '../../src/log.js';
import { repoRoot, startServer } from '../helpers/net.js';
import { promParserMissing, sampleValue, scrape } from '../helpers/prometheus.js';

const tcp = (n: number): TcpStats => ({
  protocol: 'tcp',
  active: 2 * n,
  accepted: 100 * n,
  refused: 3 * n,
  dialFailures: 5 * n,
  acceptErrors: n,
  bytesToContainer: 1_000_000_007 * n,
  bytesToClient: 2_000_000_011 * n,
});
const udp = (n: number, drops: Record<string, number>): UdpStats => ({
  protocol: 'udp',
  flows: 4 * n,
  flowsCreated: 40 * n,
  flowsExpired: 30 * n,
  flowsEvicted: 6 * n,
  datagramsToContainer: 700 * n,
  datagramsToClient: 650 * n,
  bytesToContainer: 70_000 * n,
  bytesToClient: 65_000 * n,
  drops,
});

async function serve(t: Test, collect: () => Promise<readonly MetricsRow[]> | readonly MetricsRow[], host = '127.0.0.1') {
  const server = await startMetricsServer({ host, port: 0, collect, logger: silentLogger() });
  t.teardown(() => server.close());
  return server;
}

const parser = promParserMissing();

t.test('exact figures: two listeners of one mapping summed, tcp and udp with drops by reason', parser === undefined ? {} : { skip: parser }, async (t) => {
  let calls = 0;
  const rows: MetricsRow[] = [
    { mapping: 'web', protocol: 'tcp', stats: tcp(1) },
    { mapping: 'web', protocol: 'tcp', stats: tcp(2) }, // a second listener (or worker) of the same mapping
    { mapping: 'dns', protocol: 'udp', stats: udp(1, { 'backend-unreachable': 3, 'send-error': 1 }) },
    { mapping: 'dns', protocol: 'udp', stats: udp(1, { 'backend-unreachable': 2, 'flow-setup-failed': 4 }) },
    { mapping: 'idle', protocol: 'tcp', stats: tcp(0) },
  ];
  const server = await serve(t, () => {
    calls++;
    return rows;
  });
  t.equal(server.address.ip, '127.0.0.1');
  const page = await scrape(`http://127.0.0.1:${server.address.port}/metrics`);
  t.equal(page.status, 200);
  t.match(page.contentType, /^text\/plain; version=0\.0\.4/);
  t.equal(calls, 1, 'collect() ran once for the whole page: every metric reads one snapshot');
  const v = (name: string, labels: Record<string, string>): number | undefined => sampleValue(page.families, name, labels);
  const web = { mapping: 'web', protocol: 'tcp' };
  const dns = { mapping: 'dns', protocol: 'udp' };
  t.equal(v('portferry_connections_accepted_total', web), 300);
  t.equal(v('portferry_connections_refused_total', web), 9);
  t.equal(v('portferry_connections_active', web), 6);
  t.equal(v('portferry_dial_failures_total', web), 15);
  t.equal(v('portferry_accept_errors_total', web), 3);
  t.equal(v('portferry_bytes_to_container_total', web), 3_000_000_021, 'bytes beyond 2^31 exact');
  t.equal(v('portferry_bytes_to_client_total', web), 6_000_000_033);
  t.equal(v('portferry_connections_accepted_total', { mapping: 'idle', protocol: 'tcp' }), 0, 'a mapping with no traffic shows 0, not nothing');
  t.equal(v('portferry_flows_active', dns), 8);
  t.equal(v('portferry_flows_opened_total', dns), 80);
  t.equal(v('portferry_flows_expired_total', dns), 60);
  t.equal(v('portferry_flows_evicted_total', dns), 12);
  t.equal(v('portferry_datagrams_to_container_total', dns), 1400);
  t.equal(v('portferry_datagrams_to_client_total', dns), 1300);
  t.equal(v('portferry_bytes_to_container_total', dns), 140_000);
  t.equal(v('portferry_bytes_to_client_total', dns), 130_000);
  t.equal(v('portferry_datagrams_dropped_total', { ...dns, reason: 'backend-unreachable' }), 5, 'drops of one reason summed over rows');
  t.equal(v('portferry_datagrams_dropped_total', { ...dns, reason: 'send-error' }), 1);
  t.equal(v('portferry_datagrams_dropped_total', { ...dns, reason: 'flow-setup-failed' }), 4);
  t.equal(v('portferry_flows_active', { mapping: 'web' }), undefined, 'no UDP series for a TCP mapping');
  t.equal(v('portferry_connections_active', { mapping: 'dns' }), undefined, 'no TCP series for a UDP mapping');

  // Names, types and help texts as the parser reads them (a counter's family drops `_total`).
  const families = new Map(page.families.map((f) => [f.name, f]));
  for (const def of [...MAPPING_METRICS, { ...DROPS_METRIC, type: 'counter' as const }]) {
    const family = families.get(def.type === 'counter' ? def.name.replace(/_total$/, '') : def.name);
    t.ok(family, `${def.name} is exposed`);
    t.equal(family?.type, def.type, `${def.name} is a ${def.type}`);
    t.equal(family?.help, def.help, `${def.name} help text`);
    if (def.type === 'counter') t.ok(def.name.endsWith('_total'), `${def.name}: counters end in _total`);
    for (const s of family?.samples ?? []) t.equal(s.name, def.name, `${def.name}: sample named as registered`);
  }
  // The process metrics the issue asks for, under their standard names.
  t.ok((v('process_open_fds', {}) ?? 0) > 0, 'process_open_fds');
  t.ok((v('process_max_fds', {}) ?? 0) > 0, 'process_max_fds');
  t.ok((v('process_resident_memory_bytes', {}) ?? 0) > 1_000_000, 'process_resident_memory_bytes');
  t.ok((v('nodejs_heap_size_used_bytes', {}) ?? 0) > 0, 'nodejs_heap_size_used_bytes');
  t.not(v('nodejs_eventloop_lag_seconds', {}), undefined, 'nodejs_eventloop_lag_seconds');
  t.equal(families.get('process_open_fds')?.type, 'gauge');

  // The next scrape shows the next snapshot exactly: counters follow it, a removed mapping is gone.
  rows.splice(0, rows.length, { mapping: 'web', protocol: 'tcp', stats: tcp(7) });
  const again = await scrape(`http://127.0.0.1:${server.address.port}/metrics`);
  t.equal(calls, 2);
  t.equal(sampleValue(again.families, 'portferry_connections_accepted_total', web), 700);
  t.equal(sampleValue(again.families, 'portferry_flows_opened_total', dns), undefined, 'a mapping no longer listed has no series');
  t.equal(sampleValue(again.families, 'portferry_connections_accepted_total', { mapping: 'idle' }), undefined);
});

t.test('routes: 404 elsewhere, 405 for other methods, HEAD answers; an async collect() that fails is a 500 and the server keeps serving', async (t) => {
  let fail = true;
  const { logger, records } = memoryLogger();
  const server = await startMetricsServer({
    host: '127.0.0.1',
    port: 0,
    logger,
    collect: async () => {
      await new Promise((resolve) => setImmediate(resolve));
      if (fail) throw new Error('stats unavailable');
      return [{ mapping: 'web', protocol: 'tcp', stats: tcp(1) }];
    },
  });
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${server.address.port}`;
  t.equal((await fetch(`${base}/`)).status, 404);
  t.equal((await fetch(`${base}/metricsx`)).status, 404);
  const post = await fetch(`${base}/metrics`, { method: 'POST', body: 'x' });
  t.equal(post.status, 405);
  t.equal(post.headers.get('allow'), 'GET, HEAD');
  const broken = await fetch(`${base}/metrics`);
  t.equal(broken.status, 500);
  t.match(await broken.text(), /collecting the metrics failed/);
  t.ok(records.some((r) => r['msg'] === 'metrics: collecting the figures failed' && r['level'] === 40), 'logged at warn');
  fail = false;
  const ok = await fetch(`${base}/metrics?name[]=x`);
  t.equal(ok.status, 200, 'serves again after a failed collect');
  t.match(await ok.text(), /^portferry_connections_accepted_total\{mapping="web",protocol="tcp"\} 100$/m);
  t.equal((await fetch(`${base}/metrics`, { method: 'HEAD' })).status, 200);
  t.ok(records.some((r) => r['msg'] === 'metrics: serving' && r['metrics'] === `http://127.0.0.1:${server.address.port}/metrics`), 'logs its URL');
});

t.test('IPv6 loopback: [::1]:0 parses and serves', async (t) => {
  const addr = parseMetricsAddress('[::1]:0');
  t.same(addr, { host: '::1', port: 0 });
  const server = await serve(t, () => [], addr.host);
  t.equal(server.address.ip, '::1');
  const res = await fetch(`http://[::1]:${server.address.port}/metrics`);
  t.equal(res.status, 200);
  t.match(await res.text(), /# TYPE portferry_connections_accepted_total counter/);
});

t.test('parseMetricsAddress: HOST:PORT and [IPv6]:PORT; anything else is PF_METRICS_ADDRESS', async (t) => {
  t.same(parseMetricsAddress('127.0.0.1:9464'), { host: '127.0.0.1', port: 9464 });
  t.same(parseMetricsAddress('0.0.0.0:65535'), { host: '0.0.0.0', port: 65535 });
  t.same(parseMetricsAddress('[::]:9464'), { host: '::', port: 9464 });
  t.same(parseMetricsAddress('[FD00:0::1]:80'), { host: 'fd00::1', port: 80 }, 'IPv6 canonicalised');
  const bad: [string, RegExp][] = [
    ['9464', /the port is missing/],
    [':9464', /the host is missing/],
    ['localhost:9464', /"localhost" is not an IP address/],
    ['::1:9464', /IPv6 address must be written in brackets/],
    ['[127.0.0.1]:9464', /only an IPv6 address goes in brackets/],
    ['[::1:9464', /not of that form/],
    ['127.0.0.1:65536', /"65536" is not a port from 0 to 65535/],
    ['127.0.0.1:-1', /not a port/],
    ['127.0.0.1:', /"" is not a port/],
    ['127.0.0.1:80x', /not a port/],
    ['', /the port is missing/],
  ];
  for (const [text, why] of bad) {
    t.throws(() => parseMetricsAddress(text), { code: 'PF_METRICS_ADDRESS', message: why }, `"${text}"`);
  }
  try {
    parseMetricsAddress('localhost:9464');
  } catch (err) {
    t.ok(err instanceof PortferryError);
    if (err instanceof PortferryError) {
      t.match(err.message, /metrics address "localhost:9464".*expected HOST:PORT/);
      t.match(err.hint, /127\.0\.0\.1:9464/);
    }
  }
});

t.test('bind failures are coded: a taken port is PF_BIND_ADDRINUSE naming the address; a foreign address PF_BIND_ADDRNOTAVAIL', async (t) => {
  const holder = await startServer(t.teardown, () => {});
  await t.rejects(startMetricsServer({ host: '127.0.0.1', port: holder.port, collect: () => [], logger: silentLogger() }), {
    code: 'PF_BIND_ADDRINUSE',
    message: new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${holder.port}: the address is already in use`),
    hint: /ss -lntup .*--metrics another port/,
  });
  // Nothing is sent there: binding a TEST-NET address that is not on this host fails at bind().
  await t.rejects(startMetricsServer({ host: '192.0.2.1', port: 0, collect: () => [], logger: silentLogger() }), { code: 'PF_BIND_ADDRNOTAVAIL', message: /192\.0\.2\.1 is not an address of this host/ });
  // The holder still has its port: the failed start took nothing.
  const probe = net.connect(holder.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => probe.once('connect', resolve).once('error', reject));
  probe.destroy();
  t.pass('the holder still serves');
});

t.test('close() is idempotent and frees the port', async (t) => {
  const server = await startMetricsServer({ host: '127.0.0.1', port: 0, collect: () => [], logger: silentLogger() });
  const keepAlive = await fetch(`http://127.0.0.1:${server.address.port}/metrics`); // leaves a keep-alive connection open
  await keepAlive.text();
  await Promise.all([server.close(), server.close()]);
  await server.close();
  const again = await startMetricsServer({ host: '127.0.0.1', port: server.address.port, collect: () => [], logger: silentLogger() });
  await again.close();
  t.pass('the same port binds again after close()');
});

t.test('docs/metrics.md lists exactly the registered metrics, with their types and help texts', async (t) => {
  const registry = createMetricsRegistry(() => []);
  const registered = (await registry.getMetricsAsJSON()).map((m) => ({ name: m.name, type: String(m.type), help: m.help }));
  const doc = readFileSync(`${repoRoot}/docs/metrics.md`, 'utf8');
  const documented: { name: string; type: string; help: string }[] = [];
  for (const line of doc.split('\n')) {
    const m = /^\| `([a-z_:][a-z0-9_:]*)` \| (counter|gauge|histogram|summary) \| [^|]* \| (.*) \|$/.exec(line);
    if (m !== null) documented.push({ name: m[1]!, type: m[2]!, help: m[3]!.replace(/\\\|/g, '|') });
  }
  const byName = (a: { name: string }, b: { name: string }): number => a.name.localeCompare(b.name);
  t.same([...documented].sort(byName), [...registered].sort(byName), 'same names, types and help texts');
  t.ok(documented.length >= 30, `the table was parsed (${documented.length} rows)`);
});
