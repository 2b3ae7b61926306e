// Processes the bench starts: their trees (forwarders fork), CPU time and memory from /proc, lines
// they print, bounded waits, and stopping them by PID.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

interface Stat {
  readonly pid: number;
  readonly ppid: number;
  /** utime + stime + cutime + cstime, clock ticks. */
  readonly ticks: number;
}

function readStat(pid: number): Stat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name may contain spaces and parentheses: fields start after the LAST ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const f = (i: number): number => Number(rest[i - 3]); // i = field number from proc(5)
  return { pid, ppid: f(4), ticks: f(14) + f(15) + f(16) + f(17) };
}

/** The PIDs of `roots` and all their live descendants. */
export function processTree(roots: readonly number[]): number[] {
  const all: Stat[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = readStat(Number(name));
    if (s !== null) all.push(s);
  }
  const found = new Set<number>(roots.filter((p) => all.some((s) => s.pid === p)));
  let grew = true;
  while (grew) {
    grew = false;
    for (const s of all) {
      if (!found.has(s.pid) && found.has(s.ppid)) {
        found.add(s.pid);
        grew = true;
      }
    }
  }
  return [...found];
}

const TICKS_PER_SECOND = 100; // USER_HZ, 100 on every Linux architecture we run on

/**
 * CPU seconds used so far by a process tree: each live process's own time plus the time of the
 * children it has reaped (cutime/cstime), so forked helpers that already exited still count.
 */
export function treeCpuSeconds(roots: readonly number[]): number {
  let ticks = 0;
  for (const pid of processTree(roots)) ticks += readStat(pid)?.ticks ?? 0;
  return ticks / TICKS_PER_SECOND;
}

/** Resident memory of a process tree in KiB (VmRSS summed: shared pages count once per process). */
export function treeRssKiB(roots: readonly number[]): number {
  let kib = 0;
  for (const pid of processTree(roots)) {
    try {
      const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      kib += m === null ? 0 : Number(m[1]);
    } catch {
      // exited meanwhile
    }
  }
  return kib;
}

/** SIGTERM to the root, then SIGKILL to whatever of the tree is left after `graceMs`. */
export async function stopTree(roots: readonly number[], graceMs = 2000): Promise<void> {
  const pids = processTree(roots);
  const signal = (pid: number, sig: NodeJS.Signals): void => {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  for (const pid of roots) signal(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && pids.some((p) => alive(p))) await new Promise((r) => setTimeout(r, 25));
  for (const pid of pids) if (alive(pid)) signal(pid, 'SIGKILL');
}

/** Whether a PID is a live (non-zombie) process. */
export function alive(pid: number): boolean {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Collects a child's output, split into lines, as it arrives. */
export class LineReader {
  readonly lines: string[] = [];
  private waiters: { test: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  private buf = '';
  private ended = false;
  private endWaiters: (() => void)[] = [];

  constructor(stream: NodeJS.ReadableStream | null | undefined) {
    if (stream === null || stream === undefined) {
      this.ended = true;
      return;
    }
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        this.lines.push(line);
        this.waiters = this.waiters.filter((w) => {
          if (!w.test(line)) return true;
          w.resolve(line);
          return false;
        });
      }
    });
    stream.on('end', () => {
      this.ended = true;
      for (const e of this.endWaiters) e();
    });
  }

  /** The next line (or one already read but not yet taken) matching `test`; null on end or timeout. */
  waitFor(test: (line: string) => boolean, timeoutMs: number, from = 0): Promise<string | null> {
    const seen = this.lines.slice(from).find(test);
    if (seen !== undefined) return Promise.resolve(seen);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(null);
      }, timeoutMs);
      const waiter = {
        test,
        resolve: (l: string) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      this.waiters.push(waiter);
      this.endWaiters.push(() => {
        clearTimeout(timer);
        resolve(null);
      });
    });
  }

  text(): string {
    return [...this.lines, this.buf].join('\n');
  }
}

export interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

/** Waits for a child to exit, killing it (SIGKILL, by PID) after `timeoutMs`. */
export function finish(child: ChildProcess, timeoutMs: number): Promise<Finished> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  // A LineReader on the same stream may have set an encoding: chunks are then strings.
  child.stdout?.on('data', (b: Buffer | string) => out.push(typeof b === 'string' ? Buffer.from(b) : b));
  child.stderr?.on('data', (b: Buffer | string) => err.push(typeof b === 'string' ? Buffer.from(b) : b));
  return new Promise((resolve) => {
    let timedOut = false;
    let spawnError = '';
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }, timeoutMs);
    child.once('error', (e) => {
      spawnError = e.message;
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') + spawnError, timedOut });
    });
  });
}

/** The last line of `text` that parses as a JSON object, or null. */
export function lastJson(text: string): Record<string, unknown> | null {
  try {
    // The whole text first: iperf3 -J prints one pretty-printed object.
    const whole: unknown = JSON.parse(text);
    if (typeof whole === 'object' && whole !== null && !Array.isArray(whole)) return whole as Record<string, unknown>;
  } catch {
    // line by line below
  }
  const lines = text.trim().split('\n').reverse();
  for (const l of lines) {
    const s = l.trim();
    if (!s.startsWith('{')) continue;
    try {
      const v: unknown = JSON.parse(s);
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
    } catch {
      // not this line
    }
  }
  return null;
}

/** The CPUs this process may run on, as a taskset list (`0-3`), from /proc/self/status. */
export function allowedCpuList(): string {
  const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m?.[1] ?? '0';
}

/** The highest-numbered CPU of a taskset list (`0-3,8` → 8). */
export function lastCpu(list: string): number {
  return Math.max(...list.split(',').map((part) => Number(part.split('-').pop())));
}

/**
 * Sets the CPU affinity of every thread of every process in the trees under `roots` (`taskset -a
 * -p -c`); children forked later inherit it. Returns why it failed, or null. Processes that exit
 * meanwhile are not a failure.
 */
export function setAffinity(roots: readonly number[], cpus: string): string | null {
  for (const pid of processTree(roots)) {
    const r = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' });
    if (r.error !== undefined) return `taskset: ${r.error.message}`;
    if (r.status !== 0 && alive(pid)) return `taskset -a -p -c ${cpus} ${pid} failed: ${(r.stderr ?? '').trim()}`;
  }
  return null;
}

/** The affinity of every thread of a process, as Cpus_allowed_list values (for tests). */
export function threadAffinities(pid: number): string[] {
  const out: string[] = [];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
    if (m?.[1] !== undefined) out.push(m[1]);
  }
  return out;
}
