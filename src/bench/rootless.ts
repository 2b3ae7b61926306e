// `portferry bench --scenario rootless`: into a rootless container's namespace from the host's
// loopback, the way rootless users publish ports. As a throwaway unprivileged user with
// subordinate ids, rootlesskit + slirp4netns make the container, with iperf3 and pfgen inside
// (rootless-host.ts). Measured side by side, interleaved like the default scenario
// (rootless-paths.ts): rootlesskit's builtin and slirp4netns port drivers, pasta attached to the
// container's namespaces, portferry `--netns` (this build and --baseline), and for reference
// portferry's direct path and no forwarder at all on the same loopback; then the memory figures.
// Everything happens in a namespace of our own (the "host" side: loopback, plus a veth to an idle
// peer namespace, which pasta wants as its outbound interface) and is removed at the end, on
// failure and on abort.
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { PortferryError } from '../errors.js';
import { createTopology, type Topology } from '../netns/topology.js';
import { startServers } from './backends.js';
import { buildPfgen, ensureLoadTools, machineFacts, portferryVersion, ROOTLESS_TOOLS, rootlessToolVersions } from './env.js';
import { LineReader, allowedCpuList, lastCpu, processTree, stopTree, treeRssKiB } from './proc.js';
import { collectCells, withRatios } from './report.js';
import { BenchInterrupted, CONN_LOOPS, FULL, QUICK, describeSample } from './run.js';
import { RootlessMachine, startContainer, startNamespaceWorld, type Container, type NamespaceWorld } from './rootless-host.js';
import { CTR_SERVERS, HOST_SERVERS, ROOTLESS_PATHS, startPortferry, type RootlessRunning, type World } from './rootless-paths.js';
import { ROOTLESS_PATH_NAMES, ROOTLESS_WORKLOAD_IDS, type BenchResult, type PathStatus, type RootlessPathName, type Sample, type WorkloadId } from './types.js';
import { runRequestResponse, runWorkload, type Durations, type RunContext, type Target } from './workloads.js';

export type RootlessWorkloadId = (typeof ROOTLESS_WORKLOAD_IDS)[number];

export interface RootlessBenchOptions {
  /** Paths to measure (default: all; `direct` is always added, it is the reference). */
  readonly paths?: readonly RootlessPathName[];
  readonly workloads?: readonly RootlessWorkloadId[];
  readonly reps?: number;
  readonly quick?: boolean;
  readonly bulkSeconds?: number;
  readonly otherSeconds?: number;
  /** Parallel loops of the connections workload (default 16). */
  readonly connLoops?: number;
  /** Install missing tools with apt-get (root). Default true. */
  readonly installTools?: boolean;
  /** Another built portferry: adds the `portferry-netns-base` path. */
  readonly baseline?: string;
  readonly progress?: (line: string) => void;
  /** Extra seconds a client may overrun before its cell fails (default 20 s). */
  readonly graceMs?: number;
  readonly signal?: AbortSignal;
  /** For tests of the cleanup: namespaces, processes and the user, as they are made. */
  readonly observe?: { namespaces?(names: readonly string[]): void; processes?(pids: readonly number[]): void; user?(name: string, uid: number): void };
}

/** Namespaces of the ten-namespace figure, and the connections held through each. */
const WORLD_NAMESPACES = 10;
const WORLD_CONNECTIONS = 5;
const WORLD_PORT = 22000;

// -- ten namespaces under one user namespace ----------------------------------------------------------

/**
 * One portferry serving 1, then 10 namespaces of the world (fresh processes each time), with 5
 * connections held through every namespace, proven end to end: the whole tree's RSS each time.
 */
