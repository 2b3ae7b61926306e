// Real PROXY protocol receivers on loopback, for tests: nginx (stream, TCP), haproxy (HTTP frontend,
// TCP) and unbound (DNS over UDP with PROXY v2). Each runs in the foreground from a generated config
// in its own temp dir (no root-owned paths), is ready when its port answers (polled, bounded), and
// is stopped by its PID. Each receiver replies with the client address it took from the header, so
// a test can check it byte for byte.
//
// Typical use (register the teardown right away):
//   const nginx = await startNginxProxyReceiver();
//   t.teardown(() => nginx.stop());
//   const reply = await tcpExchange({ host: nginx.host, port: nginx.port, data: header });
//   t.same(parseAddressLine(reply.data.toString()), { ip: '127.0.0.23', port: 40001 });
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import dgram from 'node:dgram';
import type { Endpoint } from '../../src/api.js';
import { buildProxyHeader } from '../../src/proxy/proxy-header.js';

export const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

export interface Receiver {
  readonly kind: 'nginx' | 'haproxy' | 'unbound';
  /** The address it listens on (`127.0.0.1` or `::1`). */
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  /** Its temp dir (config, pid file, logs). Removed by stop(). */
  readonly dir: string;
  /** What it printed so far (stdout and stderr), for failure messages. */
  output(): string;
  /** Stop it by PID (SIGTERM, SIGKILL after 5 s) and remove its temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface ReceiverOptions {
  /** The loopback address to listen on: `127.0.0.1` (default) or `::1`. */
  readonly host?: string;
}

// Children still running when this process exits are killed (by PID) so a crashed test leaves none.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) {
    if (child.pid === undefined || child.exitCode !== null) continue;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const BIND_ATTEMPTS = 3;

/** nginx stream server with `listen … proxy_protocol` replying `$proxy_protocol_addr:$proxy_protocol_port\n`, then closing. */
export async function startNginxProxyReceiver(options: ReceiverOptions = {}): Promise<Receiver> {
  const host = options.host ?? '127.0.0.1';
  if (!existsSync(NGINX_STREAM_MODULE)) {
    throw new Error(`${NGINX_STREAM_MODULE} is missing: install the nginx stream module (apt-get install -y libnginx-mod-stream, or run test/setup.sh as root)`);
  }
  return startReceiver('nginx', host, 'tcp', async (dir, port) => {
    const conf = join(dir, 'nginx.conf');
    await writeFile(
      conf,
      [
        `load_module ${NGINX_STREAM_MODULE};`,
        // One process, so the PID we hold is the whole server.
        'master_process off;',
        'worker_processes 1;',
        'events { worker_connections 64; }',
        'stream {',
        '  server {',
        `    listen ${hostPort(host, port)} proxy_protocol;`,
        '    return "$proxy_protocol_addr:$proxy_protocol_port\\n";',
        '  }',
        '}',
        '',
      ].join('\n'),
    );
    return {
      command: 'nginx',
      args: ['-p', `${dir}/`, '-c', conf, '-e', join(dir, 'error.log'), '-g', `daemon off; pid ${join(dir, 'nginx.pid')};`],
    };
  });
}

/**
 * haproxy with `bind … accept-proxy` on an HTTP frontend that answers every request with
 * `src:src_port\nunique-id=HEX\n` (HEX: the PP2 UNIQUE_ID TLV, empty without one). haproxy 2.6 checks a
 * PP2_TYPE_CRC32C TLV whenever one is present (no option needed) and closes the connection on a
 * mismatch. Send `HAPROXY_REQUEST` after the header.
 */
export function startHaproxyReceiver(options: ReceiverOptions = {}): Promise<Receiver> {
  const host = options.host ?? '127.0.0.1';
  return startReceiver('haproxy', host, 'tcp', async (dir, port) => {
    const conf = join(dir, 'haproxy.cfg');
    await writeFile(
      conf,
      [
        'global',
        '  maxconn 256',
        'defaults',
        '  mode http',
        '  timeout connect 5s',
        '  timeout client 10s',
        '  timeout server 10s',
        'frontend receiver',
        `  bind ${hostPort(host, port)} accept-proxy`,
        '  http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]\\nunique-id=%[fc_pp_unique_id,hex]\\n"',
        '',
      ].join('\n'),
    );
    // -db: stay in the foreground, one process.
    return { command: 'haproxy', args: ['-db', '-f', conf] };
  });
}

export interface UnboundReceiver extends Receiver {
  /** A name it answers with an A record. */
  readonly name: string;
  /** That record's address. */
  readonly answer: string;
  /** The client address its access control allows. */
  readonly allowed: string;
  /** A client address its access control refuses (REFUSED, rcode 5). */
  readonly refused: string;
}

/**
 * unbound on `127.0.0.1@PORT` with `proxy-protocol-port` (PROXY v2 on every datagram), a
 * local-data record, and access control that allows `allowed` and refuses every other address.
 * unbound 1.17 checks access control against BOTH the sender of the datagram (the proxy) and the
 * source in the PROXY header, so the proxy's own address (127.0.0.1, ::1) is allowed too.
 */
