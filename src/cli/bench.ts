// `portferry bench`: userspace vs kernel DNAT vs peers, side by side, in throwaway namespaces.
// The benchmark itself lives in bench/ (outside src/, so it is not part of the library build); it
// is compiled to dist/bench/ by bench/tsconfig.json, here on first use or when its sources changed.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { InvalidArgumentError, type Command } from 'commander';
import { PortferryError } from '../errors.js';
import { EXIT_FAILURE, EXIT_OK, reportError, usageError } from './common.js';

/** What src/cli needs of bench/index.ts (kept structural: src does not import bench/ at build time). */
interface BenchModule {
  readonly PATH_NAMES: readonly string[];
  readonly WORKLOAD_IDS: readonly string[];
  runBench(opts: Record<string, unknown>): Promise<{ cells: readonly { status: string; path: string }[] }>;
  renderMarkdown(r: unknown): string;
  renderSvg(r: unknown): string;
}

interface BenchFlags {
  readonly quick?: boolean;
  readonly paths?: string;
  readonly workloads?: string;
  readonly reps?: number;
  readonly bulkSeconds?: number;
  readonly seconds?: number;
  readonly idle?: number;
  readonly json?: string;
  readonly chart?: string;
  readonly markdown?: string;
  readonly install: boolean;
  readonly installPeers?: boolean;
  readonly dockerProxy?: string;
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BENCH_ENTRY = join(ROOT, 'dist', 'bench', 'bench', 'index.js');
const STAMP = join(ROOT, 'dist', 'bench', '.built');

function newestMtime(dir: string): number {
  let newest = 0;
  if (!existsSync(dir)) return newest;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith('.ts') || e.name.endsWith('.json')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** Compiles bench/ to dist/bench/ when missing or older than its sources (bench/ and src/). */
export function ensureBenchBuilt(): string {
  const sources = Math.max(newestMtime(join(ROOT, 'bench')), newestMtime(join(ROOT, 'src')));
  if (existsSync(BENCH_ENTRY) && existsSync(STAMP) && statSync(STAMP).mtimeMs >= sources) return BENCH_ENTRY;
  let tsc: string;
  try {
    tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  } catch (cause) {
    throw new PortferryError('PF_TOOL_MISSING', 'building the benchmark needs the typescript package (a dev dependency), which is not installed', {
      hint: 'Run `npm install` in the portferry checkout (it installs the dev dependencies), then `sudo npx portferry bench` again.',
      cause,
    });
  }
  try {
    execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'bench', 'tsconfig.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (cause) {
    const out = (cause as { stdout?: Buffer }).stdout?.toString() ?? '';
    throw new PortferryError('PF_TOOL_MISSING', `compiling the benchmark (bench/tsconfig.json) failed: ${out.trim().split('\n').slice(0, 5).join(' / ')}`, {
      hint: 'Run `npm install && npm run build` in the portferry checkout and try again.',
      cause,
    });
  }
  writeFileSync(STAMP, `${new Date().toISOString()}\n`);
  return BENCH_ENTRY;
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

function list(value: string | undefined, known: readonly string[], what: string): string[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const bad = items.filter((s) => !known.includes(s));
  if (bad.length > 0 || items.length === 0) throw usageError(`--${what}: unknown ${bad.length > 0 ? `"${bad.join('", "')}"` : 'empty list'}; choose from ${known.join(', ')}`);
  return items;
}

export function registerBenchCommand(program: Command): void {
  program
    .command('bench')
    .description('measure portferry against kernel DNAT (iptables, nftables), no forwarder and peer forwarders, in throwaway namespaces (root)')
    .option('--quick', 'a 1-2 minute run: one repetition, short durations, 1,000 idle connections')
    .option('--paths <list>', 'comma-separated paths: direct,portferry,iptables,nftables,docker-proxy,socat,haproxy,nginx (default: all found)')
    .option('--workloads <list>', 'comma-separated: tcp-1,tcp-1-rev,tcp-8,tcp-1-local,rr,cps,idle,udp-64,udp-1400 (default: all)')
    .option('--reps <n>', 'repetitions per cell, medianed (default 3, --quick 1)', positiveInt)
    .option('--bulk-seconds <s>', 'duration of each TCP bulk run (default 5, --quick 1)', positiveNumber)
    .option('--seconds <s>', 'duration of each other run (default 4, --quick 1)', positiveNumber)
    .option('--idle <n>', 'idle connections to hold (default 10000, --quick 1000)', positiveInt)
    .option('--json <file>', 'write the full results as JSON')
    .option('--chart <file>', 'write an SVG chart (ratio to direct per workload and path)')
    .option('--markdown <file>', 'also write the Markdown table to a file')
    .option('--no-install', 'do not apt-get install missing load tools (iperf3, cc); print the command instead')
    .option('--install-peers', 'install missing peers: socat, haproxy, nginx + stream module (apt-get), docker-proxy (taken out of the docker.io package; dockerd is never installed)')
    .option('--docker-proxy <path>', 'the docker-proxy binary to measure')
    .action(async (flags: BenchFlags) => {
      try {
        if (process.getuid?.() !== 0) {
          throw new PortferryError('PF_NOT_ROOT', 'portferry bench needs root: it creates network namespaces, veth pairs and kernel DNAT rules (all removed at the end)', {
            hint: 'Run it as root: `sudo npx portferry bench` (add --quick for a 1-2 minute run).',
          });
        }
        const mod = (await import(pathToFileURL(ensureBenchBuilt()).href)) as BenchModule;
        const paths = list(flags.paths, mod.PATH_NAMES, 'paths');
        const workloads = list(flags.workloads, mod.WORKLOAD_IDS, 'workloads');
        const result = await mod.runBench({
          quick: flags.quick === true,
          ...(paths === undefined ? {} : { paths }),
          ...(workloads === undefined ? {} : { workloads }),
          ...(flags.reps === undefined ? {} : { reps: flags.reps }),
          ...(flags.bulkSeconds === undefined ? {} : { bulkSeconds: flags.bulkSeconds }),
          ...(flags.seconds === undefined ? {} : { otherSeconds: flags.seconds }),
          ...(flags.idle === undefined ? {} : { idleConnections: flags.idle }),
          installTools: flags.install,
          installPeers: flags.installPeers === true,
          ...(flags.dockerProxy === undefined ? {} : { dockerProxy: flags.dockerProxy }),
          progress: (line: string) => process.stderr.write(`bench: ${line}\n`),
          handleSignals: true,
        });
        const md = mod.renderMarkdown(result);
        process.stdout.write(md);
        if (flags.markdown !== undefined) writeFileSync(flags.markdown, md);
        if (flags.json !== undefined) writeFileSync(flags.json, `${JSON.stringify(result, null, 2)}\n`);
        if (flags.chart !== undefined) writeFileSync(flags.chart, mod.renderSvg(result));
        const failed = result.cells.filter((c) => c.status === 'failed');
        if (failed.length > 0) process.stderr.write(`bench: ${failed.length} cell(s) FAILED (see the notes under the table)\n`);
        process.exitCode = EXIT_OK;
      } catch (err) {
        process.exitCode = reportError(err);
        if (process.exitCode === 0) process.exitCode = EXIT_FAILURE;
      }
    });
}
