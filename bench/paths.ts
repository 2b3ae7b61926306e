// The data paths under test: how each is started in the host namespace, where its load is aimed,
// how it is stopped. Every forwarder is a separate process tree; kernel paths are rules applied
// with our own rules module and deleted again.
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Topology } from '../src/netns/topology.js';
import { applyRules, deleteRules, fromCniPortMappings, parseContainerCidr, prefixedRunner, type Backend, type CommandRunner } from '../src/rules/index.js';
import { NGINX_STREAM_MODULE, findDockerProxy, nofileLimit, packageRoot, portferryVersion, which, withNofile } from './env.js';
import { LineReader, alive, stopTree } from './proc.js';
import { PATH_NAMES, type PathName, type WorkloadId } from './types.js';
import type { Target } from './workloads.js';

/** What runs in the container namespace. */
export const BACKEND = { bulkPort: 5201, tcpPort: 7000, udpPort: 7001 } as const;

export interface PathEnv {
  readonly topology: Topology;
  /** A private directory for config files. */
  readonly workDir: string;
  readonly dockerProxy: string | null;
}

export interface RunningPath {
  readonly name: PathName;
  readonly targets: { readonly client: Target; readonly local: Target };
  /** The forwarder's process roots (for CPU and memory); null for paths without a forwarder. */
  readonly forwarderPids: readonly number[] | null;
  /** Why this path cannot run a workload at all (the cell is n/a), or undefined. */
  skip(w: WorkloadId): string | undefined;
  /** Why the path is broken right now (its forwarder exited), or null. */
  health(): string | null;
  stop(): Promise<void>;
}

export interface PathDef {
  readonly name: PathName;
  /** Why it cannot run on this machine (with what to install), or null. */
  unavailable(env: { readonly dockerProxy: string | null }): string | null;
  describe(env: { readonly dockerProxy: string | null }): string;
  start(env: PathEnv): Promise<RunningPath>;
}

/** Host ports of a path: three consecutive ports per path, fixed, inside our own namespace only. */
export function hostPorts(name: PathName): { bulk: number; tcp: number; udp: number } {
  const base = 20000 + PATH_NAMES.indexOf(name) * 10;
  return { bulk: base, tcp: base + 1, udp: base + 2 };
}

function targetsFor(topology: Topology, name: PathName): { client: Target; local: Target } {
  const p = hostPorts(name);
  return {
    client: { ns: 'client', ip: topology.addrs.hostClient4, bulkPort: p.bulk, tcpPort: p.tcp, udpPort: p.udp },
    local: { ns: 'host', ip: '127.0.0.1', bulkPort: p.bulk, tcpPort: p.tcp, udpPort: p.udp },
  };
}

const START_TIMEOUT_MS = 15_000;

/** A forwarder made of processes we spawned: liveness, tail of its stderr, stop by PID. */
class Forwarder {
  readonly stderr: LineReader[] = [];
  constructor(
    readonly name: string,
    readonly children: readonly ChildProcess[],
  ) {
    for (const c of children) this.stderr.push(new LineReader(c.stderr));
  }
  get pids(): number[] {
    return this.children.flatMap((c) => (c.pid === undefined ? [] : [c.pid]));
  }
  health(): string | null {
    for (const [i, c] of this.children.entries()) {
      if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null || !alive(c.pid)) {
        const tail = (this.stderr[i]?.lines ?? []).slice(-3).join(' / ').slice(0, 300);
        return `the ${this.name} process exited (${c.exitCode ?? c.signalCode ?? 'not started'})${tail === '' ? '' : `: ${tail}`}`;
      }
    }
    return null;
  }
  stop(): Promise<void> {
    return stopTree(this.pids);
  }
}

