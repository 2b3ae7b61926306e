// The peer forwarders the bench measures portferry against: haproxy (splice), nginx stream,
// docker-proxy, socat, and the naive Node proxy (bench/naive-proxy.mjs). Each is its own process
// tree in the host namespace, started from a config we write, ready when it listens or says so.
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NGINX_STREAM_MODULE, nofileLimit, packageRoot, which, withNofile } from './env.js';
import { BACKEND, Forwarder, START_TIMEOUT_MS, hostPorts, running, startChecked, waitLine, waitListening, type PathDef } from './path-kit.js';
import { LineReader } from './proc.js';

const socat: PathDef = {
  name: 'socat',
  unavailable: () => (which('socat') === null ? 'not installed (apt-get install -y socat)' : null),
  describe: () => 'socat, one process per port, `fork` (a process per connection, per UDP client)',
  start: async ({ topology }) => {
    const p = hostPorts('socat');
    const ctr = topology.addrs.ctr4;
    const spawn = (args: string[]): ChildProcess => topology.spawn('host', ...withNofile(['socat', ...args]), { stdio: ['ignore', 'ignore', 'pipe'] });
    const fw = new Forwarder('socat', [
      spawn([`TCP4-LISTEN:${p.bulk},fork,reuseaddr,backlog=4096`, `TCP4:${ctr}:${BACKEND.bulkPort}`]),
      spawn([`TCP4-LISTEN:${p.tcp},fork,reuseaddr,backlog=4096`, `TCP4:${ctr}:${BACKEND.tcpPort}`]),
      spawn(['-T', '90', `UDP4-LISTEN:${p.udp},fork,reuseaddr`, `UDP4:${ctr}:${BACKEND.udpPort}`]),
    ]);
    await startChecked(fw, () => waitListening(topology, fw, [p.bulk, p.tcp], [p.udp]));
    return running('socat', topology, fw, { idle: 'socat forks one process per connection; thousands of idle connections would be thousands of processes' });
  },
};

/**
 * haproxy refuses to start when its descriptor need (about 2 per connection, plus 2 per splice
 * pipe for a quarter of them) exceeds the limit: size maxconn to the limit we can give it.
 */
function haproxyMaxconn(): number {
  return Math.floor((nofileLimit() - 100) / 2.5);
}

let spliceSupport: boolean | null = null;
function haproxyHasSplice(): boolean {
  if (spliceSupport === null) {
    const r = spawnSync('haproxy', ['-vv'], { encoding: 'utf8' });
    spliceSupport = /\+LINUX_SPLICE/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
  }
  return spliceSupport;
}

/** haproxy as its docs advise for TCP relaying: splice(2) between the sockets (`option splice-auto`). */
const haproxySplice: PathDef = {
  name: 'haproxy-splice',
  unavailable: () => (which('haproxy') === null ? 'not installed (apt-get install -y haproxy)' : !haproxyHasSplice() ? 'this haproxy is built without splice (no +LINUX_SPLICE in haproxy -vv)' : null),
  describe: () => `haproxy, mode tcp, option splice-auto (kernel splice between the sockets when it pays), maxconn ${haproxyMaxconn()} (what the descriptor limit allows), default threads; no UDP`,
  start: async ({ topology, workDir }) => {
    const p = hostPorts('haproxy-splice');
    const ctr = topology.addrs.ctr4;
    const cfg = join(workDir, 'haproxy.cfg');
    const fe = (name: string, port: number, backendPort: number): string =>
      `frontend f_${name}\n  bind 0.0.0.0:${port}\n  default_backend b_${name}\nbackend b_${name}\n  server s1 ${ctr}:${backendPort}\n`;
    writeFileSync(
      cfg,
      `global\n  maxconn ${haproxyMaxconn()}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  option splice-auto\n` +
        fe('bulk', p.bulk, BACKEND.bulkPort) +
        fe('tcp', p.tcp, BACKEND.tcpPort),
    );
    const fw = new Forwarder('haproxy', [topology.spawn('host', ...withNofile(['haproxy', '-db', '-f', cfg]), { stdio: ['ignore', 'ignore', 'pipe'] })]);
    await startChecked(fw, () => waitListening(topology, fw, [p.bulk, p.tcp], []));
    const noUdp = 'haproxy does not forward UDP';
    return running('haproxy-splice', topology, fw, { 'udp-64': noUdp, 'udp-1400': noUdp });
  },
};

