// `portferry demo`: a small HTTP backend on loopback, published through a portferry mapping.
// Prints the URL to try and runs until Ctrl-C; `--once` checks the path end to end and exits.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Command } from 'commander';
import { loadMappings } from '../config/index.js';
import { createLogger, type LogLevel } from '../log.js';
import { EXIT_FAILURE, EXIT_OK, logLevelArg, reportError } from './common.js';
import { startForwarder, type Forwarder } from './run.js';

interface DemoFlags {
  readonly port: string;
  readonly once?: boolean;
  readonly logLevel: LogLevel;
}

function startBackend(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const body = `hello from the portferry demo backend\nyou came from ${req.socket.remoteAddress}:${req.socket.remotePort} (the forwarder's side of the relay)\n`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
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

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('publish a built-in HTTP backend through portferry and print the URL to try')
    .option('--port <port>', 'host port to publish on 127.0.0.1 (0: any free port)', '8080')
    .option('--once', 'check the path end to end, print the result and exit (for scripts)')
    .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent', logLevelArg, 'warn')
    .action(async (flags: DemoFlags) => {
      const logger = createLogger({ level: flags.logLevel });
      const backend = await startBackend();
      const backendPort = (backend.address() as AddressInfo).port;
      let forwarder: Forwarder | undefined;
      const cleanup = async (): Promise<void> => {
        await forwarder?.stop(0);
        await new Promise<void>((r) => backend.close(() => r()));
      };
      try {
        const start = async (port: string): Promise<Forwarder> => {
          // Port 0 (any free port) is not a valid published port in a config, so the demo asks for
          // a placeholder port and lets the kernel choose.
          const any = port === '0';
          const [m] = await loadMappings({ specs: [`127.0.0.1:${any ? '1' : port}:127.0.0.1:${backendPort}/tcp`] });
          if (m === undefined) throw new Error('demo mapping missing');
          return startForwarder([any ? { ...m, name: 'demo', hostPort: 0, hostPortEnd: 0 } : { ...m, name: 'demo' }], logger);
        };
        try {
          forwarder = await start(flags.port);
        } catch (err) {
          if (flags.port === '0' || (err as { code?: string }).code !== 'PF_BIND_ADDRINUSE') throw err;
          process.stdout.write(`port ${flags.port} is taken; using a free port instead\n`);
          forwarder = await start('0');
        }
        const hostPort = forwarder.manager.listeners()[0]?.address()?.port ?? 0;
        const url = `http://127.0.0.1:${hostPort}/`;
        process.stdout.write(`backend:   http://127.0.0.1:${backendPort}/ (built-in HTTP server)\n`);
        process.stdout.write(`published: ${url} -> 127.0.0.1:${backendPort} through portferry\n`);
        if (flags.once === true) {
          const res = await get(url);
          const ok = res.status === 200 && res.body.startsWith('hello from the portferry demo backend');
          process.stdout.write(ok ? `ok: GET ${url} answered ${res.status}: ${res.body.split('\n')[0] ?? ''}\n` : `FAILED: GET ${url} answered ${res.status}: ${res.body}\n`);
          await cleanup();
          process.exitCode = ok ? EXIT_OK : EXIT_FAILURE;
          return;
        }
        process.stdout.write(`try:       curl ${url}\n(Ctrl-C to stop)\n`);
        const stop = (): void => {
          void cleanup().then(() => process.exit(EXIT_OK));
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      } catch (err) {
        await cleanup();
        process.exitCode = reportError(err);
      }
    });
}
