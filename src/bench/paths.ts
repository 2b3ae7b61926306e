// The data paths under test that are ours or the kernel's: no forwarder (the ceiling), portferry
// (one process, or --workers 2), and kernel DNAT rules applied with our own rules module and
// deleted again. The peers are in peers.ts; PATHS below is the registry of all of them.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { applyRules, deleteRules, fromCniPortMappings, parseContainerCidr, prefixedRunner, type Backend, type CommandRunner } from '../rules/index.js';
import { packageRoot, portferryVersion, which, withNofile } from './env.js';
import { BACKEND, Forwarder, START_TIMEOUT_MS, hostPorts, running, startChecked, type MachineEnv, type PathDef } from './path-kit.js';
import { PEERS } from './peers.js';
import type { DefaultPathName } from './types.js';
import type { Target } from './workloads.js';

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

/** Where a portferry path's package is: this one, or the --baseline directory (null: not given). */
function portferryRoot(name: PortferryPath, env: MachineEnv): string | null {
  return name === 'portferry-base' ? env.baseline : packageRoot();
}

function gitCommit(dir: string): string {
  const r = spawnSync('git', ['-C', dir, 'log', '-1', '--format=%h %s'], { encoding: 'utf8' });
  return r.status === 0 ? `, commit ${r.stdout.trim().slice(0, 80)}` : '';
}

type PortferryPath = 'portferry' | 'portferry-base' | 'portferry-2w';

/**
 * portferry as users run it: one process, or TCP spread over `workers` processes (`--workers`);
 * `portferry-base` is another build (--baseline DIR), measured in the same run for an A/B.
 */
function portferryPath(name: PortferryPath, workers: number): PathDef {
  return {
    name,
    unavailable: (env) => {
      const root = portferryRoot(name, env);
      if (root === null) return 'no baseline given (--baseline DIR: another built portferry checkout or package)';
      return existsSync(join(root, 'dist', 'cli', 'main.js')) ? null : `not built: run \`npm run build\` in ${root}`;
    },
    describe: (env) => {
      const root = portferryRoot(name, env);
      if (name === 'portferry-base') return root === null ? 'another portferry build (--baseline DIR)' : `portferry ${portferryVersion(root)} at ${root}${gitCommit(root)} (the baseline), one process`;
      return workers === 1
        ? `portferry ${portferryVersion()} (this build${gitCommit(packageRoot())}, node ${process.version}), one process, \`portferry run -p …\``
        : `portferry ${portferryVersion()} (this build), \`portferry run --workers ${workers} -p …\`: TCP in ${workers} worker processes sharing each listening socket, UDP in the main process`;
    },
    start: async (env) => {
      const { topology } = env;
      const p = hostPorts(name);
      const ctr = topology.addrs.ctr4;
      const bin = join(portferryRoot(name, env) ?? packageRoot(), 'bin', 'portferry.js');
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

export const PATHS: Readonly<Record<DefaultPathName, PathDef>> = {
  direct,
  portferry: portferryPath('portferry', 1),
  'portferry-base': portferryPath('portferry-base', 1),
  'portferry-2w': portferryPath('portferry-2w', 2),
  iptables: kernelPath('iptables'),
  nftables: kernelPath('nftables'),
  ...PEERS,
};
