// `portferry bench`: userspace vs kernel DNAT vs peers, side by side, in throwaway namespaces;
// `--scenario rootless`: into a rootless container from the host's loopback, against rootlesskit's
// port drivers and pasta, as a throwaway unprivileged user.
// The benchmark lives in src/bench/ and is built with the rest (`npm run build`); it is loaded only
// when the command runs. Its load generator (bench/gen/pfgen.c) and the naive proxy
// (bench/naive-proxy.mjs) ship with the package. This command owns the signals: SIGINT/SIGTERM/
// SIGHUP abort the run, which removes everything it made, then the signal ends the process.
import { writeFileSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import { PATH_NAMES, ROOTLESS_PATH_NAMES, ROOTLESS_WORKLOAD_IDS, SCENARIOS, WORKLOAD_IDS, type DefaultPathName, type RootlessPathName, type Scenario, type WorkloadId } from '../bench/types.js';
import { PortferryError } from '../errors.js';
import { EXIT_FAILURE, EXIT_OK, reportError, usageError } from './common.js';
import { holdStopSignals } from './signals.js';

interface BenchFlags {
  readonly scenario: string;
  readonly quick?: boolean;
  readonly paths?: string;
  readonly workloads?: string;
  readonly reps?: number;
  readonly bulkSeconds?: number;
  readonly seconds?: number;
  readonly idle?: number;
  readonly connLoops?: number;
  readonly cpu?: number;
  readonly json?: string;
  readonly chart?: string;
  readonly markdown?: string;
  readonly install: boolean;
  readonly installPeers?: boolean;
  readonly dockerProxy?: string;
  readonly baseline?: string;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('use a whole number of at least 1');
  return n;
}

function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('use a number above 0');
  return n;
}

function list<T extends string>(value: string | undefined, known: readonly T[], what: string): T[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const bad = items.filter((s) => !(known as readonly string[]).includes(s));
  if (bad.length > 0 || items.length === 0) throw usageError(`--${what}: unknown ${bad.length > 0 ? `"${bad.join('", "')}"` : 'empty list'}; choose from ${known.join(', ')}`);
  return items as T[];
}

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('use a whole number (0 or more)');
  return n;
}

/** The report to stdout and the files asked for. */
function write(bench: typeof import('../bench/index.js'), result: import('../bench/index.js').BenchResult, flags: BenchFlags): void {
  const md = bench.renderMarkdown(result);
  process.stdout.write(md);
  if (flags.markdown !== undefined) writeFileSync(flags.markdown, md);
  if (flags.json !== undefined) writeFileSync(flags.json, `${JSON.stringify(result, null, 2)}\n`);
  if (flags.chart !== undefined) writeFileSync(flags.chart, bench.renderSvg(result));
  const failed = result.cells.filter((c) => c.status === 'failed');
  if (failed.length > 0) process.stderr.write(`bench: ${failed.length} cell(s) FAILED (see the notes under the table)\n`);
  process.exitCode = EXIT_OK;
}