export async function startUnboundProxyReceiver(
  options: { readonly allowed?: string; readonly refused?: string } = {},
): Promise<UnboundReceiver> {
  const allowed = options.allowed ?? '127.0.0.23';
  const refused = options.refused ?? '127.0.0.24';
  const name = 'probe.portferry.test';
  const answer = '192.0.2.7';
  const host = '127.0.0.1';
  const receiver = await startReceiver(
    'unbound',
    host,
    'udp',
    async (dir, port) => {
      const conf = join(dir, 'unbound.conf');
      await writeFile(
        conf,
        [
          'server:',
          '  verbosity: 1',
          '  use-syslog: no',
          '  logfile: ""',
          '  do-daemonize: no',
          '  chroot: ""',
          '  username: ""',
          `  directory: "${dir}"`,
          `  pidfile: "${join(dir, 'unbound.pid')}"`,
          `  interface: ${host}@${port}`,
          `  proxy-protocol-port: ${port}`,
          '  do-ip6: no',
          '  do-tcp: no',
          '  num-threads: 1',
          '  so-reuseport: no',
          '  module-config: "iterator"',
          '  access-control: 0.0.0.0/0 refuse',
          '  access-control: ::0/0 refuse',
          '  access-control: 127.0.0.1/32 allow',
          '  access-control: ::1/128 allow',
          `  access-control: ${allowed} allow`,
          `  access-control: ${refused} refuse`,
          `  local-zone: "portferry.test." static`,
          `  local-data: "${name}. 60 IN A ${answer}"`,
          'remote-control:',
          '  control-enable: no',
          '',
        ].join('\n'),
      );
      return { command: 'unbound', args: ['-d', '-c', conf] };
    },
    // Ready when it answers a query carrying a PROXY v2 header from the allowed address.
    async (port) => {
      const header = buildProxyHeader({
        version: 'v2',
        transport: 'dgram',
        source: { ip: allowed, port: 40000 },
        destination: { ip: host, port },
      });
      const reply = await udpExchange({ host, port, data: Buffer.concat([header, dnsQuery(name, 1)]), timeoutMs: 250 });
      return reply !== null;
    },
  );
  return Object.assign(receiver, { name, answer, allowed, refused });
}

// -- client-side helpers --

/** The request to send to the haproxy receiver after the PROXY header. */
export const HAPROXY_REQUEST = Buffer.from('GET / HTTP/1.0\r\nHost: receiver\r\n\r\n', 'latin1');

export interface TcpExchangeResult {
  /** Everything the server sent before closing. */
  readonly data: Buffer;
  /** The error code (ECONNRESET …) if the connection ended with an error, else undefined. */
  readonly error?: string;
}

/**
 * Connect, write `data` in ONE write, read until the server closes. Bounded by `timeoutMs`
 * (default 5 s): a server that never closes is an error ('ETIMEDOUT'), not a hang.
 */
export function tcpExchange(o: {
  readonly host: string;
  readonly port: number;
  readonly data: Buffer;
  readonly localAddress?: string;
  readonly localPort?: number;
  readonly timeoutMs?: number;
}): Promise<TcpExchangeResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = net.connect({
      host: o.host,
      port: o.port,
      ...(o.localAddress === undefined ? {} : { localAddress: o.localAddress }),
      ...(o.localPort === undefined ? {} : { localPort: o.localPort }),
    });
    socket.setTimeout(o.timeoutMs ?? 5_000, () => {
      error = 'ETIMEDOUT';
      socket.destroy();
    });
    socket.on('connect', () => socket.write(o.data));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error ??= e.code ?? e.message;
    });
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), ...(error === undefined ? {} : { error }) }));
  });
}

/** Send one datagram and wait for one reply; null when none came within `timeoutMs` (default 2 s). */
export function udpExchange(o: {
  readonly host: string;
  readonly port: number;
  readonly data: Buffer;
  readonly localAddress?: string;
  readonly timeoutMs?: number;
}): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(net.isIPv6(o.host) ? 'udp6' : 'udp4');
    let done = false;
    const finish = (reply: Buffer | null, err?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.close();
      if (err !== undefined) reject(err);
      else resolve(reply);
    };
    const timer = setTimeout(() => finish(null), o.timeoutMs ?? 2_000);
    socket.on('message', (msg) => finish(msg));
    socket.on('error', (e) => finish(null, e));
    socket.bind({ port: 0, ...(o.localAddress === undefined ? {} : { address: o.localAddress }) }, () => {
      socket.send(o.data, o.port, o.host);
    });
  });
}

/** `ip:port` as nginx and haproxy print it (IPv6 without brackets) → an Endpoint; null if it is not one. */
export function parseAddressLine(line: string): Endpoint | null {
  const m = /^(.+):(\d+)$/.exec(line.trim());
  if (m === null || m[1] === undefined || m[2] === undefined || net.isIP(m[1]) === 0) return null;
  return { ip: m[1], port: Number(m[2]) };
}

