// The runners check their own measurements: pointed at a path that moves no data (nothing
// listening, or a listener that swallows everything), every workload reports a failure with the
// reason, never a number. Against the container directly they report positive figures.
import t, { type Test } from 'tap';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { inCI, skipUnless } from '../helpers/env.js';
import { createTopology } from '../../src/netns/topology.js';
import { buildPfgen } from '../../src/bench/env.js';
import { BACKEND } from '../../src/bench/path-kit.js';
import { startBackends } from '../../src/bench/backends.js';
import { runBulk, runConnections, runIdle, runPinned, runRequestResponse, runUdp, type Durations, type RunContext, type Target } from '../../src/bench/workloads.js';
import { LineReader, allowedCpuList, lastCpu, stopTree, threadAffinities } from '../../src/bench/proc.js';

/** A client → host → ctr topology with the backends running, and a context for the runners. */
async function setup(t: Test, durations: Durations): Promise<RunContext> {
  const built = buildPfgen();
  t.teardown(() => rmSync(built.dir, { recursive: true, force: true }));
  const topology = await createTopology({ client: true, ipv6: false, mode: 'root' });
  t.teardown(() => topology.destroy());
  const backendPids: number[] = [];
  const { sink } = await startBackends(topology, built.binary, (c) => {
    if (c.pid !== undefined) backendPids.push(c.pid);
  });
  return { topology, pfgen: built.binary, sink, durations, forwarderPids: null, graceMs: 8000, backendPids, pinnedCpu: lastCpu(allowedCpuList()) };
}

