// The workload runners. Each runs its load generator as a separate process in the client (or host)
// namespace against one target, checks that the measurement is real (bytes received, transactions
// answered, connections completed, datagrams counted at the container) and returns a Sample: the
// figures, or a failure with the reason. A path that moves no data never yields a number.
import { randomBytes } from 'node:crypto';
import type { Topology, NsName } from '../netns/topology.js';
import { withNofile } from './env.js';
import { LineReader, allowedCpuList, finish, lastJson, processTree, setAffinity, treeCpuSeconds, treeRssKiB } from './proc.js';
import type { Sample, WorkloadId } from './types.js';

/** Where a load generator connects to: the forwarder's (or the container's) address and ports. */
export interface Target {
  /** The namespace the load generator runs in. */
  readonly ns: NsName;
  readonly ip: string;
  /** iperf3 server behind it */
  readonly bulkPort: number;
  /** pfgen serve (request/response, connections, idle) behind it */
  readonly tcpPort: number;
  /** pfgen sink behind it */
  readonly udpPort: number;
}

export interface Durations {
  readonly bulkSeconds: number;
  readonly otherSeconds: number;
  readonly idleConnections: number;
  /** Parallel loops (threads) of the connections-per-second generator. */
  readonly cpsThreads: number;
}

/** The UDP sink in the container namespace: counts what arrives. */
export interface SinkCounts {
  /** Datagrams of the current run (they start with its token), their bytes and sizes. */
  readonly datagrams: number;
  readonly bytes: number;
  readonly minSize: number;
  readonly maxSize: number;
  /** Any other datagrams: late ones of an earlier run, still queued in a forwarder. */
  readonly other: number;
}

export interface SinkControl {
  /** The counters since the previous read, then reset; `nextToken` (16 hex digits) is the run counted next. */
  read(nextToken?: string): Promise<SinkCounts>;
}

export interface RunContext {
  readonly topology: Topology;
  /** The built pfgen binary. */
  readonly pfgen: string;
  readonly sink: SinkControl;
  readonly durations: Durations;
  /** The forwarder's processes (for CPU and memory); null for paths without one. */
  readonly forwarderPids: readonly number[] | null;
  /** Extra time a client may take beyond its duration before it is killed and the cell fails. */
  readonly graceMs: number;
  /** The servers in the container namespace, pinned with the forwarder by the `-pinned` workloads. */
  readonly backendPids: readonly number[];
  /** The CPU the `-pinned` workloads pin client, forwarder and servers to. */
  readonly pinnedCpu: number;
  /** Set while a `-pinned` workload runs: its client runs under `taskset -c` on this CPU. */
  readonly clientCpu?: number;
  /**
   * How much a bulk run's sender may be ahead of its receiver at the end, per stream, before the
   * run counts as losing data (default 64 MiB: socket and forwarder buffers). A forwarder with a
   * TCP stack of its own (slirp4netns) acknowledges far more than that ahead of delivering it.
   */
  readonly bulkSlackBytes?: number;
}


function fail(reason: string): Sample {
  return { ok: false, reason };
}