/** The haproxy receiver's reply: HTTP status, the client address, the UNIQUE_ID TLV (lower-case hex, '' if none). */
export function parseHaproxyReply(reply: Buffer): { status: number; source: Endpoint | null; uniqueId: string } | null {
  const text = reply.toString('latin1');
  const status = /^HTTP\/1\.[01] (\d{3}) /.exec(text);
  const split = text.indexOf('\r\n\r\n');
  if (status === null || status[1] === undefined || split === -1) return null;
  const [addressLine = '', uniqueLine = ''] = text.slice(split + 4).split('\n');
  return {
    status: Number(status[1]),
    source: parseAddressLine(addressLine),
    uniqueId: uniqueLine.replace(/^unique-id=/, '').toLowerCase(),
  };
}

/** A minimal DNS query: one question, type A, class IN, recursion desired. */
export function dnsQuery(name: string, id: number): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4); // QDCOUNT
  const labels = name
    .split('.')
    .filter((l) => l !== '')
    .map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')]));
  const question = Buffer.from([0, 0, 1, 0, 1]); // root label, QTYPE A, QCLASS IN
  return Buffer.concat([header, ...labels, question]);
}

/** The parts of a DNS reply the tests need: id, rcode, and the A records of the answer section. */
export function parseDnsReply(msg: Buffer): { id: number; isResponse: boolean; rcode: number; answers: string[] } {
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  const qdcount = msg.readUInt16BE(4);
  const ancount = msg.readUInt16BE(6);
  let off = 12;
  const skipName = (): void => {
    for (;;) {
      const len = msg[off] ?? 0;
      if ((len & 0xc0) === 0xc0) {
        off += 2;
        return;
      }
      off += 1 + len;
      if (len === 0) return;
    }
  };
  for (let i = 0; i < qdcount; i++) {
    skipName();
    off += 4;
  }
  const answers: string[] = [];
  for (let i = 0; i < ancount; i++) {
    skipName();
    const type = msg.readUInt16BE(off);
    const rdlength = msg.readUInt16BE(off + 8);
    if (type === 1 && rdlength === 4) answers.push([...msg.subarray(off + 10, off + 14)].join('.'));
    off += 10 + rdlength;
  }
  return { id, isResponse: (flags & 0x8000) !== 0, rcode: flags & 0x000f, answers };
}

// -- process plumbing --

interface Launch {
  readonly command: string;
  readonly args: readonly string[];
}

function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A port free right now on `host` (bind port 0, read it, release it). */
function freePort(host: string, kind: 'tcp' | 'udp'): Promise<number> {
  return new Promise((resolve, reject) => {
    if (kind === 'tcp') {
      const server = net.createServer();
      server.once('error', reject);
      server.listen({ host, port: 0, exclusive: true }, () => {
        const port = (server.address() as net.AddressInfo).port;
        server.close(() => resolve(port));
      });
    } else {
      const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
      socket.once('error', reject);
      socket.bind({ address: host, port: 0, exclusive: true }, () => {
        const port = socket.address().port;
        socket.close(() => resolve(port));
      });
    }
  });
}

/** True when a TCP connection to host:port succeeds (then closed at once). */
function tcpAccepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function startReceiver(
  kind: Receiver['kind'],
  host: string,
  proto: 'tcp' | 'udp',
  configure: (dir: string, port: number) => Promise<Launch>,
  isReady: (port: number) => Promise<boolean> = (port) => tcpAccepts(host, port),
): Promise<Receiver> {
  let lastError: Error | undefined;
  for (let attempt = 1; attempt <= BIND_ATTEMPTS; attempt++) {
    const dir = await mkdtemp(join(tmpdir(), `pf-${kind}-`));
    const port = await freePort(host, proto);
    const launch = await configure(dir, port);
    const started = await launch1(kind, host, port, dir, launch, isReady).catch((e: unknown) => e as Error);
    if (!(started instanceof Error)) return started;
    await rm(dir, { recursive: true, force: true });
    lastError = started;
    // Someone took the port between our probe and the receiver's bind: try another one.
    if (!/in use/i.test(started.message)) break;
  }
  throw lastError ?? new Error(`${kind} did not start`);
}

async function launch1(
  kind: Receiver['kind'],
  host: string,
  port: number,
  dir: string,
  launch: Launch,
  isReady: (port: number) => Promise<boolean>,
): Promise<Receiver> {
  const child = spawn(launch.command, launch.args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let output = '';
  const collect = (chunk: Buffer): void => {
    if (output.length < 64 * 1024) output += chunk.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      live.delete(child);
      resolve();
    });
    child.once('error', (e) => {
      output += `\nspawn ${launch.command}: ${e.message}`;
      live.delete(child);
      resolve();
    });
  });
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  const describe = (): string =>
    `${kind} on ${hostPort(host, port)} (${launch.command} ${launch.args.join(' ')})\n--- output ---\n${output.trim()}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let gone = false;
  void exited.then(() => (gone = true));
  for (;;) {
    if (gone) throw new Error(`${kind} exited before it was ready: ${describe()}`);
    if (await isReady(port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${kind} not ready after ${READY_TIMEOUT_MS} ms: ${describe()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  if (gone || child.pid === undefined) throw new Error(`${kind} exited right after it answered: ${describe()}`);
  return { kind, host, port, pid: child.pid, dir, output: () => output, stop };
}