/** Waits until every port is listening in the host namespace (ss), or a process died. */
async function waitListening(topology: Topology, fw: Forwarder, tcp: readonly number[], udp: readonly number[]): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  const listening = async (flag: string, ports: readonly number[]): Promise<boolean> => {
    if (ports.length === 0) return true;
    const { stdout } = await topology.exec('host', 'ss', ['-Hln', flag]);
    return ports.every((p) => new RegExp(`:${p}\\s`).test(stdout));
  };
  for (;;) {
    const dead = fw.health();
    if (dead !== null) throw new Error(dead);
    if ((await listening('-t', tcp)) && (await listening('-u', udp))) return;
    if (Date.now() > deadline) throw new Error(`${fw.name} did not listen on ${[...tcp, ...udp].join(', ')} within ${START_TIMEOUT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function running(name: PathName, topology: Topology, fw: Forwarder | null, skips: Partial<Record<WorkloadId, string>> = {}, stopExtra?: () => Promise<void>): RunningPath {
  return {
    name,
    targets: targetsFor(topology, name),
    forwarderPids: fw === null ? null : fw.pids,
    skip: (w) => skips[w],
    health: () => (fw === null ? null : fw.health()),
    stop: async () => {
      await fw?.stop();
      await stopExtra?.();
    },
  };
}

async function startChecked(fw: Forwarder, ready: () => Promise<void>): Promise<Forwarder> {
  try {
    await ready();
  } catch (err) {
    await fw.stop();
    throw err;
  }
  return fw;
}

// -- the paths --------------------------------------------------------------------------------------

const direct: PathDef = {
  name: 'direct',
  unavailable: () => null,
  describe: () => 'no forwarder: the client talks to the container address, routed by the host namespace (the ceiling)',
  start: async ({ topology }) => {
    const ctr = topology.addrs.ctr4;
    const t = (ns: 'client' | 'host'): Target => ({ ns, ip: ctr, bulkPort: BACKEND.bulkPort, tcpPort: BACKEND.tcpPort, udpPort: BACKEND.udpPort });
    return { name: 'direct', targets: { client: t('client'), local: t('host') }, forwarderPids: null, skip: () => undefined, health: () => null, stop: async () => {} };
  },
};

/** portferry as users run it: one process, or TCP spread over `workers` processes (`--workers`). */
function portferryPath(name: 'portferry' | 'portferry-2w', workers: number): PathDef {
  return {
    name,
    unavailable: () => (existsSync(join(packageRoot(), 'dist', 'cli', 'main.js')) ? null : 'not built: run `npm run build`'),
    describe: () =>
      workers === 1
        ? `portferry ${portferryVersion()} (this build, node ${process.version}), one process, \`portferry run -p …\``
        : `portferry ${portferryVersion()} (this build), \`portferry run --workers ${workers} -p …\`: TCP in ${workers} worker processes sharing each listening socket, UDP in the main process`,
    start: async ({ topology }) => {
      const p = hostPorts(name);
      const ctr = topology.addrs.ctr4;
      const bin = join(packageRoot(), 'bin', 'portferry.js');
      const argv = [process.execPath, bin, 'run', '--workers', String(workers), '-p', `0.0.0.0:${p.bulk}:${ctr}:${BACKEND.bulkPort}`, '-p', `0.0.0.0:${p.tcp}:${ctr}:${BACKEND.tcpPort}`, '-p', `0.0.0.0:${p.udp}:${ctr}:${BACKEND.udpPort}/udp`, '--drain-timeout', '100ms', '--log-level', 'info'];
      const child = topology.spawn('host', ...withNofile(argv), { stdio: ['ignore', 'ignore', 'pipe'] });
      const fw = new Forwarder(name, [child]);
      await startChecked(fw, async () => {
        const line = await fw.stderr[0]?.waitFor((l) => l.includes('"msg":"ready"') || l.includes('PF_'), START_TIMEOUT_MS);
        if (line === null || line === undefined || !line.includes('"msg":"ready"')) throw new Error(fw.health() ?? `portferry did not log ready within ${START_TIMEOUT_MS / 1000} s${line ? `: ${line}` : ''}`);
      });
      return running(name, topology, fw);
    },
  };
}