const nginx: PathDef = {
  name: 'nginx',
  unavailable: () => (which('nginx') === null ? 'not installed (apt-get install -y nginx libnginx-mod-stream)' : !existsSync(NGINX_STREAM_MODULE) ? `no stream module at ${NGINX_STREAM_MODULE} (apt-get install -y libnginx-mod-stream)` : null),
  describe: () => 'nginx stream module, worker_processes auto (master + workers)',
  start: async ({ topology, workDir }) => {
    const p = hostPorts('nginx');
    const ctr = topology.addrs.ctr4;
    const conf = join(workDir, 'nginx.conf');
    writeFileSync(
      conf,
      `load_module ${NGINX_STREAM_MODULE};\ndaemon off;\nworker_processes auto;\nworker_rlimit_nofile ${nofileLimit()};\npid ${join(workDir, 'nginx.pid')};\nerror_log stderr warn;\n` +
        `events { worker_connections ${Math.min(30_000, nofileLimit())}; }\nstream {\n` +
        `  server { listen ${p.bulk}; proxy_pass ${ctr}:${BACKEND.bulkPort}; }\n` +
        `  server { listen ${p.tcp} backlog=4096; proxy_pass ${ctr}:${BACKEND.tcpPort}; }\n` +
        `  server { listen ${p.udp} udp; proxy_pass ${ctr}:${BACKEND.udpPort}; proxy_timeout 90s; }\n}\n`,
    );
    const fw = new Forwarder('nginx', [topology.spawn('host', ...withNofile(['nginx', '-p', workDir, '-e', 'stderr', '-c', conf]), { stdio: ['ignore', 'ignore', 'pipe'] })]);
    await startChecked(fw, () => waitListening(topology, fw, [p.bulk, p.tcp], [p.udp]));
    return running('nginx', topology, fw);
  },
};

const dockerProxy: PathDef = {
  name: 'docker-proxy',
  unavailable: ({ dockerProxy: bin }) =>
    bin === null ? 'not found (the Debian docker.io package ships it; `portferry bench --install-peers` extracts only docker-proxy from it, or pass --docker-proxy PATH)' : null,
  describe: ({ dockerProxy: bin }) => `docker-proxy (${bin ?? 'missing'}), one process per port, as dockerd starts it`,
  start: async ({ topology, dockerProxy: bin }) => {
    if (bin === null) throw new Error('docker-proxy not found');
    const p = hostPorts('docker-proxy');
    const ctr = topology.addrs.ctr4;
    const spawn = (proto: string, hostPort: number, ctrPort: number): ChildProcess =>
      topology.spawn('host', ...withNofile([bin, '-proto', proto, '-host-ip', '0.0.0.0', '-host-port', String(hostPort), '-container-ip', ctr, '-container-port', String(ctrPort)]),
        { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] },
      );
    const children = [spawn('tcp', p.bulk, BACKEND.bulkPort), spawn('tcp', p.tcp, BACKEND.tcpPort), spawn('udp', p.udp, BACKEND.udpPort)];
    const fw = new Forwarder('docker-proxy', children);
    await startChecked(fw, async () => {
      // Readiness as dockerd reads it: "0\n" on fd 3, or "1\n<message>".
      for (const c of children) {
        const line = await new LineReader(c.stdio[3] as NodeJS.ReadableStream).waitFor(() => true, START_TIMEOUT_MS);
        if (line !== '0') throw new Error(`docker-proxy did not report ready on fd 3: ${line ?? fw.health() ?? 'nothing within 15 s'}`);
      }
    });
    return running('docker-proxy', topology, fw);
  },
};

const NAIVE_SCRIPT = (): string => join(packageRoot(), 'bench', 'naive-proxy.mjs');

/** The ten-line Node proxy (net.createServer + pipe, a dgram forwarder): the baseline any Node user could write. */
const naive: PathDef = {
  name: 'naive',
  unavailable: () => (existsSync(NAIVE_SCRIPT()) ? null : `missing ${NAIVE_SCRIPT()}`),
  describe: () => `naive Node proxy (bench/naive-proxy.mjs, node ${process.version}): net.createServer + pipe() both ways; UDP: a socket per client, unconnected send`,
  start: async ({ topology }) => {
    const p = hostPorts('naive');
    const ctr = topology.addrs.ctr4;
    const specs = [`tcp:${p.bulk}:${ctr}:${BACKEND.bulkPort}`, `tcp:${p.tcp}:${ctr}:${BACKEND.tcpPort}`, `udp:${p.udp}:${ctr}:${BACKEND.udpPort}`];
    const child = topology.spawn('host', ...withNofile([process.execPath, NAIVE_SCRIPT(), ...specs]), { stdio: ['ignore', 'pipe', 'pipe'] });
    const fw = new Forwarder('naive', [child]);
    await startChecked(fw, () => waitLine(fw, new LineReader(child.stdout), (l) => l === 'ready', '"ready"'));
    return running('naive', topology, fw);
  },
};

export const PEERS = { 'haproxy-splice': haproxySplice, nginx, 'docker-proxy': dockerProxy, naive, socat } as const;