function clientOutput(stdout: string, stderr: string): string {
  const s = stderr.trim() || stdout.trim();
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

async function runClient(ctx: RunContext, ns: NsName, argv: readonly string[], seconds: number): Promise<{ json: Record<string, unknown> | null; problem: string | null; stdout: string }> {
  const cmd = argv[0] ?? '';
  const pinned = ctx.clientCpu === undefined ? argv : ['taskset', '-c', String(ctx.clientCpu), ...argv];
  const child = ctx.topology.spawn(ns, ...withNofile(pinned), { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = await finish(child, seconds * 1000 + ctx.graceMs);
  if (done.timedOut) return { json: null, problem: `${cmd.split('/').pop() ?? cmd} did not finish within ${Math.round(seconds + ctx.graceMs / 1000)} s`, stdout: done.stdout };
  return { json: lastJson(done.stdout), problem: done.code === 0 ? null : `${cmd.split('/').pop() ?? cmd} exited with ${done.code ?? done.signal}: ${clientOutput(done.stdout, done.stderr)}`, stdout: done.stdout };
}

// -- TCP bulk (iperf3) ------------------------------------------------------------------------------

interface IperfSum {
  bytes?: number;
  bits_per_second?: number;
}

export async function runBulk(ctx: RunContext, target: Target, mode: { reverse: boolean; streams: number; cpu: boolean }): Promise<Sample> {
  const t = ctx.durations.bulkSeconds;
  const argv = ['iperf3', '-c', target.ip, '-p', String(target.bulkPort), '-t', String(t), '-J', '--connect-timeout', '3000'];
  if (mode.reverse) argv.push('-R');
  if (mode.streams > 1) argv.push('-P', String(mode.streams));
  // The one iperf3 server finishes the previous test when the last connection of it closes; a
  // forwarder that passes the close on late makes the next test "busy": wait for it (up to 5 s).
  const busySince = Date.now();
  let cpuBefore: number;
  let out: Awaited<ReturnType<typeof runClient>>;
  for (;;) {
    cpuBefore = mode.cpu && ctx.forwarderPids !== null ? treeCpuSeconds(ctx.forwarderPids) : 0;
    out = await runClient(ctx, target.ns, argv, t + 2);
    const busy = typeof out.json?.['error'] === 'string' && /server is busy/.test(out.json['error']);
    if (!busy || Date.now() - busySince > 5000) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const { json, problem, stdout } = out;
  const cpuAfter = mode.cpu && ctx.forwarderPids !== null ? treeCpuSeconds(ctx.forwarderPids) : 0;
  if (json === null) return fail(problem ?? `iperf3 printed no JSON: ${clientOutput(stdout, '')}`);
  if (typeof json['error'] === 'string') return fail(`iperf3: ${json['error']}`);
  if (problem !== null) return fail(problem);
  const end = json['end'] as { sum_received?: IperfSum; sum_sent?: IperfSum } | undefined;
  const received = end?.sum_received;
  const bytes = received?.bytes ?? 0;
  const bps = received?.bits_per_second ?? 0;
  if (!(bytes > 0) || !(bps > 0)) return fail(`no data arrived (iperf3 received ${bytes} bytes)`);
  const sent = end?.sum_sent?.bytes ?? 0;
  // What was sent and not received is at most a few socket and forwarder buffers per stream.
  const slack = ctx.bulkSlackBytes ?? 64 * 1024 * 1024;
  if (sent > 0 && bytes < sent * 0.9 - mode.streams * slack) return fail(`only ${bytes} of ${sent} bytes sent arrived`);
  const metrics: Record<string, number> = { gbps: bps / 1e9, bytes };
  if (mode.cpu && ctx.forwarderPids !== null) metrics['cpuSecPerGB'] = (cpuAfter - cpuBefore) / (bytes / 1e9);
  return { ok: true, metrics };
}

// -- request/response, connections, idle (pfgen) --------------------------------------------------

export async function runRequestResponse(ctx: RunContext, target: Target): Promise<Sample> {
  const t = ctx.durations.otherSeconds;
  const { json, problem } = await runClient(ctx, target.ns, [ctx.pfgen, 'rr', target.ip, String(target.tcpPort), String(t)], t);
  if (json === null) return fail(problem ?? 'pfgen rr printed no result');
  const n = Number(json['transactions'] ?? 0);
  const secs = Number(json['seconds'] ?? 0);
  if (typeof json['error'] === 'string') return fail(`after ${n} transactions: ${json['error']}`);
  if (problem !== null) return fail(problem);
  if (!(n > 0) || !(secs > 0)) return fail('no transaction was answered');
  return { ok: true, metrics: { tps: n / secs, p50us: Number(json['p50us']), p99us: Number(json['p99us']) } };
}

export async function runConnections(ctx: RunContext, target: Target): Promise<Sample> {
  const t = ctx.durations.otherSeconds;
  const { json, problem } = await runClient(ctx, target.ns, [ctx.pfgen, 'cps', target.ip, String(target.tcpPort), String(t), String(ctx.durations.cpsThreads)], t + 5);
  if (json === null) return fail(problem ?? 'pfgen cps printed no result');
  if (problem !== null) return fail(problem);
  const ok = Number(json['connections'] ?? 0);
  const failed = Number(json['failed'] ?? 0);
  const secs = Number(json['seconds'] ?? 0);
  const err = typeof json['error'] === 'string' ? `: ${json['error']}` : '';
  if (!(ok > 0) || !(secs > 0)) return fail(`no connection completed (${failed} failed${err})`);
  // A handful of failures under load is a result; more than 1 % is a broken path.
  if (failed > ok / 100) return fail(`${failed} of ${ok + failed} connections failed${err}`);
  return { ok: true, metrics: { cps: ok / secs, failed } };
}

export async function runIdle(ctx: RunContext, target: Target): Promise<Sample> {
  const count = ctx.durations.idleConnections;
  const baseKiB = ctx.forwarderPids !== null ? treeRssKiB(ctx.forwarderPids) : null;
  const child = ctx.topology.spawn(target.ns, ...withNofile([ctx.pfgen, 'idle', target.ip, String(target.tcpPort), String(count)]), { stdio: ['pipe', 'pipe', 'pipe'] });
  const out = new LineReader(child.stdout);
  const err = new LineReader(child.stderr);
  const exited = finish(child, 600_000);
  // Each connection is proven end to end before the next; a dead path gives up after 10 in a row.
  const line = await out.waitFor((l) => l.startsWith('{'), count * 5 + 60_000 + ctx.graceMs);
  let rssKiB: number | null = null;
  if (line !== null && ctx.forwarderPids !== null) rssKiB = treeRssKiB(ctx.forwarderPids);
  child.stdin?.end();
  const timer = setTimeout(() => {
    if (child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }, 10_000);
  await exited;
  clearTimeout(timer);
  if (line === null) return fail(`pfgen idle printed no result: ${clientOutput(out.text(), err.text())}`);
  const json = lastJson(line) ?? {};
  const open = Number(json['open'] ?? 0);
  const failed = Number(json['failed'] ?? 0);
  if (!(open > 0)) return fail(`no connection could be opened and answered${typeof json['error'] === 'string' ? `: ${json['error']}` : ''}`);
  const metrics: Record<string, number> = { open, failed };
  if (rssKiB !== null && baseKiB !== null) {
    metrics['rssMiB'] = rssKiB / 1024;
    // What the connections cost on top of what the forwarder held before (earlier runs included).
    metrics['kibPerConn'] = Math.max(0, rssKiB - baseKiB) / open;
  }
  return { ok: true, metrics };
}

// -- UDP datagram rate ------------------------------------------------------------------------------

export async function runUdp(ctx: RunContext, target: Target, size: number): Promise<Sample> {
  const t = ctx.durations.otherSeconds;
  // Every datagram of this run starts with its token: late datagrams of an earlier cell (a
  // forwarder may hold thousands in its socket buffers) are counted apart, never as this run's.
  const token = randomBytes(8).toString('hex');
  await ctx.sink.read(token);
  const { json, problem } = await runClient(ctx, target.ns, [ctx.pfgen, 'udp', target.ip, String(target.udpPort), String(size), String(t), token], t);
  // Datagrams still queued in a forwarder arrive a little later; they count as received.
  await new Promise((r) => setTimeout(r, 300));
  const got = await ctx.sink.read();
  if (json === null) return fail(problem ?? 'pfgen udp printed no result');
  if (problem !== null) return fail(problem);
  const sent = Number(json['sent'] ?? 0);
  const secs = Number(json['seconds'] ?? 0);
  if (!(sent > 0)) return fail(`no datagram could be sent${typeof json['error'] === 'string' ? `: ${json['error']}` : ''}`);
  if (got.datagrams === 0) return fail(`none of ${sent} datagrams arrived at the container`);
  if (got.minSize !== size || got.maxSize !== size || got.bytes !== got.datagrams * size) {
    return fail(`datagrams arrived altered: ${got.datagrams} datagrams, ${got.bytes} bytes, sizes ${got.minSize}..${got.maxSize}, expected ${size} each`);
  }
  if (got.datagrams > sent) return fail(`the container counted ${got.datagrams} datagrams of this run but only ${sent} were sent`);
  return { ok: true, metrics: { kpps: got.datagrams / secs / 1000, lossPct: (1 - got.datagrams / sent) * 100, sent } };
}

// -- memory after the run ----------------------------------------------------------------------------

/**
 * The forwarder's resident memory now, summed over its whole process tree (helpers and every
 * process of a runtime included): run after the traffic workloads of a repetition.
 */
export async function runRss(ctx: RunContext): Promise<Sample> {
  if (ctx.forwarderPids === null) return fail('no forwarder to measure');
  const processes = processTree(ctx.forwarderPids).length;
  if (processes === 0) return fail('the forwarder has no live process');
  return { ok: true, metrics: { rssMiB: treeRssKiB(ctx.forwarderPids) / 1024, processes } };
}

// -- everything on one CPU ----------------------------------------------------------------------------

/**
 * Runs a workload with the client, the forwarder's whole process tree (every thread) and the
 * servers pinned to one CPU with taskset: the per-CPU cost of a connection or a round trip, free
 * of scheduling noise and of how well a forwarder spreads over cores. The affinity is given back
 * afterwards (the CPUs this process may use), whatever happened.
 */
export async function runPinned(ctx: RunContext, run: (pinnedCtx: RunContext) => Promise<Sample>): Promise<Sample> {
  const roots = [...(ctx.forwarderPids ?? []), ...ctx.backendPids];
  try {
    const problem = setAffinity(roots, String(ctx.pinnedCpu));
    if (problem !== null) return fail(`could not pin to CPU ${ctx.pinnedCpu}: ${problem}`);
    return await run({ ...ctx, clientCpu: ctx.pinnedCpu });
  } finally {
    setAffinity(roots, allowedCpuList());
  }
}

/** Runs one workload against one target. */
export function runWorkload(ctx: RunContext, w: WorkloadId, targets: { readonly client: Target; readonly local: Target }): Promise<Sample> {
  switch (w) {
    case 'tcp-1':
      return runBulk(ctx, targets.client, { reverse: false, streams: 1, cpu: true });
    case 'tcp-1-rev':
      return runBulk(ctx, targets.client, { reverse: true, streams: 1, cpu: false });
    case 'tcp-8':
      return runBulk(ctx, targets.client, { reverse: false, streams: 8, cpu: false });
    case 'tcp-1-local':
      return runBulk(ctx, targets.local, { reverse: false, streams: 1, cpu: false });
    case 'rr':
      return runRequestResponse(ctx, targets.client);
    case 'rr-pinned':
      return runPinned(ctx, (c) => runRequestResponse(c, targets.client));
    case 'cps':
      return runConnections(ctx, targets.client);
    case 'cps-pinned':
      return runPinned(ctx, (c) => runConnections(c, targets.client));
    case 'idle':
      return runIdle(ctx, targets.client);
    case 'udp-64':
      return runUdp(ctx, targets.client, 64);
    case 'udp-1400':
      return runUdp(ctx, targets.client, 1400);
    case 'rss':
      return runRss(ctx);
    case 'netns-10':
      // It starts forwarders of its own in a world of ten namespaces: src/bench/rootless.ts runs it.
      return Promise.resolve(fail('measured by the rootless scenario only'));
  }
}
