// Descriptor limits. Every TCP connection costs two descriptors (client and container) and every
// UDP flow one (its socket to the container), all under the process's RLIMIT_NOFILE (`ulimit -n`).
// UDP flows are made by whoever can send a datagram from a new source port, so without a bound a
// flood of them takes every descriptor and TCP can no longer accept or dial (issue 14). Two things
// here:
//   - raiseNofileLimit(): at start, lift the soft limit to the hard one (as Go's runtime and haproxy
//     do) and log the figure. Node itself already raises it while starting (node.cc PlatformInit),
//     so this mostly confirms and logs; when the soft limit is still below the hard one (lowered
//     after start), util-linux `prlimit --pid` lifts it, once (Node has no setrlimit).
//   - the process-wide UDP flow budget: UDP flows together (all listeners) may hold at most half of
//     the soft limit; a new flow beyond it is refused (the datagram is dropped, counted as
//     `descriptor-budget`), existing flows keep working and the other half stays for TCP.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Logger } from './log.js';

export interface NofileLimit {
  readonly soft: number;
  readonly hard: number;
}

/** The share of the soft descriptor limit that UDP flows may hold together. */
export const UDP_FLOW_SHARE = 0.5;

/**
 * TCP listeners warn when a connection leaves fewer free descriptors than this (the larger of the
 * two): once none are left, libuv sheds the connections it cannot accept with its reserve
 * descriptor and tells nobody (no callback, no error event), so the warning has to come before.
 */
export const DESCRIPTOR_HEADROOM_MIN = 8;
export const DESCRIPTOR_HEADROOM_SHARE = 0.02;

/** RLIMIT_NOFILE of this process, from /proc/self/limits; null where that cannot be read. */
export function readNofileLimit(): NofileLimit | null {
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return null;
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (m === null) return null;
  const num = (s: string | undefined): number => (s === 'unlimited' ? Infinity : Number(s));
  const soft = num(m[1]);
  const hard = num(m[2]);
  return Number.isNaN(soft) || Number.isNaN(hard) ? null : { soft, hard };
}

/** Counts the descriptors UDP flows hold, process-wide, against their share of the limit. */
export class DescriptorBudget {
  private held = 0;

  /** `limit`: the soft limit to budget from; read from the process (once) when not given. */
  constructor(private limit: number | null = null) {}

  /** The soft limit the budget is computed from (read once; refreshed by raiseNofileLimit). */
  softLimit(): number {
    this.limit ??= readNofileLimit()?.soft ?? Infinity;
    return this.limit;
  }

  /** How many descriptors UDP flows may hold together. */
  udpFlowLimit(): number {
    const soft = this.softLimit();
    return Number.isFinite(soft) ? Math.floor(soft * UDP_FLOW_SHARE) : Infinity;
  }

  /** Takes one descriptor for a new UDP flow; false (nothing taken) when the budget is spent. */
  takeUdpFlow(): boolean {
    if (this.held >= this.udpFlowLimit()) return false;
    this.held++;
    return true;
  }

  releaseUdpFlow(): void {
    if (this.held > 0) this.held--;
  }

  /**
   * Whether a socket that was just given descriptor number `fd` leaves fewer than the headroom
   * free. Linux hands out the lowest free number, so every number below `fd` is in use: at most
   * `soft - fd - 1` are left. No false alarms (holes only make the count lower), no system call.
   */
  nearLimit(fd: number): boolean {
    const soft = this.softLimit();
    return fd >= 0 && Number.isFinite(soft) && fd >= soft - 1 - Math.max(DESCRIPTOR_HEADROOM_MIN, Math.ceil(soft * DESCRIPTOR_HEADROOM_SHARE));
  }


  /** Re-reads the limit (after it was raised). */
  refresh(): void {
    this.limit = null;
  }
}

/** The budget every UDP listener of this process shares. */
export const descriptors = new DescriptorBudget();

/**
 * Raises the soft RLIMIT_NOFILE to the hard limit (with `prlimit --pid <own pid>`, util-linux)
 * and logs the resulting limit and the UDP flow budget. Never throws: when the limit cannot be read
 * or raised, it says so at warn level and the process runs with what it has.
 */
export function raiseNofileLimit(logger: Logger): NofileLimit | null {
  const before = readNofileLimit();
  if (before === null) {
    logger.warn('cannot read the descriptor limit (/proc/self/limits); running with the one inherited');
    return null;
  }
  if (before.soft < before.hard && Number.isFinite(before.hard)) {
    const r = spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${before.hard}:${before.hard}`], { encoding: 'utf8', timeout: 5000 });
    if (r.error !== undefined || r.status !== 0) {
      const why = r.error !== undefined ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : (r.stderr || `exit ${r.status}`).trim();
      logger.warn({ soft: before.soft, hard: before.hard, err: why }, 'cannot raise the descriptor limit to the hard limit (prlimit from util-linux); running with the soft limit');
    }
  }
  descriptors.refresh();
  const after = readNofileLimit() ?? before;
  logger.info(
    { nofile: after.soft, hard: after.hard, ...(after.soft !== before.soft ? { raisedFrom: before.soft } : {}), udpFlowBudget: descriptors.udpFlowLimit() },
    'descriptor limit',
  );
  return after;
}
