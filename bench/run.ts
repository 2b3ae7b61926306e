// The benchmark run: throwaway namespaces (client → host → ctr), the backends in ctr, every
// selected path started side by side in host, then repetitions × workloads × paths, interleaved
// (the path order rotates each repetition), medianed. Everything made is removed at the end, on
// failure and on Ctrl-C.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PortferryError } from '../src/errors.js';
import { createTopology, type Topology } from '../src/netns/topology.js';
import { withNofile, nofileLimit, buildPfgen, ensureLoadTools, findDockerProxy, installPeers, machineFacts, portferryVersion, toolVersions } from './env.js';
import { BACKEND, PATHS, type RunningPath } from './paths.js';
import { LineReader, stopTree } from './proc.js';
import { aggregate, withRatios } from './report.js';
import { PATH_NAMES, WORKLOADS, WORKLOAD_IDS, type BenchResult, type Cell, type PathName, type PathStatus, type Sample, type WorkloadId } from './types.js';
import { runWorkload, type Durations, type RunContext, type SinkControl } from './workloads.js';

export interface BenchOptions {
  /** Paths to measure (default: all; `direct` is always added, it is the reference). */
  readonly paths?: readonly PathName[];
  readonly workloads?: readonly WorkloadId[];
  readonly reps?: number;
  readonly quick?: boolean;
  readonly bulkSeconds?: number;
  readonly otherSeconds?: number;
  readonly idleConnections?: number;
  /** Install missing load tools with apt-get (root). Default true. */
  readonly installTools?: boolean;
  /** Install missing peers (socat, haproxy, nginx; docker-proxy extracted from docker.io). */
  readonly installPeers?: boolean;
  readonly dockerProxy?: string;
  /** Progress lines (stderr in the CLI). */
  readonly progress?: (line: string) => void;
  /** Extra seconds a client may overrun before its cell fails (default 20 s). */
  readonly graceMs?: number;
  /** Clean up and exit 130 on SIGINT/SIGTERM (the CLI); tests leave it off. */
  readonly handleSignals?: boolean;
  /** For tests of the cleanup: the namespaces made and every process started, as they appear. */
  readonly observe?: { namespaces?(names: readonly string[]): void; processes?(pids: readonly number[]): void };
}

export interface Backends {
  readonly sink: SinkControl;
  readonly children: readonly ChildProcess[];
}

/** iperf3, pfgen serve and pfgen sink in the container namespace, each confirmed ready. */
export async function startBackends(topology: Topology, pfgen: string, started: (c: ChildProcess) => void): Promise<Backends> {
  const children: ChildProcess[] = [];
  const keep = (c: ChildProcess): ChildProcess => {
    children.push(c);
    started(c);
    return c;
  };
  keep(topology.spawn('ctr', 'iperf3', ['-s', '-p', String(BACKEND.bulkPort)], { stdio: ['ignore', 'ignore', 'pipe'] }));
  await waitTcpListening(topology, 'ctr', BACKEND.bulkPort);
  const serve = await startPfgen(topology, pfgen, ['serve', String(BACKEND.tcpPort)], keep);
  const sink = await startPfgen(topology, pfgen, ['sink', String(BACKEND.udpPort)], keep);
  void serve;
  return { sink: sinkControl(sink.child, sink.out), children };
}

export const FULL = { reps: 3, bulkSeconds: 5, otherSeconds: 4, idleConnections: 10_000 } as const;
export const QUICK = { reps: 1, bulkSeconds: 1, otherSeconds: 1, idleConnections: 1_000 } as const;

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** Starts a backend in ctr and waits for its `{"ready":true}` line. */
async function startPfgen(topology: Topology, pfgen: string, args: readonly string[], started: (c: ChildProcess) => void): Promise<{ child: ChildProcess; out: LineReader }> {
  const child = topology.spawn('ctr', ...withNofile([pfgen, ...args]), { stdio: ['pipe', 'pipe', 'pipe'] });
  started(child);
  const out = new LineReader(child.stdout);
  const err = new LineReader(child.stderr);
  const line = await out.waitFor((l) => l.includes('"ready"'), 10_000);
  if (line === null) throw new Error(`pfgen ${args.join(' ')} did not start: ${err.text().trim() || 'no ready line within 10 s'}`);
  return { child, out };
}