export function registerBenchCommand(program: Command): void {
  program
    .command('bench')
    .description('measure portferry against kernel DNAT (iptables, nftables), no forwarder and peer forwarders, in throwaway namespaces (root); --scenario rootless: into a rootless container, against rootlesskit and pasta')
    .option('--scenario <name>', `${SCENARIOS.join(' or ')}: rootless measures the paths into a rootless container (rootlesskit + slirp4netns) as a throwaway unprivileged user`, 'default')
    .option('--quick', 'a 2-3 minute run: one repetition, short durations, 1,000 idle connections')
    .option('--paths <list>', `comma-separated paths from: ${PATH_NAMES.join(', ')}; with --scenario rootless from: ${ROOTLESS_PATH_NAMES.join(', ')} (default: all found; direct is always measured)`)
    .option('--workloads <list>', `comma-separated workloads from: ${WORKLOAD_IDS.join(', ')}; with --scenario rootless from: ${ROOTLESS_WORKLOAD_IDS.join(', ')} (default: all)`)
    .option('--reps <n>', 'repetitions per cell, medianed (default 3, --quick 1)', positiveInt)
    .option('--bulk-seconds <s>', 'duration of each TCP bulk run (default 5, --quick 1)', positiveNumber)
    .option('--seconds <s>', 'duration of each other run (default 4, --quick 1)', positiveNumber)
    .option('--idle <n>', 'idle connections to hold (default 10000, --quick 1000; default scenario)', positiveInt)
    .option('--conn-loops <n>', 'parallel loops of the connections workloads (default 16)', positiveInt)
    .option('--cpu <n>', 'the CPU the -pinned workloads run on (default: the highest-numbered one allowed; default scenario)', nonNegativeInt)
    .option('--json <file>', 'write the full results as JSON')
    .option('--chart <file>', 'write an SVG chart (ratio to direct per workload and path)')
    .option('--markdown <file>', 'also write the Markdown table to a file')
    .option('--no-install', 'do not apt-get install missing load tools (iperf3, cc; rootless: rootlesskit, slirp4netns, passt, uidmap); print the command instead')
    .option('--install-peers', 'install missing peers: socat, haproxy, nginx + stream module (apt-get), docker-proxy (taken out of the docker.io package; dockerd is never installed)')
    .option('--docker-proxy <path>', 'the docker-proxy binary to measure')
    .option('--baseline <dir>', 'another built portferry (a checkout or package directory) to measure in the same run as the portferry-base path (rootless: portferry-netns-base), for an A/B')
    .action(async (flags: BenchFlags) => {
      const abort = new AbortController();
      const held = holdStopSignals((sig) => {
        process.stderr.write(`bench: ${sig}: removing namespaces, rules and processes …\n`);
        abort.abort(sig);
      });
      try {
        if (process.getuid?.() !== 0) {
          throw new PortferryError('PF_NOT_ROOT', 'portferry bench needs root: it creates network namespaces, veth pairs and kernel DNAT rules (all removed at the end)', {
            hint: 'Run it as root: `sudo npx portferry bench` (add --quick for a 2-3 minute run).',
          });
        }
        if (!(SCENARIOS as readonly string[]).includes(flags.scenario)) throw usageError(`--scenario: unknown "${flags.scenario}"; choose from ${SCENARIOS.join(', ')}`);
        const scenario = flags.scenario as Scenario;
        const bench = await import('../bench/index.js');
        const progress = (line: string): void => {
          process.stderr.write(`bench: ${line}\n`);
        };
        if (scenario === 'rootless') {
          const notHere = (['idle', 'cpu', 'installPeers', 'dockerProxy'] as const).filter((k) => flags[k] !== undefined);
          if (notHere.length > 0) throw usageError(`--scenario rootless: ${notHere.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} belong${notHere.length === 1 ? 's' : ''} to the default scenario`);
          const rlPaths = list<RootlessPathName>(flags.paths, ROOTLESS_PATH_NAMES, 'paths');
          const rlWorkloads = list<(typeof ROOTLESS_WORKLOAD_IDS)[number]>(flags.workloads, ROOTLESS_WORKLOAD_IDS, 'workloads');
          const result = await bench.runRootlessBench({
            quick: flags.quick === true,
            ...(rlPaths === undefined ? {} : { paths: rlPaths }),
            ...(rlWorkloads === undefined ? {} : { workloads: rlWorkloads }),
            ...(flags.reps === undefined ? {} : { reps: flags.reps }),
            ...(flags.bulkSeconds === undefined ? {} : { bulkSeconds: flags.bulkSeconds }),
            ...(flags.seconds === undefined ? {} : { otherSeconds: flags.seconds }),
            ...(flags.connLoops === undefined ? {} : { connLoops: flags.connLoops }),
            installTools: flags.install,
            ...(flags.baseline === undefined ? {} : { baseline: flags.baseline }),
            progress,
            signal: abort.signal,
          });
          write(bench, result, flags);
          return;
        }
        const paths = list<DefaultPathName>(flags.paths, PATH_NAMES, 'paths');
        const workloads = list<WorkloadId>(flags.workloads, WORKLOAD_IDS, 'workloads');
        const result = await bench.runBench({
          quick: flags.quick === true,
          ...(paths === undefined ? {} : { paths }),
          ...(workloads === undefined ? {} : { workloads }),
          ...(flags.reps === undefined ? {} : { reps: flags.reps }),
          ...(flags.bulkSeconds === undefined ? {} : { bulkSeconds: flags.bulkSeconds }),
          ...(flags.seconds === undefined ? {} : { otherSeconds: flags.seconds }),
          ...(flags.idle === undefined ? {} : { idleConnections: flags.idle }),
          ...(flags.connLoops === undefined ? {} : { connLoops: flags.connLoops }),
          ...(flags.cpu === undefined ? {} : { pinnedCpu: flags.cpu }),
          installTools: flags.install,
          installPeers: flags.installPeers === true,
          ...(flags.dockerProxy === undefined ? {} : { dockerProxy: flags.dockerProxy }),
          ...(flags.baseline === undefined ? {} : { baseline: flags.baseline }),
          progress,
          signal: abort.signal,
        });
        write(bench, result, flags);
      } catch (err) {
        if (held.received === null) {
          process.exitCode = reportError(err);
          if (process.exitCode === 0) process.exitCode = EXIT_FAILURE;
        }
      } finally {
        // After a signal: everything is removed by now; the signal ends the process.
        held.release();
      }
    });
}
