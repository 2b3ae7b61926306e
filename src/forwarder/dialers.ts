// Dialers per mapping: one direct dialer for everything reachable by address, and one namespace
// dialer per netns path, shared by the mappings that name it and closed (its helper process
// ends) when the last of them goes.
import type { Mapping } from '../api.js';
import { throwIfProblems } from '../config/validate.js';
import { PortferryError } from '../errors.js';
import type { Logger } from '../log.js';
import { NetnsDialer, validateNetnsPath } from '../netns/helper.js';
import { DirectDialer, type Dialer } from '../proxy/dialer.js';

export class DialerPool {
  private readonly direct = new DirectDialer();
  private readonly byNetns = new Map<string, { dialer: Dialer; refs: number }>();
  private readonly closing = new Set<Promise<void>>();

  constructor(private readonly logger: Logger) {}

  /** The dialer for a mapping; every call must be matched by one release(). */
  acquire = (m: Mapping): Dialer => {
    if (m.netns === null) return this.direct;
    const held = this.byNetns.get(m.netns);
    if (held !== undefined) {
      held.refs++;
      return held.dialer;
    }
    const userns = usernsFor(m.netns);
    const dialer = new NetnsDialer({ netnsPath: m.netns, logger: this.logger, ...(userns !== undefined ? { userns } : {}) });
    this.byNetns.set(m.netns, { dialer, refs: 1 });
    return dialer;
  };

  release = (m: Mapping): void => {
    if (m.netns === null) return;
    const held = this.byNetns.get(m.netns);
    if (held === undefined) return;
    if (--held.refs > 0) return;
    this.byNetns.delete(m.netns);
    const p = held.dialer.close().finally(() => this.closing.delete(p));
    this.closing.add(p);
  };

  /** Namespace dialers alive now (for tests and stats). */
  get namespaces(): string[] {
    return [...this.byNetns.keys()];
  }

  async closeAll(): Promise<void> {
    const all = [...this.byNetns.values()];
    this.byNetns.clear();
    await Promise.all([...all.map((h) => h.dialer.close()), ...this.closing]);
  }
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
export async function checkNetnsPaths(mappings: readonly Mapping[]): Promise<void> {
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
