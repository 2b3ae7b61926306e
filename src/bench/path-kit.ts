// What every data path of the bench is made of: its definition (start, describe, why unavailable),
// the running instance the workloads are aimed at, its host ports, and the Forwarder wrapper for
// the processes a path spawns (liveness, stderr tail, readiness, stop by PID).
import type { ChildProcess } from 'node:child_process';
import type { Topology } from '../netns/topology.js';
import { LineReader, alive, stopTree } from './proc.js';
import { PATH_NAMES, type DefaultPathName, type PathName, type WorkloadId } from './types.js';
import type { Target } from './workloads.js';

/** What runs in the container namespace. */
export const BACKEND = { bulkPort: 5201, tcpPort: 7000, udpPort: 7001 } as const;

/** What the machine and the command line give the paths. */
export interface MachineEnv {
  readonly dockerProxy: string | null;
  /** Another portferry (a built checkout or installed package) to measure as `portferry-base`. */
  readonly baseline: string | null;
}

export interface PathEnv extends MachineEnv {
  readonly topology: Topology;
  /** A private directory for config files. */
  readonly workDir: string;
}

export interface RunningPath<N extends PathName = PathName> {
  readonly name: N;
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
  readonly name: DefaultPathName;
  /** Why it cannot run on this machine (with what to install), or null. */
  unavailable(env: MachineEnv): string | null;
  describe(env: MachineEnv): string;
  start(env: PathEnv): Promise<RunningPath<DefaultPathName>>;
}

/** Host ports of a path: three consecutive ports per path, fixed, inside our own namespace only. */
export function hostPorts(name: DefaultPathName): { bulk: number; tcp: number; udp: number } {
  const base = 20000 + PATH_NAMES.indexOf(name) * 5;
  return { bulk: base, tcp: base + 1, udp: base + 2 };
}

function targetsFor(topology: Topology, name: DefaultPathName): { client: Target; local: Target } {
  const p = hostPorts(name);
  return {
    client: { ns: 'client', ip: topology.addrs.hostClient4, bulkPort: p.bulk, tcpPort: p.tcp, udpPort: p.udp },
    local: { ns: 'host', ip: '127.0.0.1', bulkPort: p.bulk, tcpPort: p.tcp, udpPort: p.udp },
  };
}

export const START_TIMEOUT_MS = 15_000;

/** A forwarder made of processes we spawned: liveness, tail of its stderr, stop by PID. */
export class Forwarder {
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
export async function waitListening(topology: Topology, fw: Forwarder, tcp: readonly number[], udp: readonly number[]): Promise<void> {
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

export function running(name: DefaultPathName, topology: Topology, fw: Forwarder | null, skips: Partial<Record<WorkloadId, string>> = {}, stopExtra?: () => Promise<void>): RunningPath<DefaultPathName> {
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

export async function startChecked(fw: Forwarder, ready: () => Promise<void>): Promise<Forwarder> {
  try {
    await ready();
  } catch (err) {
    await fw.stop();
    throw err;
  }
  return fw;
}

/** Waits for a readiness line on a forwarder's stdout or stderr (`ready`), or a process death. */
export async function waitLine(fw: Forwarder, reader: LineReader, test: (line: string) => boolean, what: string): Promise<void> {
  const line = await reader.waitFor(test, START_TIMEOUT_MS);
  if (line === null) throw new Error(fw.health() ?? `${fw.name} did not report ${what} within ${START_TIMEOUT_MS / 1000} s`);
}
