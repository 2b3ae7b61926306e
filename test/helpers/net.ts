// Real-socket helpers for tests: backends with known behaviour, clients that hash what they get,
// an in-process forwarder, and the CLI as a child process with readiness from its `ready` log line.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Mapping } from '../../src/api.js';
import { Manager } from '../../src/proxy/manager.js';
import { DirectDialer, type Dialer } from '../../src/proxy/dialer.js';
import { memoryLogger } from '../../src/log.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const cliPath = path.join(repoRoot, 'bin/portferry.js');

interface Closable {
  close(): Promise<void>;
}

type Teardown = (fn: () => unknown) => void;

/** A TCP server on port 0; `onSocket` decides its behaviour. Closed (and its sockets destroyed) in teardown. */
export async function startServer(teardown: Teardown, onSocket: (s: net.Socket) => void, host = '127.0.0.1'): Promise<{ port: number; server: net.Server; sockets: Set<net.Socket> } & Closable> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  teardown(close);
  return { port: (server.address() as net.AddressInfo).port, server, sockets, close };
}

/** Echoes every byte back and ends its side when the client ends. */
export function echoServer(teardown: Teardown, host = '127.0.0.1'): ReturnType<typeof startServer> {
  return startServer(teardown, (s) => s.pipe(s), host);
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export function connect(port: number, host = '127.0.0.1', opts: Partial<net.NetConnectOpts> = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host, allowHalfOpen: true, ...opts } as net.NetConnectOpts);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Everything a socket reads until it ends, and how it ended. */
export function readAll(s: net.Socket): Promise<{ data: Buffer; ended: 'eof' | 'error'; errorCode?: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve({ data: Buffer.concat(chunks), ended: 'eof' }));
    s.once('error', (err: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), ended: 'error', ...(err.code !== undefined ? { errorCode: err.code } : {}) }));
  });
}

/** Sends `payload`, half-closes, and returns what came back with its hash. */
export async function echoRoundTrip(port: number, payload: Buffer, host = '127.0.0.1'): Promise<{ received: Buffer; ended: string }> {
  const s = await connect(port, host);
  const result = readAll(s);
  s.end(payload);
  const r = await result;
  s.destroy();
  return { received: r.data, ended: r.ended };
}

export function randomPayload(size: number): Buffer {
  return randomBytes(size);
}

/** A Manager in this process with the given mappings bound; destroyed in teardown. */
export async function startManager(teardown: Teardown, mappings: readonly Mapping[], dialer: Dialer = new DirectDialer()): Promise<{ manager: Manager; records: Record<string, unknown>[]; port: (i?: number) => number }> {
  const { logger, records } = memoryLogger('debug');
  const manager = new Manager({ logger, dialerFor: () => dialer });
  await manager.add(mappings);
  teardown(() => manager.destroy());
  return {
    manager,
    records,
    port: (i = 0) => manager.listeners()[i]?.address()?.port ?? 0,
  };
}

export interface CliProcess {
  readonly child: ChildProcess;
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Resolves with the exit code (or the signal name). */
  readonly exited: Promise<number | string>;
  /** Resolves with the parsed `ready` record; rejects if the process exits first. */
  readonly ready: Promise<Record<string, unknown>>;
}

/**
 * Runs `node bin/portferry ...args` (the built dist), under `prefix` if given (`['prlimit',
 * '--nofile=40:40']`). Killed by PID in teardown if still running.
 */
export function runCli(teardown: Teardown, args: readonly string[], env: NodeJS.ProcessEnv = {}, prefix: readonly string[] = []): CliProcess {
  const [node, nodeArgs] = nodeArgv(cliPath, ...args);
  const [cmd, argv] = prefix[0] === undefined ? [node, nodeArgs] : [prefix[0], [...prefix.slice(1), node, ...nodeArgs]];
  const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (out += c));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stderr?.setEncoding('utf8').on('data', (c: string) => {
      err += c;
      for (const line of err.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (rec['msg'] === 'ready') resolve(rec);
        } catch {
          /* partial line */
        }
      }
    });
    void exited.then((code) => reject(new Error(`portferry exited (${code}) before ready: ${err}`)));
  });
  ready.catch(() => {});
  teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, stdout: () => out, stderr: () => err, exited, ready };
}

/**
 * Echoes `chunks` × 256 KiB through `port`, paced; after the first chunk sends SIGTERM to `cli`
 * and waits until it logs that it is draining, then calls `whileDraining` (if given). Returns what
 * came back and the hashes, for the caller to compare.
 */
export async function transferAcrossSigterm(
  port: number,
  cli: CliProcess,
  chunks: number,
  whileDraining?: () => Promise<void>,
): Promise<{ ended: string; bytes: number; total: number; sentHash: string; receivedHash: string }> {
  const s = await connect(port);
  const got = readAll(s);
  const sent = createHash('sha256');
  let total = 0;
  for (let i = 0; i < chunks; i++) {
    const chunk = Buffer.alloc(256 * 1024, i);
    sent.update(chunk);
    total += chunk.length;
    s.write(chunk);
    if (i === 0) {
      await new Promise((r) => setTimeout(r, 50));
      cli.child.kill('SIGTERM');
      await until(() => cli.stderr().includes('stopping'), 5000, 'the forwarder to start draining');
      await whileDraining?.();
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  s.end();
  const r = await got;
  return { ended: r.ended, bytes: r.data.length, total, sentHash: sent.digest('hex'), receivedHash: sha256(r.data) };
}

/**
 * argv to run a node script without tap's NODE_OPTIONS. tap's process-info hook adds itself to
 * every child's environment whatever env the caller passes; `env -u` drops it after that, so the
 * child runs as a user would run it (and a child running as nobody cannot fail writing to .tap/).
 */
export const nodeArgv = (script: string, ...args: string[]): [string, string[]] => ['env', ['-u', 'NODE_OPTIONS', process.execPath, script, ...args]];

/**
 * A TCP port that was free a moment ago. Picked at random below the kernel's ephemeral range
 * (32768+), so that no other test's outgoing connection can be using it by the time the caller
 * binds it; and away from 20000-20099 / 30000-30099 (the range test and the benchmark use those).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 21000 + Math.floor(Math.random() * 9000);
    const s = net.createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen({ port, host, exclusive: true }, () => resolve(true));
    });
    if (ok) {
      await new Promise<void>((r) => s.close(() => r()));
      return port;
    }
  }
  throw new Error(`no free port found on ${host} in 21000-29999`);
}

/** Polls `check` until it returns true (bounded: rejects after `ms`). For waiting on state, not for timing. */
export async function until(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Whether a TCP connect to 127.0.0.1:port is refused right now (nothing listens there). */
export function connectRefused(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}