t.test('runners: real figures direct, failures (with reasons) on dead and black-holed paths', skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'socat', 'prlimit', 'ss'] }), async (t) => {
  const ctx = await setup(t, { bulkSeconds: 1, otherSeconds: 0.3, idleConnections: 50, cpsThreads: 2 });
  const topo = ctx.topology;
  const target = (ip: string, bulkPort: number, tcpPort: number, udpPort: number): Target => ({ ns: 'client', ip, bulkPort, tcpPort, udpPort });

  // The ceiling, to prove the runners can succeed here.
  const direct = target(topo.addrs.ctr4, BACKEND.bulkPort, BACKEND.tcpPort, BACKEND.udpPort);
  const bulk = await runBulk(ctx, direct, { reverse: false, streams: 1, cpu: false });
  t.ok(bulk.ok && (bulk.metrics['gbps'] ?? 0) > 0 && (bulk.metrics['bytes'] ?? 0) > 0, `direct bulk: ${JSON.stringify(bulk)}`);
  // The one iperf3 server is busy with another test for a moment (as after a forwarder that
  // passes a close on late): the runner waits for it instead of failing the cell.
  const other = topo.spawn('client', 'iperf3', ['-c', topo.addrs.ctr4, '-p', String(BACKEND.bulkPort), '-t', '2'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  const afterBusy = await runBulk(ctx, direct, { reverse: false, streams: 1, cpu: false });
  t.ok(afterBusy.ok, `bulk while the server is busy for ~1.5 s: ${JSON.stringify(afterBusy)}`);
  if (other.exitCode === null && other.signalCode === null) await new Promise((r) => other.once('close', r));
  const rr = await runRequestResponse(ctx, direct);
  t.ok(rr.ok && (rr.metrics['tps'] ?? 0) > 0 && (rr.metrics['p99us'] ?? 0) >= (rr.metrics['p50us'] ?? 0), `direct rr: ${JSON.stringify(rr)}`);
  const cps = await runConnections(ctx, direct);
  t.ok(cps.ok && (cps.metrics['cps'] ?? 0) > 0, `direct cps: ${JSON.stringify(cps)}`);
  const idle = await runIdle(ctx, direct);
  t.same(idle.ok ? { open: idle.metrics['open'], failed: idle.metrics['failed'] } : idle, { open: 50, failed: 0 }, 'direct idle: all 50 open');
  const udp = await runUdp(ctx, direct, 64);
  t.ok(udp.ok && (udp.metrics['kpps'] ?? 0) > 0, `direct udp: ${JSON.stringify(udp)}`);

  // Late datagrams of another run (a forwarder's queue draining into the next cell) never count.
  const [mine, theirs] = ['00112233445566aa', '00112233445566bb'];
  await ctx.sink.read(mine);
  await topo.exec('client', ctx.pfgen, ['udp', topo.addrs.ctr4, String(BACKEND.udpPort), '64', '0.2', theirs]);
  await new Promise((r) => setTimeout(r, 200));
  const stray = await ctx.sink.read(mine);
  t.equal(stray.datagrams, 0, 'datagrams of another run are not counted as this run\'s');
  t.ok(stray.other > 0, `they are counted apart (${stray.other})`);
  await topo.exec('client', ctx.pfgen, ['udp', topo.addrs.ctr4, String(BACKEND.udpPort), '64', '0.2', mine]);
  await new Promise((r) => setTimeout(r, 200));
  const own = await ctx.sink.read();
  t.ok(own.datagrams > 0 && own.other === 0 && own.minSize === 64 && own.maxSize === 64, `this run's datagrams count: ${JSON.stringify(own)}`);

  // Nothing listens on these host ports.
  const dead = target(topo.addrs.hostClient4, 29001, 29002, 29003);
  const expectFail = async (name: string, p: Promise<{ ok: boolean; reason?: string }>, why: RegExp): Promise<void> => {
    const s = await p;
    t.equal(s.ok, false, `${name}: reported as failed`);
    t.match(s.reason ?? '', why, `${name}: says why`);
    t.notOk('metrics' in s, `${name}: no figure`);
  };
  await expectFail('bulk, nothing listening', runBulk(ctx, dead, { reverse: false, streams: 1, cpu: false }), /iperf3: .*(refused|unable)/i);
  await expectFail('rr, nothing listening', runRequestResponse(ctx, dead), /connect: Connection refused/);
  await expectFail('cps, nothing listening', runConnections(ctx, dead), /no connection completed .*refused/i);
  await expectFail('idle, nothing listening', runIdle(ctx, dead), /no connection could be opened.*refused/i);
  await expectFail('udp, nothing listening', runUdp(ctx, dead, 64), /datagram/);

  // A "forwarder" that accepts and swallows: TCP and UDP received, nothing forwarded.
  const hole = target(topo.addrs.hostClient4, 29011, 29012, 29013);
  const procs = [
    topo.spawn('host', 'socat', ['-u', 'TCP4-LISTEN:29012,fork,reuseaddr', 'OPEN:/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] }),
    topo.spawn('host', 'socat', ['-u', 'UDP4-RECV:29013', 'OPEN:/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] }),
  ];
  t.teardown(() => stopTree(procs.flatMap((p) => (p.pid === undefined ? [] : [p.pid]))));
  for (const p of procs) new LineReader(p.stderr);
  for (let i = 0; i < 200; i++) {
    const { stdout } = await topo.exec('host', 'ss', ['-Hln']);
    if (/:29012\s/.test(stdout) && /:29013\s/.test(stdout)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  await expectFail('rr, black hole', runRequestResponse(ctx, hole), /after 0 transactions/);
  await expectFail('udp, black hole', runUdp(ctx, hole, 1400), /none of \d+ datagrams arrived at the container/);
});

/** The PIDs of running `pfgen <mode> …` processes (any namespace: one PID namespace). */
function pfgenPids(binary: string, mode: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (argv[0] === binary && argv[1] === mode) found.push(Number(name));
    } catch {
      // exited
    }
  }
  return found;
}

const all = allowedCpuList();
const needs = skipUnless({ root: true, tools: ['ip', 'iperf3', 'cc', 'prlimit', 'ss', 'taskset'] });
const oneCpuReason = /[-,]/.test(all) ? undefined : `only CPU ${all} is allowed: pinned and unpinned cannot be told apart`;
// Under CI=true a missing prerequisite fails the run (as skipUnless does), never a silent skip.
if (oneCpuReason !== undefined && inCI) throw new Error(`prerequisite missing under CI=true (no skips allowed): ${oneCpuReason}`);
const oneCpu = oneCpuReason === undefined ? {} : { skip: oneCpuReason };
t.test('pinned workloads: client, forwarder (every thread) and servers on one CPU while they run, all CPUs again after', { ...oneCpu, ...needs }, async (t) => {
  const base = await setup(t, { bulkSeconds: 1, otherSeconds: 1, idleConnections: 10, cpsThreads: 4 });
  const { topology: topo, backendPids } = base;
  // A stand-in forwarder with several threads (node: libuv's pool, V8's workers).
  const fwd = topo.spawn('host', process.execPath, ['-e', 'console.log("up"); setInterval(() => {}, 1000)'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => stopTree(fwd.pid === undefined ? [] : [fwd.pid]));
  t.equal(await new LineReader(fwd.stdout).waitFor((l) => l === 'up', 10_000), 'up', 'the stand-in forwarder runs');
  const fwdPid = fwd.pid as number;
  const cpu = lastCpu(all);
  const ctx: RunContext = { ...base, forwarderPids: [fwdPid] };
  t.equal(ctx.pinnedCpu, cpu);
  const direct: Target = { ns: 'client', ip: topo.addrs.ctr4, bulkPort: BACKEND.bulkPort, tcpPort: BACKEND.tcpPort, udpPort: BACKEND.udpPort };
  t.ok(threadAffinities(fwdPid).every((a) => a === all), `before: the forwarder may use ${all}`);

  let during: string[] = [];
  let client: string[] = [];
  const sample = await runPinned(ctx, async (pinned) => {
    t.equal(pinned.clientCpu, cpu, 'the client is told to pin');
    during = [fwdPid, ...backendPids].flatMap((p) => threadAffinities(p));
    const run = runConnections(pinned, direct);
    // Catch the client while it runs and read its threads' affinity.
    for (let i = 0; i < 100 && client.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
      client = pfgenPids(ctx.pfgen, 'cps').flatMap((p) => threadAffinities(p));
    }
    return run;
  });
  t.ok(sample.ok && (sample.metrics['cps'] ?? 0) > 0, `pinned connections measured: ${JSON.stringify(sample)}`);
  t.ok(during.length > backendPids.length + 1, `every thread counted (${during.length})`);
  t.same([...new Set(during)], [String(cpu)], `forwarder threads and servers on CPU ${cpu} during the run`);
  t.ok(client.length > 0, 'the client was seen running');
  t.same([...new Set(client)], [String(cpu)], `the client's threads on CPU ${cpu}`);
  const after = [fwdPid, ...backendPids].flatMap((p) => threadAffinities(p));
  t.same([...new Set(after)], [all], `all CPUs (${all}) again afterwards`);
});