async function waitTcpListening(topology: Topology, ns: 'ctr', port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const { stdout } = await topology.exec(ns, 'ss', ['-Hltn']);
    if (new RegExp(`:${port}\\s`).test(stdout)) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} in the container namespace after 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function sinkControl(child: ChildProcess, out: LineReader): SinkControl {
  return {
    async read() {
      const from = out.lines.length;
      child.stdin?.write('r\n');
      const line = await out.waitFor((l) => l.includes('"datagrams"'), 5000, from);
      if (line === null) throw new Error('the UDP sink in the container namespace did not answer');
      const j = JSON.parse(line) as { datagrams: number; bytes: number; minSize: number; maxSize: number };
      return j;
    },
  };
}

async function sysctls(topology: Topology, ns: 'host' | 'client' | 'ctr', settings: readonly string[]): Promise<void> {
  for (const s of settings) await topology.exec(ns, 'sysctl', ['-qw', s]).catch(() => undefined);
}

/** Runs the benchmark; resolves with every cell, failed and skipped ones included. */
export async function runBench(opts: BenchOptions = {}): Promise<BenchResult> {
  const log = opts.progress ?? ((): void => {});
  if (!isRoot()) {
    throw new PortferryError('PF_NOT_ROOT', 'portferry bench needs root: it creates network namespaces, veth pairs and kernel DNAT rules (all removed at the end)', {
      hint: 'Run it as root: `sudo npx portferry bench` (add --quick for a 1-2 minute run).',
    });
  }
  const started = Date.now();
  const base = opts.quick === true ? QUICK : FULL;
  const reps = opts.reps ?? base.reps;
  const durations: Durations = {
    bulkSeconds: opts.bulkSeconds ?? base.bulkSeconds,
    otherSeconds: opts.otherSeconds ?? base.otherSeconds,
    idleConnections: opts.idleConnections ?? base.idleConnections,
    cpsThreads: 4,
  };
  const workloads = opts.workloads ?? WORKLOAD_IDS;

  const need = ensureLoadTools(log, opts.installTools !== false);
  if (need !== null) throw new PortferryError('PF_TOOL_MISSING', `the bench needs load tools that are not installed`, { hint: `Install them: \`${need}\` (as root the bench installs them itself).` });
  if (opts.installPeers === true) installPeers(log);
  const dockerProxy = findDockerProxy(opts.dockerProxy);

  const wanted = new Set<PathName>(['direct', ...(opts.paths ?? PATH_NAMES)]);
  const selected = PATH_NAMES.filter((p) => wanted.has(p));
  const statuses: PathStatus[] = selected.map((name) => {
    const def = PATHS[name];
    const why = def.unavailable({ dockerProxy });
    return why === null ? { name, status: 'measured', description: def.describe({ dockerProxy }) } : { name, status: 'skipped', reason: why, description: def.describe({ dockerProxy }) };
  });
  for (const s of statuses) if (s.status === 'skipped') log(`skipping ${s.name}: ${s.reason ?? ''}`);

  // Everything below is undone by cleanup(), once, whatever happens.
  let topology: Topology | null = null;
  let pfgenDir: string | null = null;
  let workDir: string | null = null;
  const backends: ChildProcess[] = [];
  const runningPaths: RunningPath[] = [];
  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      for (const p of [...runningPaths].reverse()) await p.stop().catch(() => undefined);
      await stopTree(backends.flatMap((b) => (b.pid === undefined ? [] : [b.pid])), 1000);
      await topology?.destroy();
      if (pfgenDir !== null) rmSync(pfgenDir, { recursive: true, force: true });
      if (workDir !== null) rmSync(workDir, { recursive: true, force: true });
    })();
    return cleaning;
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: removing namespaces, rules and processes …`);
    void cleanup().then(() => process.exit(130));
  };
  if (opts.handleSignals === true) {
    // `on`, not `once`: while we listen, the topology's own handler leaves the exit to us instead
    // of re-raising the signal before our temporary files are gone. A second Ctrl-C is harmless.
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }

  const samples = new Map<string, Sample[]>();
  const restarts: { name: PathName; why: string }[] = [];
  const skipped = new Map<string, string>();
  const key = (p: PathName, w: WorkloadId): string => `${p}\u0000${w}`;
  try {
    const built = buildPfgen();
    pfgenDir = built.dir;
    workDir = mkdtempSync(join(tmpdir(), 'pf-bench-conf-'));
    log('creating namespaces (client → host → ctr) …');
    topology = await createTopology({ client: true, ipv6: false, mode: 'root' });
    const topo = topology;
    const portRange = ['net.ipv4.ip_local_port_range=1024 65000', 'net.ipv4.tcp_tw_reuse=1', 'net.core.somaxconn=4096', 'net.ipv4.tcp_max_syn_backlog=8192'];
    await sysctls(topo, 'client', portRange);
    await sysctls(topo, 'host', portRange);
    await sysctls(topo, 'ctr', portRange);

    opts.observe?.namespaces?.([topo.names.host, topo.names.ctr, topo.names.client].flatMap((n) => (n === null ? [] : [n])));
    const { sink } = await startBackends(topo, built.binary, (c) => {
      backends.push(c);
      if (c.pid !== undefined) opts.observe?.processes?.([c.pid]);
    });

    const measured: RunningPath[] = [];
    for (const s of statuses) {
      if (s.status !== 'measured') continue;
      log(`starting ${s.name} …`);
      try {
        const rp = await PATHS[s.name].start({ topology: topo, workDir, dockerProxy });
        runningPaths.push(rp);
        measured.push(rp);
        if (rp.forwarderPids !== null) opts.observe?.processes?.(rp.forwarderPids);
      } catch (err) {
        const why = `did not start: ${err instanceof Error ? err.message : String(err)}`;
        log(`${s.name} ${why}`);
        for (const w of workloads) samples.set(key(s.name, w), [{ ok: false, reason: why }]);
      }
    }
    // Kernel rules load conntrack in host: keep TIME_WAIT entries short so that connection-rate
    // runs do not fill the table (a per-namespace setting, ours only).
    await sysctls(topo, 'host', ['net.netfilter.nf_conntrack_tcp_timeout_time_wait=1']);

    const cellsTotal = reps * workloads.length * measured.length;
    const live = new Map<PathName, RunningPath>(measured.map((rp) => [rp.name, rp]));
    /** A forwarder that died (docker-proxy's accept loop stops on EMFILE) is restarted, and says so. */
    const revive = async (rp: RunningPath, why: string): Promise<RunningPath | string> => {
      log(`${rp.name}: ${why}; restarting it for the next cells`);
      restarts.push({ name: rp.name, why });
      await rp.stop().catch(() => undefined);
      try {
        const fresh = await PATHS[rp.name].start({ topology: topo, workDir: workDir as string, dockerProxy });
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
      const order = measured.map((_, i) => (measured[(i + rep) % measured.length] as RunningPath).name);
      for (const w of workloads) {
        for (const name of order) {
          done++;
          let rp = live.get(name) as RunningPath;
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
            const ctx: RunContext = { topology: topo, pfgen: built.binary, sink, durations, forwarderPids: rp.forwarderPids, graceMs: opts.graceMs ?? 20_000 };
            try {
              sample = await runWorkload(ctx, w, rp.targets);
            } catch (err) {
              sample = { ok: false, reason: err instanceof Error ? err.message : String(err) };
            }
            const after = rp.health();
            if (after !== null) sample = { ok: false, reason: sample.ok ? `${after} (measured until then: ${describeSample(w, sample)})` : `${sample.reason}; ${after}` };
          }
          const list = samples.get(key(rp.name, w)) ?? [];
          list.push(sample);
          samples.set(key(rp.name, w), list);
          log(`[${String(done).padStart(String(cellsTotal).length)}/${cellsTotal}] rep ${rep + 1}/${reps} ${w.padEnd(11)} ${rp.name.padEnd(12)} ${describeSample(w, sample)}`);
        }
      }
    }
  } finally {
    if (opts.handleSignals === true) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    log('cleaning up …');
    await cleanup();
  }

  const cells: Cell[] = [];
  for (const s of statuses) {
    for (const w of workloads) {
      if (s.status === 'skipped') {
        cells.push({ path: s.name, workload: w, status: 'skipped', reason: s.reason ?? 'skipped', samples: [] });
        continue;
      }
      const skip = skipped.get(key(s.name, w));
      if (skip !== undefined) cells.push({ path: s.name, workload: w, status: 'skipped', reason: skip, samples: [] });
      else cells.push(aggregate(s.name, w, samples.get(key(s.name, w)) ?? []));
    }
  }
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

function describeSample(w: WorkloadId, s: Sample): string {
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
    case 'open':
      return `${m['open'] ?? 0} open, ${m['failed'] ?? 0} failed${m['rssMiB'] !== undefined ? `, forwarder RSS ${f(m['rssMiB'])} MiB` : ''}`;
    default:
      return `${f(m['kpps'])} kpps, loss ${f(m['lossPct'], 2)} %`;
  }
}
