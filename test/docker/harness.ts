// Runs bin/portferry-docker-proxy.js the way dockerd does, without dockerd: through
// test/fixtures/docker/fake-dockerd.py (fd 3 a real pipe, fd 4 a socket made like dockerd's,
// stdio on /dev/null). Both processes are killed by PID in teardown.
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { nodeArgv, repoRoot } from '../helpers/net.js';

export const proxyBin = path.join(repoRoot, 'bin/portferry-docker-proxy.js');
export const fakeDockerd = path.join(repoRoot, 'test/fixtures/docker/fake-dockerd.py');
export const PYTHON = '/usr/bin/python3';

type Teardown = (fn: () => unknown) => void;

export interface ProxyRun {
  /** The proxy's PID. */
  readonly pid: number;
  /** The port of the socket passed on fd 4 (0 without `listen`). */
  readonly port: number;
  /** What the proxy wrote on fd 3 before closing it or saying `0\n` (null: nothing within 16 s). */
  readonly status: string | null;
  /** SIGINT, then its exit. */
  stop(): Promise<{ exit: number | null; signal: number | null }>;
  /** Its exit, without a signal. */
  exited(): Promise<{ exit: number | null; signal: number | null }>;
}

/**
 * Starts the proxy with `args` (`{port}` is replaced by the fd 4 socket's port). `listen` makes
 * the fd 4 socket (and the proxy gets no `-use-listen-fd` unless `args` has it).
 */
export async function runProxy(teardown: Teardown, args: readonly string[], o: { listen?: { proto: 'tcp' | 'udp'; ip: string }; env?: NodeJS.ProcessEnv } = {}): Promise<ProxyRun> {
  const [cmd, argv] = nodeArgv(proxyBin, ...args);
  const listen = o.listen === undefined ? [] : ['--listen', o.listen.proto, o.listen.ip];
  const child = spawn(PYTHON, [fakeDockerd, ...listen, '--', cmd, ...argv], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...o.env } });
  const lines = readline.createInterface({ input: child.stdout! });
  const queue: Record<string, unknown>[] = [];
  const waiters: { resolve: (rec: Record<string, unknown>) => void; reject: (err: Error) => void }[] = [];
  let closed = false;
  lines.on('line', (line) => {
    const rec = JSON.parse(line) as Record<string, unknown>;
    const w = waiters.shift();
    if (w !== undefined) w.resolve(rec);
    else queue.push(rec);
  });
  // Its stdout ends after its last line: a record still expected then will never come.
  lines.on('close', () => {
    closed = true;
    for (const w of waiters.splice(0)) w.reject(new Error('fake-dockerd ended without the expected record'));
  });
  const next = (): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const q = queue.shift();
      if (q !== undefined) return resolve(q);
      if (closed) return reject(new Error('fake-dockerd ended without the expected record'));
      waiters.push({ resolve, reject });
    });
  let proxyPid = 0;
  teardown(() => {
    for (const pid of [proxyPid, child.pid ?? 0]) {
      if (pid <= 0) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
  const started = await next();
  proxyPid = Number(started['pid']);
  const status = (await next())['status'] as string | null;
  const finish = async (command: string): Promise<{ exit: number | null; signal: number | null }> => {
    child.stdin!.write(`${command}\n`);
    const rec = await next();
    return { exit: rec['exit'] as number | null, signal: rec['signal'] as number | null };
  };
  return { pid: proxyPid, port: Number(started['port']), status, stop: () => finish('stop'), exited: () => finish('wait') };
}
