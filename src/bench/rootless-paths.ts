// The rootless scenario's paths (`portferry bench --scenario rootless`): what each forwarder is,
// how it is started as the bench user against the rootless container (or the host side's
// loopback), and where its load goes. The run itself is in rootless.ts, the user, the containers
// and the ten-namespace world in rootless-host.ts.
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Topology } from '../netns/topology.js';
import type { BackendPorts, Backends } from './backends.js';
import { packageRoot, portferryVersion } from './env.js';
import { Forwarder, START_TIMEOUT_MS, waitListening, type RunningPath } from './path-kit.js';
import { containerHealth, execAsUser, spawnAsUser, type Container, type RootlessMachine } from './rootless-host.js';
import { ROOTLESS_PATH_NAMES, type RootlessPathName } from './types.js';
import type { SinkControl, Target } from './workloads.js';

/** Servers on the host side's loopback (the reference paths) and in every container. */
export const HOST_SERVERS: BackendPorts = { bulkPort: 15201, tcpPort: 17000, udpPort: 17001 };
/** What slirp4netns may hold between the container's sender and the host side's receiver. */
const SLIRP4NETNS_SLACK = 8 * 1024 ** 3;
export const CTR_SERVERS: BackendPorts = { bulkPort: 5201, tcpPort: 7000, udpPort: 7001 };

function hostPorts(name: RootlessPathName): { bulk: number; tcp: number; udp: number } {
  const base = 21000 + ROOTLESS_PATH_NAMES.indexOf(name) * 5;
  // pasta's 2023 build loses UDP replies when the host port differs from the container's: same port.
  return { bulk: base, tcp: base + 1, udp: name === 'pasta' ? CTR_SERVERS.udpPort : base + 2 };
}

export interface RootlessRunning extends RunningPath<RootlessPathName> {
  /** The UDP sink behind this path (the host side's or the container's). */
  readonly sink: SinkControl;
  /** RunContext.bulkSlackBytes for this path (absent: the runner's default). */
  readonly bulkSlackBytes?: number;
}

export interface World {
  readonly topology: Topology;
  readonly machine: RootlessMachine;
  readonly pfgen: string;
  readonly hostServers: Backends;
  /** Containers by port driver; `builtin` also serves pasta and portferry --netns. */
  readonly containers: Partial<Record<'builtin' | 'slirp4netns', Container>>;
  readonly baseline: string | null;
  readonly started: (c: ChildProcess) => void;
}

const NO_NAMESPACE = 'no namespace to serve';
const NETNS_10_ONLY_PORTFERRY: Partial<Record<RootlessPathName, string>> = {
  direct: NO_NAMESPACE,
  'portferry-loopback': NO_NAMESPACE,
  'rootlesskit-builtin': 'rootlesskit serves its own container only (one runtime per container)',
  'rootlesskit-slirp4netns': 'rootlesskit serves its own container only (one runtime per container)',
  pasta: 'pasta serves one namespace per process (ten namespaces: ten processes)',
};

function target(name: RootlessPathName, ports?: BackendPorts): { client: Target; local: Target } {
  const p = hostPorts(name);
  const t: Target = ports === undefined ? { ns: 'host', ip: '127.0.0.1', bulkPort: p.bulk, tcpPort: p.tcp, udpPort: p.udp } : { ns: 'host', ip: '127.0.0.1', ...ports };
  return { client: t, local: t };
}

function runningOf(name: RootlessPathName, fw: Forwarder | null, sink: SinkControl, extraHealth: () => string | null = () => null, targets = target(name), rootPids?: readonly number[]): RootlessRunning {
  return {
    name,
    targets,
    forwarderPids: rootPids ?? (fw === null ? null : fw.pids),
    sink,
    skip: (w) => (w === 'netns-10' ? NETNS_10_ONLY_PORTFERRY[name] : w === 'rss' && fw === null && rootPids === undefined ? 'no forwarder' : undefined),
    health: () => fw?.health() ?? extraHealth(),
    stop: async () => {
      await fw?.stop();
    },
  };
}

