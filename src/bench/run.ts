// The benchmark run: throwaway namespaces (client → host → ctr), the backends in ctr, every
// selected path started side by side in host, then repetitions × workloads × paths, interleaved
// (the path order rotates each repetition), medianed. Everything made is removed at the end, on
// failure, and at once when the caller's AbortSignal fires (the CLI aborts on SIGINT/SIGTERM).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PortferryError } from '../errors.js';
import { createTopology, type Topology } from '../netns/topology.js';
import { startBackends } from './backends.js';
import { nofileLimit, buildPfgen, ensureLoadTools, findDockerProxy, installPeers, machineFacts, portferryVersion, toolVersions } from './env.js';
import type { MachineEnv, RunningPath } from './path-kit.js';
import { PATHS } from './paths.js';
import { allowedCpuList, lastCpu, stopTree } from './proc.js';
import { collectCells, withRatios } from './report.js';
import { PATH_NAMES, WORKLOADS, WORKLOAD_IDS, type BenchResult, type DefaultPathName, type PathName, type PathStatus, type Sample, type WorkloadId } from './types.js';
import { runWorkload, type Durations, type RunContext } from './workloads.js';

export interface BenchOptions {
  /** Paths to measure (default: all; `direct` is always added, it is the reference). */
  readonly paths?: readonly DefaultPathName[];
  readonly workloads?: readonly WorkloadId[];
  readonly reps?: number;
  readonly quick?: boolean;
  readonly bulkSeconds?: number;
  readonly otherSeconds?: number;
  readonly idleConnections?: number;
  /** Parallel loops of the connections workloads (default 16). */
  readonly connLoops?: number;
  /** The CPU of the `-pinned` workloads (default: the highest-numbered one this process may use). */
  readonly pinnedCpu?: number;
  /** Install missing load tools with apt-get (root). Default true. */
  readonly installTools?: boolean;
  /** Install missing peers (socat, haproxy, nginx; docker-proxy extracted from docker.io). */
  readonly installPeers?: boolean;
  readonly dockerProxy?: string;
  /** Another built portferry (checkout or package directory): adds the `portferry-base` path. */
  readonly baseline?: string;
  /** Progress lines (stderr in the CLI). */
  readonly progress?: (line: string) => void;
  /** Extra seconds a client may overrun before its cell fails (default 20 s). */
  readonly graceMs?: number;
  /**
   * Stops the run: everything is removed at once, then runBench rejects with BenchInterrupted.
   * The CLI aborts it on SIGINT/SIGTERM/SIGHUP (signals belong to the CLI, not to this module).
   */
  readonly signal?: AbortSignal;
  /** For tests of the cleanup: the namespaces made and every process started, as they appear. */
  readonly observe?: { namespaces?(names: readonly string[]): void; processes?(pids: readonly number[]): void };
}

export const FULL = { reps: 3, bulkSeconds: 5, otherSeconds: 4, idleConnections: 10_000 } as const;
export const QUICK = { reps: 1, bulkSeconds: 1, otherSeconds: 1, idleConnections: 1_000 } as const;
/** Parallel connect–request–reply–close loops of the connections workloads. */
export const CONN_LOOPS = 16;

