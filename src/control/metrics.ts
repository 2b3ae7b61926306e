// Prometheus metrics at GET /metrics (prom-client, docs/metrics.md). The per-mapping figures are
// not counted here: each scrape asks the forwarder for its listeners' stats once (`collect`) and
// every metric reads that one snapshot, so counters are exact and consistent with each other.
// Rows of the same mapping and protocol (one per listener, and per worker with --workers) are
// summed; with --workers the engine keeps dead workers' counts in its rows (WorkerEngine.stats),
// so the sums never go down while the process lives. prom-client's Counter cannot be set, so each metric's collect hook resets it and adds
// the snapshot's values: the exposed value is the snapshot's, with the counter type.
import http from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { ListenerStats, Protocol } from '../api.js';
import { formatHostPort } from '../addr.js';
import { canonicalIP } from '../addr.js';
import { PortferryError } from '../errors.js';
import type { Logger } from '../log.js';
import { bindFailure } from '../proxy/bind-error.js';

export interface MetricsRow {
  /** The mapping's name (the `mapping` label). */
  readonly mapping: string;
  readonly protocol: Protocol;
  readonly stats: ListenerStats;
}

export type MetricsCollect = () => Promise<readonly MetricsRow[]> | readonly MetricsRow[];

export interface MetricsServerOptions {
  readonly host: string;
  readonly port: number;
  readonly collect: MetricsCollect;
  readonly logger: Logger;
}

export interface MetricsServer {
  /** The address actually bound (port 0 becomes the kernel's choice). */
  readonly address: { readonly ip: string; readonly port: number };
  /** Stops serving and closes open scrape connections. Idempotent. */
  close(): Promise<void>;
}

interface MappingMetric<S extends ListenerStats> {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge';
  /** Which rows it reads: TCP, UDP, or both. */
  readonly protocol: Protocol | 'any';
  readonly value: (s: S) => number;
}

type StatsOf<P extends Protocol> = Extract<ListenerStats, { protocol: P }>;

/** A maker of metrics that read one protocol's stats (other rows count 0, and are skipped anyway). */
const perProtocol =
  <P extends Protocol>(protocol: P) =>
  (name: string, help: string, type: 'counter' | 'gauge', value: (s: StatsOf<P>) => number): MappingMetric<ListenerStats> => ({
    name,
    help,
    type,
    protocol,
    value: (s) => (s.protocol === protocol ? value(s as StatsOf<P>) : 0),
  });
const tcp = perProtocol('tcp');
const udp = perProtocol('udp');

/** Every per-mapping metric (labels `mapping`, `protocol`), in the order they are exposed. */
export const MAPPING_METRICS: readonly MappingMetric<ListenerStats>[] = [
  tcp('portferry_connections_accepted_total', 'TCP connections accepted from clients.', 'counter', (s) => s.accepted),
  tcp('portferry_connections_refused_total', 'TCP connections refused before dialling the container, because the mapping\'s maxConnections was reached.', 'counter', (s) => s.refused),
  tcp('portferry_connections_active', 'TCP connections open right now.', 'gauge', (s) => s.active),
  tcp('portferry_dial_failures_total', 'Dials to the container that failed or timed out (the client was disconnected).', 'counter', (s) => s.dialFailures),
  tcp('portferry_accept_errors_total', 'Errors accepting a TCP connection on a host socket.', 'counter', (s) => s.acceptErrors),
  { name: 'portferry_bytes_to_container_total', help: 'Payload bytes relayed from clients to the container (TCP stream bytes, UDP datagram payloads; no PROXY headers).', type: 'counter', protocol: 'any', value: (s) => s.bytesToContainer },
  { name: 'portferry_bytes_to_client_total', help: 'Payload bytes relayed from the container to clients (TCP stream bytes, UDP datagram payloads).', type: 'counter', protocol: 'any', value: (s) => s.bytesToClient },
  udp('portferry_flows_active', 'UDP flows (one per client address) in the flow table right now.', 'gauge', (s) => s.flows),
  udp('portferry_flows_opened_total', 'UDP flows opened (a datagram from a new client address).', 'counter', (s) => s.flowsCreated),
  udp('portferry_flows_evicted_total', 'UDP flows evicted because the flow table was full (udpMaxFlows); the least recently used goes.', 'counter', (s) => s.flowsEvicted),
  udp('portferry_flows_expired_total', 'UDP flows closed after udpIdleTimeout without a datagram either way.', 'counter', (s) => s.flowsExpired),
  udp('portferry_datagrams_to_container_total', 'UDP datagrams relayed from clients to the container.', 'counter', (s) => s.datagramsToContainer),
  udp('portferry_datagrams_to_client_total', 'UDP datagrams relayed from the container to clients.', 'counter', (s) => s.datagramsToClient),
];

