// The servers of the benchmark, in the container namespace: iperf3 (bulk), pfgen serve (request/
// response, connections, idle) and pfgen sink (UDP, counts what arrives), each confirmed ready.
import type { ChildProcess } from 'node:child_process';
import type { Topology } from '../netns/topology.js';
import { withNofile } from './env.js';
import { BACKEND } from './path-kit.js';
import { LineReader } from './proc.js';
import type { SinkControl, SinkCounts } from './workloads.js';

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
    async read(nextToken) {
      const from = out.lines.length;
      child.stdin?.write(`${nextToken ?? ''}\n`);
      const line = await out.waitFor((l) => l.includes('"datagrams"'), 5000, from);
      if (line === null) throw new Error('the UDP sink in the container namespace did not answer');
      return JSON.parse(line) as SinkCounts;
    },
  };
}