function kernelPath(backend: Backend): PathDef {
  const tool = backend === 'iptables' ? 'iptables-restore' : 'nft';
  const pkg = backend === 'iptables' ? 'iptables' : 'nftables';
  return {
    name: backend,
    unavailable: () => (which(tool) === null ? `${tool} is not installed (apt-get install -y ${pkg})` : null),
    describe: () => `kernel DNAT: the CNI portmap plugin's ${backend === 'iptables' ? 'iptables chains' : 'nftables cni_hostport table'} (snat on), applied by portferry's rules module, deleted afterwards`,
    start: async ({ topology }) => {
      const p = hostPorts(backend);
      const runner: CommandRunner = prefixedRunner(['nsenter', `--net=${topology.paths.host as string}`, '--']);
      const who = { network: 'pfbench', containerID: `bench-${backend}` };
      const input = fromCniPortMappings({
        ...who,
        containerNets: [parseContainerCidr(`${topology.addrs.ctr4}/${topology.addrs.ctrPrefix4}`, 'bench')],
        portMappings: [
          { hostPort: p.bulk, containerPort: BACKEND.bulkPort, protocol: 'tcp' },
          { hostPort: p.tcp, containerPort: BACKEND.tcpPort, protocol: 'tcp' },
          { hostPort: p.udp, containerPort: BACKEND.udpPort, protocol: 'udp' },
        ],
      });
      await applyRules(input, backend, runner);
      return running(backend, topology, null, {}, async () => {
        await deleteRules(who, backend, runner).catch(() => undefined);
      });
    },
  };
}

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
  return Math.floor((nofileLimit() - 100) / (haproxySplice() ? 2.5 : 2));
}

function haproxySplice(): boolean {
  const r = spawnSync('haproxy', ['-vv'], { encoding: 'utf8' });
  return /\+LINUX_SPLICE/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
}

const haproxy: PathDef = {
  name: 'haproxy',
  unavailable: () => (which('haproxy') === null ? 'not installed (apt-get install -y haproxy)' : null),
  describe: () => `haproxy, mode tcp${haproxySplice() ? ', option splice-auto' : ''}, maxconn ${haproxyMaxconn()} (what the descriptor limit allows), default threads (no UDP)`,
  start: async ({ topology, workDir }) => {
    const p = hostPorts('haproxy');
    const ctr = topology.addrs.ctr4;
    const cfg = join(workDir, 'haproxy.cfg');
    const fe = (name: string, port: number, backendPort: number): string =>
      `frontend f_${name}\n  bind 0.0.0.0:${port}\n  default_backend b_${name}\nbackend b_${name}\n  server s1 ${ctr}:${backendPort}\n`;
    writeFileSync(
      cfg,
      `global\n  maxconn ${haproxyMaxconn()}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n${haproxySplice() ? '  option splice-auto\n' : ''}` +
        fe('bulk', p.bulk, BACKEND.bulkPort) +
        fe('tcp', p.tcp, BACKEND.tcpPort),
    );
    const fw = new Forwarder('haproxy', [topology.spawn('host', ...withNofile(['haproxy', '-db', '-f', cfg]), { stdio: ['ignore', 'ignore', 'pipe'] })]);
    await startChecked(fw, () => waitListening(topology, fw, [p.bulk, p.tcp], []));
    const noUdp = 'haproxy does not forward UDP';
    return running('haproxy', topology, fw, { 'udp-64': noUdp, 'udp-1400': noUdp });
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

export const PATHS: Readonly<Record<PathName, PathDef>> = {
  direct,
  portferry: portferryPath('portferry', 1),
  'portferry-2w': portferryPath('portferry-2w', 2),
  iptables: kernelPath('iptables'),
  nftables: kernelPath('nftables'),
  'docker-proxy': dockerProxy,
  socat,
  haproxy,
  nginx,
};

export { findDockerProxy };
