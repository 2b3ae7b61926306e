// The forwarder as the CLI assembles it: dialers per mapping (direct, or one namespace dialer per
// netns path), a manager, all-or-nothing binding, and the one `ready` line.
import type { Mapping } from '../api.js';
import { formatHostPort } from '../addr.js';
import { throwIfProblems } from '../config/validate.js';
import { PortferryError } from '../errors.js';
import { NetnsDialer, validateNetnsPath } from '../netns/helper.js';
import type { Logger } from '../log.js';
import { DirectDialer, type Dialer } from '../proxy/dialer.js';
import { Manager } from '../proxy/manager.js';
import { describeMapping } from './common.js';

export interface Forwarder {
  readonly manager: Manager;
  /** Drains (graceMs) then closes everything. */
  stop(graceMs: number): Promise<void>;
}

/** Dialers per mapping: direct, or one shared namespace dialer per netns path. */
export function makeDialerFor(logger: Logger): { dialerFor: (m: Mapping) => Dialer; closeAll: () => Promise<void> } {
  const direct = new DirectDialer();
  const byNetns = new Map<string, Dialer>();
  return {
    dialerFor(m: Mapping): Dialer {
      if (m.netns === null) return direct;
      const existing = byNetns.get(m.netns);
      if (existing !== undefined) return existing;
      const userns = usernsFor(m.netns);
      const dialer = new NetnsDialer({ netnsPath: m.netns, logger, ...(userns !== undefined ? { userns } : {}) });
      byNetns.set(m.netns, dialer);
      return dialer;
    },
    async closeAll(): Promise<void> {
      await Promise.all([...byNetns.values()].map((d) => d.close()));
    },
  };
}

/**
 * Rootless: a namespace of another process (/proc/PID/ns/net) is owned by that process's user
 * namespace, which an unprivileged forwarder must enter too (as rootlesskit's child does).
 */
function usernsFor(netnsPath: string): string | undefined {
  if (process.getuid?.() === 0) return undefined;
  const m = /^\/proc\/(\d+)\/ns\/net$/.exec(netnsPath);
  return m === null ? undefined : `/proc/${m[1]}/ns/user`;
}

/** Every distinct netns path must be a network namespace before anything is bound. */
async function checkNetnsPaths(mappings: readonly Mapping[]): Promise<void> {
  const paths = [...new Set(mappings.flatMap((m) => (m.netns === null ? [] : [m.netns])))];
  const problems: PortferryError[] = [];
  for (const p of paths) {
    try {
      await validateNetnsPath(p);
    } catch (err) {
      problems.push(err instanceof PortferryError ? err : new PortferryError('PF_NETNS_INVALID', `${p}: ${String(err)}`));
    }
  }
  throwIfProblems(problems);
}

/** Binds every mapping (all or nothing; throws a PortferryError with nothing left bound). Logs nothing. */
export async function bindForwarder(mappings: readonly Mapping[], logger: Logger): Promise<Forwarder> {
  await checkNetnsPaths(mappings);
  const dialers = makeDialerFor(logger);
  const manager = new Manager({ logger, dialerFor: dialers.dialerFor });
  try {
    await manager.add(mappings);
  } catch (err) {
    await dialers.closeAll();
    throw err;
  }
  return {
    manager,
    async stop(graceMs: number): Promise<void> {
      await manager.close(graceMs);
      await dialers.closeAll();
    },
  };
}

/** `tcp 127.0.0.1:8080 -> 10.88.0.2:80` for every listener, for the ready line. */
export function describeListeners(manager: Manager): string[] {
  return manager.listeners().map((l) => {
    const a = l.address() ?? l.binding.host;
    return `${l.binding.mapping.protocol} ${formatHostPort(a.ip, a.port)} -> ${formatHostPort(l.binding.container.ip, l.binding.container.port)}`;
  });
}

/** The one `ready` line: every mapping, how many listeners, the first 20 of them. */
export function logReady(logger: Logger, mappings: readonly Mapping[], listening: readonly string[], extra: Record<string, unknown> = {}): void {
  logger.info(
    { mappings: mappings.map(describeMapping), bound: listening.length, listeners: listening.length <= 20 ? listening : [...listening.slice(0, 20), `… and ${listening.length - 20} more`], ...extra },
    'ready',
  );
}

/** Binds every mapping and logs `ready`. Throws (a PortferryError) with nothing left bound. */
export async function startForwarder(mappings: readonly Mapping[], logger: Logger): Promise<Forwarder> {
  const forwarder = await bindForwarder(mappings, logger);
  logReady(logger, mappings, describeListeners(forwarder.manager));
  return forwarder;
}
