// The servers of the benchmark: iperf3 (bulk), pfgen serve (request/response, connections, idle)
// and pfgen sink (UDP, counts what arrives), each confirmed ready. The default scenario runs them
// in the container namespace; the rootless one in rootless containers and on the host's loopback.
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import type { Topology } from '../netns/topology.js';
import { withNofile } from './env.js';
import { BACKEND } from './path-kit.js';
import { LineReader } from './proc.js';
import type { SinkControl, SinkCounts } from './workloads.js';

export interface Backends {
  readonly sink: SinkControl;
  readonly children: readonly ChildProcess[];
}

export interface BackendPorts {
  readonly bulkPort: number;
  readonly tcpPort: number;
  readonly udpPort: number;
}

/** Where servers run: how to start a command there, and what listens there (`ss -Hltn`). */
export interface ServerPlace {
  /** For messages: "the container namespace". */
  readonly what: string;
  spawn(argv: readonly string[], opts: SpawnOptions): ChildProcess;
  listeningTcp(): Promise<string>;
}

/** iperf3, pfgen serve and pfgen sink in the container namespace, each confirmed ready. */
export function startBackends(topology: Topology, pfgen: string, started: (c: ChildProcess) => void): Promise<Backends> {
  const place: ServerPlace = {
    what: 'the container namespace',
    spawn: (argv, opts) => topology.spawn('ctr', ...withNofile(argv), opts),
    listeningTcp: async () => (await topology.exec('ctr', 'ss', ['-Hltn'])).stdout,
  };
  return startServers(place, pfgen, BACKEND, started);
}

/** iperf3, pfgen serve and pfgen sink at `place` on `ports`, each confirmed ready. */
export async function startServers(place: ServerPlace, pfgen: string, ports: BackendPorts, started: (c: ChildProcess) => void): Promise<Backends> {
  const children: ChildProcess[] = [];
  const keep = (c: ChildProcess): ChildProcess => {
    children.push(c);
    started(c);
    return c;
  };
  keep(place.spawn(['iperf3', '-s', '-p', String(ports.bulkPort)], { stdio: ['ignore', 'ignore', 'pipe'] }));
  await waitTcpListening(place, ports.bulkPort);
  await startPfgen(place, pfgen, ['serve', String(ports.tcpPort)], keep);
  const sink = await startPfgen(place, pfgen, ['sink', String(ports.udpPort)], keep);
  return { sink: sinkControl(sink.child, sink.out), children };
}

/** Starts a backend and waits for its `{"ready":true}` line. */
async function startPfgen(place: ServerPlace, pfgen: string, args: readonly string[], started: (c: ChildProcess) => void): Promise<{ child: ChildProcess; out: LineReader }> {
  const child = place.spawn([pfgen, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  started(child);
  const out = new LineReader(child.stdout);
  const err = new LineReader(child.stderr);
  const line = await out.waitFor((l) => l.includes('"ready"'), 10_000);
  if (line === null) throw new Error(`pfgen ${args.join(' ')} did not start in ${place.what}: ${err.text().trim() || 'no ready line within 10 s'}`);
  return { child, out };
}

async function waitTcpListening(place: ServerPlace, port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (new RegExp(`:${port}\\s`).test(await place.listeningTcp())) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} in ${place.what} after 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function sinkControl(child: ChildProcess, out: LineReader): SinkControl {
  return {
    async read(nextToken) {
      const from = out.lines.length;
      child.stdin?.write(`${nextToken ?? ''}\n`);
      const line = await out.waitFor((l) => l.includes('"datagrams"'), 5000, from);
      if (line === null) throw new Error('the UDP sink did not answer');
      return JSON.parse(line) as SinkCounts;
    },
  };
}