async function runNetns10(world: World, nsWorld: NamespaceWorld, base: boolean, ctx: RunContext): Promise<Sample> {
  const measure = async (count: number): Promise<{ rssKiB: number; processes: number } | string> => {
    const mappings = nsWorld.netns.slice(0, count).map((ns, i) => `  - hostIP: 127.0.0.1\n    hostPort: ${WORLD_PORT + i}\n    containerIP: 127.0.0.1\n    containerPort: ${nsWorld.tcpPort}\n    netns: ${ns}\n`);
    const config = world.machine.writeFile(`netns-${count}.yaml`, `mappings:\n${mappings.join('')}`);
    const fw = await startPortferry(world, `portferry (${count} namespace${count === 1 ? '' : 's'})`, base, ['-c', config]);
    const clients: ChildProcess[] = [];
    try {
      // Each namespace's first connection may wait for portferry to start what serves that
      // namespace (today a helper process): one short exchange through each first, one namespace
      // after the other (ten Node helpers starting at once on a small busy machine can miss their
      // start timeout), retried, so that the held connections measure memory, not start-up.
      for (let i = 0; i < count; i++) {
        const t: Target = { ns: 'host', ip: '127.0.0.1', bulkPort: 0, tcpPort: WORLD_PORT + i, udpPort: 0 };
        let last: Sample = { ok: false, reason: 'not tried' };
        for (let attempt = 0; attempt < 10 && !last.ok; attempt++) {
          if (attempt > 0) await new Promise((r) => setTimeout(r, 250));
          last = await runRequestResponse({ ...ctx, durations: { ...ctx.durations, otherSeconds: 0.2 } }, t);
        }
        if (!last.ok) {
          const warned = (fw.stderr[0]?.lines ?? []).filter((l) => /"level":(40|50)/.test(l)).slice(-1)[0];
          return `namespace ${i + 1}: no exchange went through in 10 attempts: ${last.reason}${warned === undefined ? '' : `; portferry logged: ${warned.slice(0, 400)}`}`;
        }
      }
      const results = await Promise.all(
        nsWorld.netns.slice(0, count).map(async (_, i) => {
          const child = world.topology.spawn('host', ctx.pfgen, ['idle', '127.0.0.1', String(WORLD_PORT + i), String(WORLD_CONNECTIONS)], { stdio: ['pipe', 'pipe', 'pipe'] });
          clients.push(child);
          const err = new LineReader(child.stderr);
          const line = await new LineReader(child.stdout).waitFor((l) => l.startsWith('{'), 30_000 + ctx.graceMs);
          const json = line === null ? null : (JSON.parse(line) as { open?: number; failed?: number; error?: string });
          if (json === null) return `namespace ${i + 1}: pfgen idle printed no result: ${err.text().trim().slice(0, 200)}`;
          if (json.open !== WORLD_CONNECTIONS) return `namespace ${i + 1}: ${json.open ?? 0} of ${WORLD_CONNECTIONS} connections open end to end${json.error === undefined ? '' : `: ${json.error}`}`;
          return null;
        }),
      );
      const problem = results.find((r) => r !== null);
      if (problem !== undefined && problem !== null) return problem;
      const dead = fw.health();
      if (dead !== null) return dead;
      return { rssKiB: treeRssKiB(fw.pids), processes: processTree(fw.pids).length };
    } finally {
      for (const c of clients) c.stdin?.end();
      await stopTree(clients.flatMap((c) => (c.pid === undefined ? [] : [c.pid])), 2000);
      await fw.stop();
    }
  };
  const one = await measure(1);
  if (typeof one === 'string') return { ok: false, reason: `1 namespace: ${one}` };
  const ten = await measure(WORLD_NAMESPACES);
  if (typeof ten === 'string') return { ok: false, reason: `${WORLD_NAMESPACES} namespaces: ${ten}` };
  return {
    ok: true,
    metrics: {
      rss1MiB: one.rssKiB / 1024,
      rss10MiB: ten.rssKiB / 1024,
      perNsMiB: (ten.rssKiB - one.rssKiB) / 1024 / (WORLD_NAMESPACES - 1),
      processes1: one.processes,
      processes10: ten.processes,
    },
  };
}

// -- the run ----------------------------------------------------------------------------------------