/** UDP drops, one series per reason (label `reason` beside `mapping` and `protocol`). */
export const DROPS_METRIC = {
  name: 'portferry_datagrams_dropped_total',
  help: 'UDP datagrams dropped, by reason (backend-unreachable, send-error, flow-setup-failed, …).',
} as const;

/** The registry with every metric; `snapshot()` returns the rows the current scrape reads. */
export function createMetricsRegistry(snapshot: () => readonly MetricsRow[]): Registry {
  const registry = new Registry();
  const labelNames = ['mapping', 'protocol'] as const;
  for (const def of MAPPING_METRICS) {
    const collect = function (this: Counter<'mapping' | 'protocol'> | Gauge<'mapping' | 'protocol'>): void {
      this.reset();
      for (const row of snapshot()) {
        if (def.protocol !== 'any' && row.stats.protocol !== def.protocol) continue;
        this.inc({ mapping: row.mapping, protocol: row.stats.protocol }, def.value(row.stats));
      }
    };
    const config = { name: def.name, help: def.help, labelNames, registers: [registry], collect };
    if (def.type === 'counter') new Counter(config);
    else new Gauge(config);
  }
  new Counter({
    ...DROPS_METRIC,
    labelNames: ['mapping', 'protocol', 'reason'] as const,
    registers: [registry],
    collect(): void {
      this.reset();
      for (const row of snapshot()) {
        if (row.stats.protocol !== 'udp') continue;
        for (const [reason, n] of Object.entries(row.stats.drops)) this.inc({ mapping: row.mapping, protocol: 'udp', reason }, n);
      }
    },
  });
  // The standard process_* and nodejs_* metrics under their usual names (open/max fds, resident
  // memory, heap, event-loop lag, …): dashboards for Node services expect them unprefixed.
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** Parses `HOST:PORT` / `[IPv6]:PORT` (a literal IP; port 0 picks a free one). */
export function parseMetricsAddress(text: string): { host: string; port: number } {
  const bad = (why: string): PortferryError =>
    new PortferryError('PF_METRICS_ADDRESS', `metrics address "${text}": ${why}; expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464`, { details: { address: text } });
  const m = /^\[([^\]]*)\]:([^:]*)$/.exec(text) ?? /^([^:[\]]*):([^:]*)$/.exec(text);
  if (m === null) {
    if (/^[^[]*:.*:/.test(text)) throw bad('an IPv6 address must be written in brackets');
    throw bad(text.includes(':') ? 'it is not of that form' : 'the port is missing');
  }
  const [, hostText = '', portText = ''] = m;
  if (hostText === '') throw bad('the host is missing (0.0.0.0 serves every IPv4 address, [::] every address)');
  const host = canonicalIP(hostText);
  if (host === null) throw bad(`"${hostText}" is not an IP address (host names are not resolved)`);
  if (host.includes(':') !== text.startsWith('[')) throw bad('only an IPv6 address goes in brackets');
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw bad(`"${portText}" is not a port from 0 to 65535`);
  return { host, port: Number(portText) };
}

function listenError(err: unknown, host: string, port: number): PortferryError {
  return bindFailure(err, { ip: host, port }, { lead: `cannot serve metrics on ${formatHostPort(host, port)}`, instead: 'give --metrics another port' });
}

/** Serves the registry at GET /metrics until close(). Rejects with a coded error when it cannot bind. */
export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  let rows: readonly MetricsRow[] = [];
  const registry = createMetricsRegistry(() => rows);
  // One scrape at a time: each reads the one snapshot its collect() returned.
  let queue: Promise<unknown> = Promise.resolve();
  const scrape = (): Promise<string> => {
    const next = queue.then(async () => {
      rows = await opts.collect();
      try {
        return await registry.metrics();
      } finally {
        rows = [];
      }
    });
    queue = next.catch(() => {});
    return next;
  };
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Allow: 'GET, HEAD' }).end('use GET\n');
      return;
    }
    scrape().then(
      (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
      (err: unknown) => {
        opts.logger.warn({ err }, 'metrics: collecting the figures failed');
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('collecting the metrics failed; see the portferry log\n');
      },
    );
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(listenError(err, opts.host, opts.port)));
    server.listen({ host: opts.host, port: opts.port, exclusive: true }, () => resolve());
  });
  const bound = server.address();
  const address = typeof bound === 'object' && bound !== null ? { ip: bound.address, port: bound.port } : { ip: opts.host, port: opts.port };
  opts.logger.info({ metrics: `http://${formatHostPort(address.ip, address.port)}/metrics` }, 'metrics: serving');
  let closed: Promise<void> | undefined;
  return {
    address,
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}