/** runBench's rejection when its AbortSignal fired (after everything was removed). */
export class BenchInterrupted extends Error {
  constructor(readonly reason: unknown) {
    super(`the benchmark was interrupted (${String(reason)}); everything it made was removed`);
    this.name = 'BenchInterrupted';
  }
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

async function sysctls(topology: Topology, ns: 'host' | 'client' | 'ctr', settings: readonly string[]): Promise<void> {
  for (const s of settings) await topology.exec(ns, 'sysctl', ['-qw', s]).catch(() => undefined);
}

/** Runs the benchmark; resolves with every cell, failed and skipped ones included. */
export async function runBench(opts: BenchOptions = {}): Promise<BenchResult> {
  const log = opts.progress ?? ((): void => {});
  if (!isRoot()) {
    throw new PortferryError('PF_NOT_ROOT', 'portferry bench needs root: it creates network namespaces, veth pairs and kernel DNAT rules (all removed at the end)', {
      hint: 'Run it as root: `sudo npx portferry bench` (add --quick for a 2-3 minute run).',
    });
  }
  const started = Date.now();
  const base = opts.quick === true ? QUICK : FULL;
  const reps = opts.reps ?? base.reps;
  const durations: Durations = {
    bulkSeconds: opts.bulkSeconds ?? base.bulkSeconds,
    otherSeconds: opts.otherSeconds ?? base.otherSeconds,
    idleConnections: opts.idleConnections ?? base.idleConnections,
    cpsThreads: opts.connLoops ?? CONN_LOOPS,
  };
  const cpuList = allowedCpuList();
  const pinnedCpu = opts.pinnedCpu ?? lastCpu(cpuList);
  const workloads = opts.workloads ?? WORKLOAD_IDS;

  const need = ensureLoadTools(log, opts.installTools !== false);
  if (need !== null) throw new PortferryError('PF_TOOL_MISSING', `the bench needs load tools that are not installed`, { hint: `Install them: \`${need}\` (as root the bench installs them itself).` });
  if (opts.installPeers === true) installPeers(log);
  const dockerProxy = findDockerProxy(opts.dockerProxy);
  const machine: MachineEnv = { dockerProxy, baseline: opts.baseline === undefined ? null : resolve(opts.baseline) };

  // By default every path, the baseline only when one is given; `direct` always (the reference).
  const byDefault = PATH_NAMES.filter((p) => p !== 'portferry-base' || machine.baseline !== null);
  const wanted = new Set<PathName>(['direct', ...(opts.paths ?? byDefault), ...(machine.baseline !== null ? (['portferry-base'] as const) : [])]);
  const selected = PATH_NAMES.filter((p) => wanted.has(p));
  const statuses: (PathStatus & { readonly name: DefaultPathName })[] = selected.map((name) => {
    const def = PATHS[name];
    const why = def.unavailable(machine);
    return why === null ? { name, status: 'measured', description: def.describe(machine) } : { name, status: 'skipped', reason: why, description: def.describe(machine) };
  });
  for (const s of statuses) if (s.status === 'skipped') log(`skipping ${s.name}: ${s.reason ?? ''}`);

  // Everything below is undone by cleanup(), once, whatever happens.
  let topology: Topology | null = null;
  let pfgenDir: string | null = null;
  let workDir: string | null = null;
  const backends: ChildProcess[] = [];
  const runningPaths: RunningPath[] = [];
  // Every step is idempotent, and a later call runs them again (after an abort, a step that was
  // under way when cleanup first ran may have made something more).
  let cleaning: Promise<void> = Promise.resolve();
  const cleanup = (): Promise<void> => {
    cleaning = cleaning.then(async () => {
      for (const p of [...runningPaths].reverse()) await p.stop().catch(() => undefined);
      await stopTree(backends.flatMap((b) => (b.pid === undefined ? [] : [b.pid])), 1000);
      await topology?.destroy();
      if (pfgenDir !== null) rmSync(pfgenDir, { recursive: true, force: true });
      if (workDir !== null) rmSync(workDir, { recursive: true, force: true });
    });
    return cleaning;
  };
  const onAbort = (): void => {
    log('interrupted: removing namespaces, rules and processes …');
    void cleanup();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const stopIfAborted = (): void => {
    if (opts.signal?.aborted === true) throw new BenchInterrupted(opts.signal.reason);
  };

  const samples = new Map<string, Sample[]>();
  const restarts: { name: PathName; why: string }[] = [];
  const skipped = new Map<string, string>();
  const key = (p: PathName, w: WorkloadId): string => `${p}\u0000${w}`;
  try {
    stopIfAborted();
    const built = buildPfgen();
    pfgenDir = built.dir;
    workDir = mkdtempSync(join(tmpdir(), 'pf-bench-conf-'));
    log('creating namespaces (client → host → ctr) …');
    topology = await createTopology({ client: true, ipv6: false, mode: 'root' });
    stopIfAborted();
    const topo = topology;
    log(`namespaces: ${[topo.names.client, topo.names.host, topo.names.ctr].join(', ')}`);
    const portRange = ['net.ipv4.ip_local_port_range=1024 65000', 'net.ipv4.tcp_tw_reuse=1', 'net.core.somaxconn=4096', 'net.ipv4.tcp_max_syn_backlog=8192'];
    await sysctls(topo, 'client', portRange);
    await sysctls(topo, 'host', portRange);
    await sysctls(topo, 'ctr', portRange);

    opts.observe?.namespaces?.([topo.names.host, topo.names.ctr, topo.names.client].flatMap((n) => (n === null ? [] : [n])));
    const { sink } = await startBackends(topo, built.binary, (c) => {
      backends.push(c);
      if (c.pid !== undefined) opts.observe?.processes?.([c.pid]);
    });
    const backendPids = backends.flatMap((b) => (b.pid === undefined ? [] : [b.pid]));

    const measured: RunningPath<DefaultPathName>[] = [];
    for (const s of statuses) {
      if (s.status !== 'measured') continue;
      log(`starting ${s.name} …`);
      try {
        const rp = await PATHS[s.name].start({ ...machine, topology: topo, workDir });
        runningPaths.push(rp);
        measured.push(rp);
        if (rp.forwarderPids !== null) opts.observe?.processes?.(rp.forwarderPids);
      } catch (err) {
        stopIfAborted();
        const why = `did not start: ${err instanceof Error ? err.message : String(err)}`;
        log(`${s.name} ${why}`);
        for (const w of workloads) samples.set(key(s.name, w), [{ ok: false, reason: why }]);
      }
    }
    // Kernel rules load conntrack in host: keep TIME_WAIT entries short so that connection-rate
    // runs do not fill the table (a per-namespace setting, ours only).
    await sysctls(topo, 'host', ['net.netfilter.nf_conntrack_tcp_timeout_time_wait=1']);

    const cellsTotal = reps * workloads.length * measured.length;
    const live = new Map<DefaultPathName, RunningPath<DefaultPathName>>(measured.map((rp) => [rp.name, rp]));
    /** A forwarder that died (docker-proxy's accept loop stops on EMFILE) is restarted, and says so. */
    const revive = async (rp: RunningPath<DefaultPathName>, why: string): Promise<RunningPath<DefaultPathName> | string> => {
      log(`${rp.name}: ${why}; restarting it for the next cells`);
      restarts.push({ name: rp.name, why });
      await rp.stop().catch(() => undefined);
      try {
        const fresh = await PATHS[rp.name].start({ ...machine, topology: topo, workDir: workDir as string });
        runningPaths.push(fresh);
        live.set(rp.name, fresh);
        if (fresh.forwarderPids !== null) opts.observe?.processes?.(fresh.forwarderPids);
        return fresh;
      } catch (err) {
        return `did not restart: ${err instanceof Error ? err.message : String(err)}`;
      }
    };
    let done = 0;
    for (let rep = 0; rep < reps; rep++) {
      // Rotate the order each repetition so no path always runs first (or right after another).
      const order = measured.map((_, i) => (measured[(i + rep) % measured.length] as RunningPath<DefaultPathName>).name);
      for (const w of workloads) {
        for (const name of order) {
          done++;
          let rp = live.get(name) as RunningPath<DefaultPathName>;
          const skip = rp.skip(w);
          if (skip !== undefined) {
            skipped.set(key(rp.name, w), skip);
            continue;
          }
          let sample: Sample | null = null;
          const dead = rp.health();
          if (dead !== null) {
            const fresh = await revive(rp, dead);
            if (typeof fresh === 'string') sample = { ok: false, reason: fresh };
            else rp = fresh;
          }
          if (sample === null) {
            const ctx: RunContext = { topology: topo, pfgen: built.binary, sink, durations, forwarderPids: rp.forwarderPids, graceMs: opts.graceMs ?? 20_000, backendPids, pinnedCpu };
            try {
              sample = await runWorkload(ctx, w, rp.targets);
            } catch (err) {
              sample = { ok: false, reason: err instanceof Error ? err.message : String(err) };
            }
            stopIfAborted();
            const after = rp.health();
            if (after !== null) sample = { ok: false, reason: sample.ok ? `${after} (measured until then: ${describeSample(w, sample)})` : `${sample.reason}; ${after}` };
          }
          const list = samples.get(key(rp.name, w)) ?? [];
          list.push(sample);
          samples.set(key(rp.name, w), list);
          log(`[${String(done).padStart(String(cellsTotal).length)}/${cellsTotal}] rep ${rep + 1}/${reps} ${w.padEnd(11)} ${rp.name.padEnd(14)} ${describeSample(w, sample)}`);
        }
      }
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    log('cleaning up …');
    await cleanup();
  }

  const cells = collectCells(statuses, workloads, skipped, samples);
  const facts = machineFacts();
  return {
    meta: {
      date: new Date(started).toISOString(),
      ...facts,
      portferry: portferryVersion(),
      tools: { ...toolVersions(dockerProxy), 'descriptor limit (RLIMIT_NOFILE)': String(nofileLimit()) },
      reps,
      quick: opts.quick === true,
      durations: { bulkSeconds: durations.bulkSeconds, otherSeconds: durations.otherSeconds, idleConnections: durations.idleConnections },
      connLoops: durations.cpsThreads,
      ...(workloads.some((w) => w.endsWith('-pinned')) ? { pinnedCpu } : {}),
      elapsedSeconds: (Date.now() - started) / 1000,
    },
    paths: statuses.map((st) => {
      const r = restarts.filter((x) => x.name === st.name);
      return r.length === 0 ? st : { ...st, description: `${st.description}; restarted ${r.length} time${r.length === 1 ? '' : 's'} by the bench (first after: ${r[0]?.why ?? ''})` };
    }),
    workloads: [...workloads],
    cells: withRatios(cells),
  };
}

/** One repetition's figures (or failure) in a progress line. */
export function describeSample(w: WorkloadId, s: Sample): string {
  if (!s.ok) return `FAILED: ${s.reason}`;
  const m = s.metrics;
  const f = (v: number | undefined, d = 3): string => (v === undefined ? '?' : Number(v.toPrecision(d)).toString());
  switch (WORKLOADS[w].primary) {
    case 'gbps':
      return `${f(m['gbps'])} Gbit/s${m['cpuSecPerGB'] !== undefined ? `, ${f(m['cpuSecPerGB'], 2)} CPU s/GB` : ''}`;
    case 'tps':
      return `${Math.round(m['tps'] ?? 0)} trans/s, p50 ${f(m['p50us'])} µs, p99 ${f(m['p99us'])} µs`;
    case 'cps':
      return `${Math.round(m['cps'] ?? 0)} conn/s${(m['failed'] ?? 0) > 0 ? `, ${m['failed']} failed` : ''}`;
    case 'rssMiB':
      return `${f(m['rssMiB'])} MiB RSS, ${m['processes'] ?? '?'} process${m['processes'] === 1 ? '' : 'es'}`;
    case 'perNsMiB':
      return `RSS ${f(m['rss1MiB'])} MiB with 1 namespace, ${f(m['rss10MiB'])} MiB with 10 (+${f(m['perNsMiB'])} MiB each; ${m['processes1'] ?? '?'} → ${m['processes10'] ?? '?'} processes)`;
    case 'open':
      return `${m['open'] ?? 0} open, ${m['failed'] ?? 0} failed${m['rssMiB'] !== undefined ? `, forwarder RSS ${f(m['rssMiB'])} MiB` : ''}`;
    default:
      return `${f(m['kpps'])} kpps, loss ${f(m['lossPct'], 2)} %`;
  }
}