/** Runs the rootless scenario; resolves with every cell, failed and skipped ones included. */
export async function runRootlessBench(opts: RootlessBenchOptions = {}): Promise<BenchResult> {
  const log = opts.progress ?? ((): void => {});
  if (process.getuid?.() !== 0) {
    throw new PortferryError('PF_NOT_ROOT', 'portferry bench --scenario rootless needs root: it creates a throwaway user with subordinate ids, namespaces and a rootless container (all removed at the end)', {
      hint: 'Run it as root: `sudo npx portferry bench --scenario rootless` (add --quick for a short run).',
    });
  }
  const started = Date.now();
  const base = opts.quick === true ? QUICK : FULL;
  const reps = opts.reps ?? base.reps;
  const durations: Durations = { bulkSeconds: opts.bulkSeconds ?? base.bulkSeconds, otherSeconds: opts.otherSeconds ?? base.otherSeconds, idleConnections: 0, cpsThreads: opts.connLoops ?? CONN_LOOPS };
  // The memory figures stay last in each repetition: after the traffic.
  const workloads = ROOTLESS_WORKLOAD_IDS.filter((w) => (opts.workloads ?? ROOTLESS_WORKLOAD_IDS).includes(w));
  const baseline = opts.baseline === undefined ? null : resolve(opts.baseline);

  const need = ensureLoadTools(log, opts.installTools !== false, ROOTLESS_TOOLS);
  if (need !== null) throw new PortferryError('PF_TOOL_MISSING', 'the rootless scenario needs tools that are not installed', { hint: `Install them: \`${need}\` (as root the bench installs them itself).` });

  const byDefault = ROOTLESS_PATH_NAMES.filter((p) => p !== 'portferry-netns-base' || baseline !== null);
  const wanted = new Set<RootlessPathName>(['direct', ...(opts.paths ?? byDefault), ...(baseline !== null ? (['portferry-netns-base'] as const) : [])]);
  const selected = ROOTLESS_PATH_NAMES.filter((p) => wanted.has(p));
  const statuses: (PathStatus & { readonly name: RootlessPathName })[] = selected.map((name) => {
    const why = ROOTLESS_PATHS[name].unavailable(baseline);
    return why === null ? { name, status: 'measured', description: ROOTLESS_PATHS[name].describe(baseline) } : { name, status: 'skipped', reason: why, description: ROOTLESS_PATHS[name].describe(baseline) };
  });
  for (const s of statuses) if (s.status === 'skipped') log(`skipping ${s.name}: ${s.reason ?? ''}`);
  const needs = (driver: 'builtin' | 'slirp4netns'): boolean =>
    statuses.some((s) => s.status === 'measured' && (driver === 'slirp4netns' ? s.name === 'rootlesskit-slirp4netns' : ['rootlesskit-builtin', 'pasta', 'portferry-netns', 'portferry-netns-base'].includes(s.name)));

  let topology: Topology | null = null;
  let machine: RootlessMachine | null = null;
  let pfgenDir: string | null = null;
  const processes: ChildProcess[] = [];
  const runningPaths: RootlessRunning[] = [];
  let cleaning: Promise<void> = Promise.resolve();
  const cleanup = (): Promise<void> => {
    cleaning = cleaning.then(async () => {
      for (const p of [...runningPaths].reverse()) await p.stop().catch(() => undefined);
      await stopTree(processes.flatMap((c) => (c.pid === undefined ? [] : [c.pid])), 1000);
      await topology?.destroy();
      await machine?.destroy();
      if (pfgenDir !== null) rmSync(pfgenDir, { recursive: true, force: true });
    });
    return cleaning;
  };
  const onAbort = (): void => {
    log('interrupted: removing the user, namespaces, containers and processes …');
    void cleanup();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const stopIfAborted = (): void => {
    if (opts.signal?.aborted === true) throw new BenchInterrupted(opts.signal.reason);
  };
  const startedProc = (c: ChildProcess): void => {
    processes.push(c);
    if (c.pid !== undefined) opts.observe?.processes?.([c.pid]);
  };

  const samples = new Map<string, Sample[]>();
  const skipped = new Map<string, string>();
  const key = (p: RootlessPathName, w: WorkloadId): string => `${p}\u0000${w}`;
  try {
    stopIfAborted();
    const built = buildPfgen();
    pfgenDir = built.dir;
    // The user runs pfgen in its containers.
    chmodSync(dirname(built.binary), 0o755);
    machine = RootlessMachine.create(mkdtempSync(join(tmpdir(), 'pf-bench-rootless-')), log);
    const mach = machine;
    if (mach.user !== null) opts.observe?.user?.(mach.user.name, mach.user.uid);
    stopIfAborted();
    log('creating the host side namespace …');
    topology = await createTopology({ client: false, ipv6: false, mode: 'root' });
    const topo = topology;
    const names = [topo.names.host, topo.names.ctr].flatMap((n) => (n === null ? [] : [n]));
    log(`namespaces: ${names.join(', ')} (the host side, and the idle peer of its uplink)`);
    opts.observe?.namespaces?.(names);
    // pasta wants an outbound interface with a default route: the veth to the (idle) peer
    // namespace. Nothing is sent there: pasta runs with -T none -U none, the container has no
    // route out of slirp4netns but its gateway, and nothing in it dials out.
    await topo.exec('host', 'ip', ['route', 'add', 'default', 'via', topo.addrs.ctr4]);
    // Ephemeral ports above every fixed port of ours: the ten-namespace figure binds its ports
    // while earlier clients' connections may still hold any port of a wider range.
    for (const s of ['net.ipv4.ip_local_port_range=30000 65000', 'net.ipv4.tcp_tw_reuse=1', 'net.core.somaxconn=4096', 'net.ipv4.tcp_max_syn_backlog=8192']) {
      await topo.exec('host', 'sysctl', ['-qw', s]).catch(() => undefined);
    }
    const hostServers = await startServers(
      { what: "the host side's loopback", spawn: (argv, o) => topo.spawn('host', argv[0] as string, argv.slice(1), o), listeningTcp: async () => (await topo.exec('host', 'ss', ['-Hltn'])).stdout },
      built.binary,
      HOST_SERVERS,
      startedProc,
    );
    const world: World = { topology: topo, machine: mach, pfgen: built.binary, hostServers, containers: {}, baseline, started: startedProc };
    for (const driver of ['builtin', 'slirp4netns'] as const) {
      if (!needs(driver)) continue;
      stopIfAborted();
      log(`starting a rootless container (rootlesskit --net=slirp4netns --port-driver=${driver}) as ${mach.user?.name ?? '?'} …`);
      try {
        (world.containers as Record<string, Container>)[driver] = await startContainer(topo, mach, driver, built.binary, CTR_SERVERS, startedProc);
      } catch (err) {
        stopIfAborted();
        log(`${err instanceof Error ? err.message : String(err)}`);
      }
    }
    let nsWorld: NamespaceWorld | null = null;
    if (workloads.includes('netns-10') && statuses.some((s) => s.status === 'measured' && s.name.startsWith('portferry-netns'))) {
      log(`starting ${WORLD_NAMESPACES} network namespaces under one user namespace, pfgen serve in each …`);
      try {
        nsWorld = await startNamespaceWorld(topo, mach, built.binary, WORLD_NAMESPACES, CTR_SERVERS.tcpPort, startedProc);
      } catch (err) {
        stopIfAborted();
        const why = `the ten-namespace world did not start: ${err instanceof Error ? err.message : String(err)}`;
        log(why);
        for (const s of statuses) samples.set(key(s.name, 'netns-10'), [{ ok: false, reason: why }]);
      }
    }

    const measured: RootlessRunning[] = [];
    for (const s of statuses) {
      if (s.status !== 'measured') continue;
      stopIfAborted();
      log(`starting ${s.name} …`);
      try {
        const rp = await ROOTLESS_PATHS[s.name].start(world);
        runningPaths.push(rp);
        measured.push(rp);
      } catch (err) {
        stopIfAborted();
        const why = `did not start: ${err instanceof Error ? err.message : String(err)}`;
        log(`${s.name} ${why}`);
        for (const w of workloads) samples.set(key(s.name, w), [{ ok: false, reason: why }]);
      }
    }

    const ctxFor = (rp: RootlessRunning): RunContext => ({
      topology: topo,
      pfgen: built.binary,
      sink: rp.sink,
      durations,
      forwarderPids: rp.forwarderPids,
      graceMs: opts.graceMs ?? 20_000,
      backendPids: [],
      pinnedCpu: lastCpu(allowedCpuList()),
      ...(rp.bulkSlackBytes === undefined ? {} : { bulkSlackBytes: rp.bulkSlackBytes }),
    });
    // One short exchange through every path first: portferry --netns starts its namespace helper
    // on the first connection, which should not land in the first measured cell.
    for (const rp of measured) {
      const warm = await runRequestResponse({ ...ctxFor(rp), durations: { ...durations, otherSeconds: 0.3 } }, rp.targets.client).catch((err: unknown) => ({ ok: false as const, reason: String(err) }));
      if (!warm.ok) log(`${rp.name}: the warm-up exchange failed: ${warm.reason}`);
    }

    const cellsTotal = reps * workloads.length * measured.length;
    let done = 0;
    for (let rep = 0; rep < reps; rep++) {
      const order = measured.map((_, i) => measured[(i + rep) % measured.length] as RootlessRunning);
      for (const w of workloads) {
        for (const rp of order) {
          done++;
          const skip = rp.skip(w);
          if (skip !== undefined) {
            skipped.set(key(rp.name, w), skip);
            continue;
          }
          let sample: Sample;
          const dead = rp.health();
          if (dead !== null) {
            // Rootless runtimes are not restarted mid-run: a path that broke fails its later cells.
            sample = { ok: false, reason: dead };
          } else {
            const ctx = ctxFor(rp);
            try {
              if (w === 'netns-10') {
                sample = nsWorld === null ? { ok: false, reason: 'the ten-namespace world is missing' } : await runNetns10(world, nsWorld, rp.name === 'portferry-netns-base', ctx);
              } else {
                sample = await runWorkload(ctx, w, rp.targets);
              }
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
          log(`[${String(done).padStart(String(cellsTotal).length)}/${cellsTotal}] rep ${rep + 1}/${reps} ${w.padEnd(9)} ${rp.name.padEnd(23)} ${describeSample(w, sample)}`);
        }
      }
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    log('cleaning up …');
    await cleanup();
  }

  const cells = collectCells(statuses, workloads, skipped, samples);
  return {
    meta: {
      date: new Date(started).toISOString(),
      ...machineFacts(),
      portferry: portferryVersion(),
      tools: rootlessToolVersions(),
      reps,
      quick: opts.quick === true,
      scenario: 'rootless',
      durations: { bulkSeconds: durations.bulkSeconds, otherSeconds: durations.otherSeconds, idleConnections: 0 },
      connLoops: durations.cpsThreads,
      elapsedSeconds: (Date.now() - started) / 1000,
    },
    paths: statuses,
    workloads: [...workloads],
    cells: withRatios(cells),
  };
}
