// Helpers for the namespace tests: fixtures started inside a topology with readiness from their
// `ready PORT` line, what the host can see of namespaces and links, and bounded waiting.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NsName, Topology } from '../../src/netns/topology.js';
import { nodeArgv } from '../helpers/net.js';

type Teardown = (fn: () => unknown) => void;

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const fixture = (name: string): string => path.join(repoRoot, 'test/fixtures/netns', name);

/** The lines a child writes to stdout, and a way to wait for one matching `re`. */
export function lineReader(child: ChildProcess): { lines: string[]; waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray> } {
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve(m: RegExpExecArray): void }[] = [];
  let rest = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (d: string) => {
    rest += d;
    const parts = rest.split('\n');
    rest = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      for (const w of [...waiters]) {
        const m = w.re.exec(line);
        if (m !== null) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  });
  return {
    lines,
    waitFor(re, timeoutMs = 10_000) {
      for (const line of lines) {
        const m = re.exec(line);
        if (m !== null) return Promise.resolve(m);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(lines)}`)), timeoutMs);
        const onExit = (code: number | null, sig: string | null): void => {
          clearTimeout(timer);
          reject(new Error(`process exited (${code ?? sig}) before printing ${re}; got ${JSON.stringify(lines)}`));
        };
        child.once('exit', onExit);
        waiters.push({
          re,
          resolve: (m) => {
            clearTimeout(timer);
            child.off('exit', onExit);
            resolve(m);
          },
        });
      });
    },
  };
}

/** Starts test/fixtures/netns/server.mjs inside `ns`; resolves with its port once it is listening. */
export async function nsServer(
  teardown: Teardown,
  topo: Topology,
  ns: NsName,
  args: { proto: 'tcp' | 'udp'; host: string; port?: number; mode?: 'echo' | 'close-first'; token?: string },
): Promise<{ port: number; child: ChildProcess; waitFor(re: RegExp): Promise<RegExpExecArray> }> {
  const [cmd, argv] = nodeArgv(fixture('server.mjs'), args.proto, args.host, String(args.port ?? 0), args.mode ?? 'echo', args.token ?? 'pf');
  const child = topo.spawn(ns, cmd, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const reader = lineReader(child);
  const m = await reader.waitFor(/^ready (\d+)$/);
  return { port: Number(m[1]), child, waitFor: (re) => reader.waitFor(re) };
}

/**
 * argv to run a fixture with node, without tap's NODE_OPTIONS: tap's process-info hook (which its
 * patched spawn adds to every child's environment, whatever env we pass) writes into .tap/, which a
 * process running as nobody may not. `env -u` drops it after spawn has added it.
 */
export { nodeArgv };

/** Namespace names `ip netns list` shows right now. */
export function netnsList(): string[] {
  // stderr dropped: while other tests delete namespaces, `ip netns list` may complain about them.
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n !== '');
}

/** Interface names `ip link` shows in this process's namespace. */
export function linkNames(): string[] {
  return execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n !== '');
}

/** Whether a PID is a live process (a zombie counts as gone). */
export function pidAlive(pid: number): boolean {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return !/^State:\s+Z/m.test(status);
  } catch {
    return false;
  }
}

/** Waits until `cond()` holds, checking every 20 ms; rejects naming `what` after `timeoutMs`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Everything a socket delivers until its end, as one Buffer; rejects on error. */
export function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
    s.resume();
  });
}

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Exit of a child: its code and signal. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}
