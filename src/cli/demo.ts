// `portferry demo`: a small HTTP backend in a throwaway network namespace (as root a named netns,
// as a normal user a rootless user+net namespace), published on the host's loopback through a
// portferry mapping with `netns`, exactly as a rootless runtime would use it. Prints the URL to
// try and runs until Ctrl-C; `--once` checks the path end to end and exits. Everything it created
// is removed on exit. Where no namespace can be made, the backend runs on the host's loopback.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { mappingsFromObjects } from '../config/index.js';
import { isPortferryError } from '../errors.js';
import { createLogger, type LogLevel } from '../log.js';
import { createTopology, destroyAllTopologies, type Topology } from '../netns/topology.js';
import { EXIT_FAILURE, EXIT_OK, logLevelArg, reportError } from './common.js';
import { startForwarder, type Forwarder } from '../forwarder/index.js';
import { holdStopSignals } from './signals.js';

interface DemoFlags {
  readonly port: string;
  readonly once?: boolean;
  readonly netns: boolean;
  readonly logLevel: LogLevel;
}

const backendScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'demo-backend.js');
const READY_TIMEOUT_MS = 10_000;

function waitReady(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the demo backend did not start within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /ready (\d+)/.exec(out);
      if (m !== null) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the demo backend exited (${code}) before it was ready`));
    });
  });
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.setTimeout(5000, () => req.destroy(new Error('timed out after 5 s')));
    req.on('error', reject);
  });
}

interface Backend {
  readonly where: string;
  readonly containerPort: number;
  readonly netns: string | null;
  stop(): Promise<void>;
}

async function startBackend(useNetns: boolean, say: (line: string) => void): Promise<Backend> {
  if (useNetns) {
    let topo: Topology | undefined;
    try {
      topo = await createTopology();
      const where = topo.mode === 'root' ? `network namespace ${topo.names.ctr ?? ''}` : `a rootless user+network namespace (${topo.paths.ctr ?? ''})`;
      const child = topo.spawn('ctr', process.execPath, [backendScript, '127.0.0.1', '80', where], { stdio: ['pipe', 'pipe', 'inherit'] });
      const port = await waitReady(child);
      const t = topo;
      return { where, containerPort: port, netns: t.paths.ctr, stop: () => t.destroy() };
    } catch (err) {
      await topo?.destroy();
      say(`note:      no throwaway namespace could be made (${isPortferryError(err) ? `${err.code}: ${err.message}` : String(err)}); the backend runs on the host's loopback instead`);
    }
  }
  const child = spawn(process.execPath, [backendScript, '127.0.0.1', '0', "the host's own network namespace"], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await waitReady(child);
  return {
    where: "the host's network namespace",
    containerPort: port,
    netns: null,
    stop: async () => {
      child.kill('SIGTERM');
    },
  };
}

/** A TCP port free on 127.0.0.1 right now (the kernel's choice). */
function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('publish a built-in HTTP backend (in a throwaway network namespace) through portferry and print the URL to try')
    .option('--port <port>', 'host port to publish on 127.0.0.1 (0: any free port)', '8080')
    .option('--no-netns', 'run the backend on the host loopback instead of in a namespace')
    .option('--once', 'check the path end to end, print the result and exit (for scripts)')
    .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent', logLevelArg, 'warn')
    .action(async (flags: DemoFlags) => {
      const say = (line: string): void => {
        process.stdout.write(`${line}\n`);
      };
      const logger = createLogger({ level: flags.logLevel });
      let backend: Backend | undefined;
      let forwarder: Forwarder | undefined;
      const cleanup = async (): Promise<void> => {
        await forwarder?.close(0);
        await backend?.stop();
        await destroyAllTopologies(); // one still being created when a signal came
      };
      // From the start (namespaces are made first): a signal removes everything, then ends the
      // process — by the signal while starting up, with exit 0 once it serves (Ctrl-C is the way out).
      let serving = false;
      const held = holdStopSignals(() => {
        void cleanup().finally(() => held.release(serving ? EXIT_OK : undefined));
      });
      try {
        backend = await startBackend(flags.netns, say);
        const b = backend;
        const start = async (port: string): Promise<Forwarder> => {
          // Port 0 (any free port) is not a valid published port, so the demo asks the kernel for
          // a free one first; the mapping goes through validation like any other.
          const hostPort = port === '0' ? await freeLoopbackPort() : port;
          const mappings = mappingsFromObjects(
            [{ name: 'demo', hostIP: '127.0.0.1', hostPort, containerIP: '127.0.0.1', containerPort: b.containerPort, ...(b.netns === null ? {} : { netns: b.netns }) }],
            'demo',
          );
          return startForwarder(mappings, logger);
        };
        try {
          forwarder = await start(flags.port);
        } catch (err) {
          if (flags.port === '0' || !isPortferryError(err) || err.code !== 'PF_BIND_ADDRINUSE') throw err;
          say(`note:      port ${flags.port} is taken; using a free port instead`);
          forwarder = await start('0');
        }
        const hostPort = forwarder.listeners()[0]?.address()?.port ?? 0;
        const url = `http://127.0.0.1:${hostPort}/`;
        say(`backend:   http://127.0.0.1:${b.containerPort}/ inside ${b.where}`);
        say(`published: ${url} -> 127.0.0.1:${b.containerPort}${b.netns !== null ? ` (dialled from inside ${b.netns})` : ''} through portferry`);
        if (flags.once === true) {
          const res = await get(url);
          const ok = res.status === 200 && res.body.startsWith('hello from the portferry demo backend');
          say(ok ? `ok: GET ${url} answered ${res.status}: ${res.body.split('\n').slice(0, 2).join(' / ')}` : `FAILED: GET ${url} answered ${res.status}: ${res.body}`);
          await cleanup();
          held.release();
          process.exitCode = ok ? EXIT_OK : EXIT_FAILURE;
          return;
        }
        serving = true;
        say(`try:       curl ${url}\n(Ctrl-C to stop; everything the demo created is removed)`);
      } catch (err) {
        await cleanup();
        if (held.received === null) {
          held.release();
          process.exitCode = reportError(err);
        }
      }
    });
}
