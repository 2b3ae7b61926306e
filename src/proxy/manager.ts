// The manager owns every listener. Mappings are added and removed atomically: an add either binds
// every host address and port of every new mapping, or binds none (what it bound is closed again
// and the error is thrown). The manager does not know where dialers come from: the CLI wires them.
import type { Binding, BindingStats, Listener, Mapping } from '../api.js';
import { PortferryError } from '../errors.js';
import { formatHostPort } from '../addr.js';
import { expandBindings, findConflicts, throwIfProblems } from '../config/validate.js';
import type { Logger } from '../log.js';
import type { Dialer } from './dialer.js';
import { TcpListener } from './tcp.js';
import { UdpListener } from './udp.js';

export interface ManagerDeps {
  readonly logger: Logger;
  /** The dialer for a mapping (direct, or through its network namespace). */
  readonly dialerFor: (mapping: Mapping) => Dialer;
}

interface Entry {
  readonly mapping: Mapping;
  readonly listeners: readonly Listener[];
}

export class Manager {
  private readonly entries = new Map<string, Entry>();
  private closing = false;

  constructor(private readonly deps: ManagerDeps) {}

  /** Binds every new mapping, or none. Throws PF_CONFIG_INVALID on conflicts, PF_BIND_* on bind failures. */
  async add(mappings: readonly Mapping[]): Promise<void> {
    if (this.closing) throw new PortferryError('PF_USAGE', 'the forwarder is shutting down; mappings cannot be added');
    const existing = this.list();
    const problems = findConflicts(mappings, existing);
    for (const m of mappings) {
      if (this.entries.has(m.name)) problems.push(new PortferryError('PF_CONFLICT', `a mapping named "${m.name}" exists already`, { hint: 'Give the new mapping another name, or remove the old one first.' }));
    }
    throwIfProblems(problems);

    const created: Entry[] = mappings.map((mapping) => ({ mapping, listeners: expandBindings(mapping).map((b) => this.createListener(b)) }));
    const all = created.flatMap((e) => e.listeners);
    const results = await Promise.allSettled(all.map((l) => l.listen()));
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    if (failures.length > 0) {
      for (const l of all) l.destroy();
      const errors = failures.map((f) => (f instanceof PortferryError ? f : new PortferryError('PF_BIND_FAILED', String(f), { cause: f })));
      const first = errors[0] as PortferryError;
      if (errors.length === 1) throw first;
      throw new PortferryError(first.code, `${first.message} (and ${errors.length - 1} more bind failure${errors.length > 2 ? 's' : ''}; nothing was started)`, {
        cause: first,
        hint: first.hint,
        problems: errors,
        details: first.details,
      });
    }
    for (const e of created) this.entries.set(e.mapping.name, e);
  }

  /** Removes a mapping: its listeners stop and its connections and flows are closed. */
  async remove(name: string): Promise<boolean> {
    const entry = this.entries.get(name);
    if (entry === undefined) return false;
    this.entries.delete(name);
    for (const l of entry.listeners) l.destroy();
    await Promise.all(entry.listeners.map((l) => l.close(0)));
    return true;
  }

  list(): Mapping[] {
    return [...this.entries.values()].map((e) => e.mapping);
  }

  listeners(name?: string): Listener[] {
    if (name !== undefined) return [...(this.entries.get(name)?.listeners ?? [])];
    return [...this.entries.values()].flatMap((e) => e.listeners);
  }

  stats(): BindingStats[] {
    return this.listeners().map((l) => ({
      mapping: l.binding.mapping.name,
      host: l.address() ?? l.binding.host,
      container: l.binding.container,
      stats: l.stats(),
    }));
  }

  /** Stops accepting everywhere; open connections get graceMs to finish; then they are closed. */
  async close(graceMs: number): Promise<void> {
    this.closing = true;
    await Promise.all(this.listeners().map((l) => l.close(graceMs)));
    this.entries.clear();
  }

  destroy(): void {
    this.closing = true;
    for (const l of this.listeners()) l.destroy();
    this.entries.clear();
  }

  private createListener(binding: Binding): Listener {
    const { mapping } = binding;
    const logger = this.deps.logger.child({ mapping: mapping.name, proto: mapping.protocol, host: formatHostPort(binding.host.ip, binding.host.port), target: formatHostPort(binding.container.ip, binding.container.port) });
    const deps = { dialer: this.deps.dialerFor(mapping), logger };
    return mapping.protocol === 'tcp' ? new TcpListener(binding, deps) : new UdpListener(binding, deps);
  }
}
