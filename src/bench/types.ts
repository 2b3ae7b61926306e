// The benchmark's vocabulary: paths (who moves the bytes), workloads (what is measured), cells
// (one path × one workload, repeated) and the whole result. Plain data, JSON as is.

/** The two scenarios: the default one (client → host → container namespaces, as root) and the rootless one. */
export const SCENARIOS = ['default', 'rootless'] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** Every data path of the default scenario, in report order. `direct` is the ceiling. */
export const PATH_NAMES = ['direct', 'portferry', 'portferry-base', 'portferry-2w', 'iptables', 'nftables', 'haproxy-splice', 'nginx', 'docker-proxy', 'naive', 'socat'] as const;
export type DefaultPathName = (typeof PATH_NAMES)[number];

/**
 * The paths of the rootless scenario (`--scenario rootless`), in report order: into a rootless
 * container's namespace from the host's loopback. `direct` is the loopback ceiling (no forwarder,
 * servers on the same loopback); `portferry-loopback` is portferry's direct path on that loopback.
 */
export const ROOTLESS_PATH_NAMES = ['direct', 'portferry-loopback', 'portferry-netns', 'portferry-netns-base', 'rootlesskit-builtin', 'rootlesskit-slirp4netns', 'pasta'] as const;
export type RootlessPathName = (typeof ROOTLESS_PATH_NAMES)[number];

export type PathName = DefaultPathName | RootlessPathName;

export const WORKLOAD_IDS = ['tcp-1', 'tcp-1-rev', 'tcp-8', 'tcp-1-local', 'rr', 'rr-pinned', 'cps', 'cps-pinned', 'idle', 'udp-64', 'udp-1400'] as const;

/**
 * The rootless scenario's workloads, in the order each repetition runs them: the memory figures
 * last, after the traffic (`rss`: each forwarder's whole process tree after the workloads before
 * it; `netns-10`: one portferry serving ten namespaces under one user namespace vs one).
 */
export const ROOTLESS_WORKLOAD_IDS = ['tcp-1', 'tcp-1-rev', 'rr', 'cps', 'udp-64', 'rss', 'netns-10'] as const;
export type WorkloadId = (typeof WORKLOAD_IDS)[number] | (typeof ROOTLESS_WORKLOAD_IDS)[number];

export interface WorkloadInfo {
  readonly id: WorkloadId;
  /** Column heading. */
  readonly title: string;
  /** The metric the ratio to `direct` and the chart are about. */
  readonly primary: string;
  readonly unit: string;
  /** False for the idle workload: its figure (memory) has no ratio to a path without a forwarder. */
  readonly ratio: boolean;
}

export const WORKLOADS: Readonly<Record<WorkloadId, WorkloadInfo>> = {
  'tcp-1': { id: 'tcp-1', title: 'TCP 1 stream →', primary: 'gbps', unit: 'Gbit/s', ratio: true },
  'tcp-1-rev': { id: 'tcp-1-rev', title: 'TCP 1 stream ←', primary: 'gbps', unit: 'Gbit/s', ratio: true },
  'tcp-8': { id: 'tcp-8', title: 'TCP 8 streams →', primary: 'gbps', unit: 'Gbit/s', ratio: true },
  'tcp-1-local': { id: 'tcp-1-local', title: 'TCP 1 stream, host loopback', primary: 'gbps', unit: 'Gbit/s', ratio: true },
  rr: { id: 'rr', title: 'request/response', primary: 'tps', unit: 'trans/s', ratio: true },
  'rr-pinned': { id: 'rr-pinned', title: 'request/response, 1 CPU', primary: 'tps', unit: 'trans/s', ratio: true },
  cps: { id: 'cps', title: 'connections', primary: 'cps', unit: 'conn/s', ratio: true },
  'cps-pinned': { id: 'cps-pinned', title: 'connections, 1 CPU', primary: 'cps', unit: 'conn/s', ratio: true },
  idle: { id: 'idle', title: 'idle connections', primary: 'open', unit: 'open', ratio: false },
  'udp-64': { id: 'udp-64', title: 'UDP 64 B', primary: 'kpps', unit: 'kpps', ratio: true },
  'udp-1400': { id: 'udp-1400', title: 'UDP 1400 B', primary: 'kpps', unit: 'kpps', ratio: true },
  rss: { id: 'rss', title: 'forwarder RSS after the run', primary: 'rssMiB', unit: 'MiB, processes', ratio: false },
  'netns-10': { id: 'netns-10', title: '10 namespaces, 5 connections each', primary: 'perNsMiB', unit: 'RSS MiB: 1 ns → 10 ns, per extra ns', ratio: false },
};

/** One repetition of one cell. `metrics` only when ok. */
export type Sample = { readonly ok: true; readonly metrics: Readonly<Record<string, number>> } | { readonly ok: false; readonly reason: string };

export type CellStatus = 'ok' | 'failed' | 'skipped';

export interface Cell {
  readonly path: PathName;
  readonly workload: WorkloadId;
  readonly status: CellStatus;
  /** Why failed or skipped. */
  readonly reason?: string;
  /** Median of each metric over the repetitions (ok cells only). */
  readonly metrics?: Readonly<Record<string, number>>;
  /** Primary metric divided by direct's (when both are ok and the workload has a ratio). */
  readonly ratio?: number;
  readonly samples: readonly Sample[];
}

export interface PathStatus {
  readonly name: PathName;
  readonly status: 'measured' | 'skipped';
  /** Why skipped (not installed: with the command to install it). */
  readonly reason?: string;
  /** What ran: `portferry 0.1.0 (node v20…)`, `haproxy 2.6.12 (tcp mode, splice-auto)` … */
  readonly description: string;
}

export interface BenchMeta {
  readonly date: string;
  readonly kernel: string;
  readonly cpus: number;
  readonly cpuModel: string;
  readonly node: string;
  readonly portferry: string;
  readonly tools: Readonly<Record<string, string>>;
  readonly reps: number;
  readonly quick: boolean;
  /** Absent in results of the default scenario (and of runs before there were two). */
  readonly scenario?: Scenario;
  readonly durations: { readonly bulkSeconds: number; readonly otherSeconds: number; readonly idleConnections: number };
  /** Parallel loops of the connections workloads (absent in results from before it was recorded: 4). */
  readonly connLoops?: number;
  /** The CPU the `-pinned` workloads pin client, forwarder and servers to (when one ran). */
  readonly pinnedCpu?: number;
  readonly elapsedSeconds: number;
}

export interface BenchResult {
  readonly meta: BenchMeta;
  readonly paths: readonly PathStatus[];
  readonly workloads: readonly WorkloadId[];
  readonly cells: readonly Cell[];
}