function portferryBin(world: World, base: boolean): string {
  return join(base ? (world.baseline as string) : packageRoot(), 'bin', 'portferry.js');
}

/** `portferry run` as the bench user; ready when it logs so. */
export async function startPortferry(world: World, name: string, base: boolean, args: readonly string[]): Promise<Forwarder> {
  const argv = [process.execPath, portferryBin(world, base), 'run', ...args, '--drain-timeout', '100ms', '--log-level', 'info'];
  const child = spawnAsUser(world.topology, world.machine, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  world.started(child);
  const fw = new Forwarder(name, [child]);
  const line = await fw.stderr[0]?.waitFor((l) => l.includes('"msg":"ready"') || l.includes('PF_'), START_TIMEOUT_MS);
  if (line === null || line === undefined || !line.includes('"msg":"ready"')) {
    await fw.stop();
    throw new Error(fw.health() ?? `portferry did not log ready within ${START_TIMEOUT_MS / 1000} s${line ? `: ${line}` : ''}`);
  }
  return fw;
}

function publish(p: { bulk: number; tcp: number; udp: number }, servers: BackendPorts): string[] {
  return ['-p', `127.0.0.1:${p.bulk}:127.0.0.1:${servers.bulkPort}`, '-p', `127.0.0.1:${p.tcp}:127.0.0.1:${servers.tcpPort}`, '-p', `127.0.0.1:${p.udp}:127.0.0.1:${servers.udpPort}/udp`];
}

function needContainer(world: World, driver: 'builtin' | 'slirp4netns'): Container {
  const c = world.containers[driver];
  if (c === undefined) throw new Error(`the rootless container (--port-driver=${driver}) did not start`);
  return c;
}

interface RootlessPathDef {
  describe(baseline: string | null): string;
  unavailable(baseline: string | null): string | null;
  start(world: World): Promise<RootlessRunning>;
}

export const ROOTLESS_PATHS: Readonly<Record<RootlessPathName, RootlessPathDef>> = {
  direct: {
    describe: () => "no forwarder: the client talks to servers on the same loopback (the ceiling); the host side's servers",
    unavailable: () => null,
    start: async (world) => runningOf('direct', null, world.hostServers.sink, () => null, target('direct', HOST_SERVERS)),
  },
  'portferry-loopback': {
    describe: () => `portferry ${portferryVersion()} (this build), its direct path on the host side's loopback (servers there too), as the unprivileged user: the reference for --netns`,
    unavailable: () => null,
    start: async (world) => {
      const fw = await startPortferry(world, 'portferry-loopback', false, publish(hostPorts('portferry-loopback'), HOST_SERVERS));
      return runningOf('portferry-loopback', fw, world.hostServers.sink);
    },
  },
  'portferry-netns': {
    describe: () => `portferry ${portferryVersion()} (this build), \`portferry run --netns /proc/PID/ns/net -p 127.0.0.1:HP:127.0.0.1:CP …\` as the container's user (it enters the user namespace itself); RSS includes its namespace helper`,
    unavailable: () => null,
    start: async (world) => startNetnsPortferry(world, 'portferry-netns', false),
  },
  'portferry-netns-base': {
    describe: (baseline) => (baseline === null ? 'another portferry build (--baseline DIR), --netns' : `portferry ${portferryVersion(baseline)} at ${baseline} (the baseline), --netns as portferry-netns`),
    unavailable: (baseline) => (baseline === null ? 'no baseline given (--baseline DIR: another built portferry checkout or package)' : null),
    start: async (world) => startNetnsPortferry(world, 'portferry-netns-base', true),
  },
  'rootlesskit-builtin': {
    describe: () => 'rootlesskit --port-driver=builtin (the parent listens, the child dials inside and passes the socket back), ports by `rootlessctl add-ports`; RSS is the whole runtime (rootlesskit parent and child, slirp4netns)',
    unavailable: () => null,
    start: async (world) => startRootlesskitPorts(world, 'rootlesskit-builtin', needContainer(world, 'builtin')),
  },
  'rootlesskit-slirp4netns': {
    describe: () => 'rootlesskit --port-driver=slirp4netns (slirp4netns forwards through its user-mode TCP/IP stack to the container\'s tap address), a runtime of its own; RSS is the whole runtime. Its stack acknowledges the container\'s data far ahead of delivering it, so the bulk check of sent vs received bytes does not bound it: the figure is what arrived',
    unavailable: () => null,
    start: async (world) => startRootlesskitPorts(world, 'rootlesskit-slirp4netns', needContainer(world, 'slirp4netns')),
  },
  pasta: {
    describe: () => `pasta attached to the container's namespaces as its user: \`pasta -f -q -4 --netns … --userns … -I pfpasta0 -t 127.0.0.1/HP:CP -u 127.0.0.1/${CTR_SERVERS.udpPort}:${CTR_SERVERS.udpPort} -T none -U none\` (TCP spliced into the namespace's loopback; UDP on the same port both sides, which the 2023 build needs)`,
    unavailable: () => null,
    start: async (world) => {
      const c = needContainer(world, 'builtin');
      const p = hostPorts('pasta');
      const argv = ['pasta', '-f', '-q', '-4', '--netns', c.netns, '--userns', c.userns, '-I', 'pfpasta0',
        '-t', `127.0.0.1/${p.bulk}:${CTR_SERVERS.bulkPort}`, '-t', `127.0.0.1/${p.tcp}:${CTR_SERVERS.tcpPort}`, '-u', `127.0.0.1/${p.udp}:${CTR_SERVERS.udpPort}`, '-T', 'none', '-U', 'none'];
      const child = spawnAsUser(world.topology, world.machine, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
      world.started(child);
      const fw = new Forwarder('pasta', [child]);
      try {
        await waitListening(world.topology, fw, [p.bulk, p.tcp], [p.udp]);
      } catch (err) {
        await fw.stop();
        throw err;
      }
      return runningOf('pasta', fw, c.servers.sink, () => containerHealth(c));
    },
  },
};

async function startNetnsPortferry(world: World, name: 'portferry-netns' | 'portferry-netns-base', base: boolean): Promise<RootlessRunning> {
  const c = needContainer(world, 'builtin');
  const fw = await startPortferry(world, name, base, ['--netns', c.netns, ...publish(hostPorts(name), CTR_SERVERS)]);
  return runningOf(name, fw, c.servers.sink, () => containerHealth(c));
}

/** Ports of a rootlesskit container by its API (rootlessctl, as the user); its whole tree is the forwarder. */
async function startRootlesskitPorts(world: World, name: 'rootlesskit-builtin' | 'rootlesskit-slirp4netns', c: Container): Promise<RootlessRunning> {
  const p = hostPorts(name);
  for (const spec of [`127.0.0.1:${p.bulk}:${CTR_SERVERS.bulkPort}/tcp`, `127.0.0.1:${p.tcp}:${CTR_SERVERS.tcpPort}/tcp`, `127.0.0.1:${p.udp}:${CTR_SERVERS.udpPort}/udp`]) {
    await execAsUser(world.topology, world.machine, ['rootlessctl', '--socket', c.api, 'add-ports', spec]);
  }
  const running = runningOf(name, null, c.servers.sink, () => containerHealth(c), target(name), [c.pid]);
  // slirp4netns's own TCP stack acknowledges the container's data long before it delivers it to
  // the host side (hundreds of MB ahead after 2 s of iperf3 -R): what arrived is the figure, and
  // only a run that delivered nothing fails.
  return name === 'rootlesskit-slirp4netns' ? { ...running, bulkSlackBytes: SLIRP4NETNS_SLACK } : running;
}

