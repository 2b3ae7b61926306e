// The manager owns every listener of one process. Changes are serialised: add, remove and close
// run one after another through one queue, so two adds of the same name cannot both bind, and a
// close that arrives while an add is binding waits for it and then closes what it bound. An add
// either binds every host address and port of every new mapping, or binds none (what it bound is
// destroyed again and the error is thrown). Names and ids are reserved before anything is bound.
// The manager does not know where dialers come from: its owner (src/forwarder) hands them in.
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
  /** Called once for every dialerFor() whose mapping is gone again (removed, failed to bind, closed). */
  readonly releaseDialer?: (mapping: Mapping) => void;
}

export interface ManagedMapping {
  readonly id: number;
  readonly mapping: Mapping;
  readonly listeners: readonly Listener[];
}

type State = 'open' | 'closing' | 'closed';

export class Manager {
  private readonly entries = new Map<number, ManagedMapping>();
  /** Listeners of the add being bound right now: destroy() must reach them too. */
  private readonly binding = new Set<Listener>();
  private queue: Promise<unknown> = Promise.resolve();
  private state: State = 'open';
  private nextId = 1;

  constructor(private readonly deps: ManagerDeps) {}

  /** Runs op after every change queued before it. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private shuttingDown(): PortferryError {
    return new PortferryError('PF_SHUTTING_DOWN', 'the forwarder is shutting down; mappings cannot be added');
  }

  /**
   * Binds every new mapping, or none. `ids` (one per mapping) come from the owner; without them the
   * manager numbers them. Throws PF_CONFIG_INVALID on conflicts or a name/id in use, PF_BIND_* on
   * bind failures, PF_SHUTTING_DOWN once close() or destroy() was called.
   */
  add(mappings: readonly Mapping[], ids?: readonly number[]): Promise<ManagedMapping[]> {
    if (this.state !== 'open') return Promise.reject(this.shuttingDown());
    return this.serial(() => this.addNow(mappings, ids));
  }

  private async addNow(mappings: readonly Mapping[], ids: readonly number[] | undefined): Promise<ManagedMapping[]> {
    if (this.state !== 'open') throw this.shuttingDown();
    const problems = findConflicts(mappings, this.list());
    const names = new Set([...this.entries.values()].map((e) => e.mapping.name));
    const wanted = mappings.map((_m, i) => ids?.[i] ?? this.nextId + i);
    mappings.forEach((m, i) => {
      if (names.has(m.name)) problems.push(new PortferryError('PF_CONFLICT', `a mapping named "${m.name}" exists already`, { hint: 'Give the new mapping another name, or remove the old one first.' }));
      names.add(m.name);
      const id = wanted[i] ?? 0;
      if (this.entries.has(id) || wanted.indexOf(id) !== i) problems.push(new PortferryError('PF_CONFLICT', `mapping id ${id} is in use`));
    });
    throwIfProblems(problems);
    this.nextId = Math.max(this.nextId, ...wanted.map((id) => id + 1));

    const created = mappings.map((mapping, i) => {
      const dialer = this.deps.dialerFor(mapping);
      return { id: wanted[i] ?? 0, mapping, listeners: expandBindings(mapping).map((b) => this.createListener(b, dialer)) };
    });
    const all = created.flatMap((e) => e.listeners);
    for (const l of all) this.binding.add(l);
    const results = await Promise.allSettled(all.map((l) => l.listen()));
    for (const l of all) this.binding.delete(l);
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    if (failures.length > 0 || this.state !== 'open') {
      for (const l of all) l.destroy();
      for (const e of created) this.deps.releaseDialer?.(e.mapping);
      if (failures.length === 0) throw this.shuttingDown();
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
    for (const e of created) this.entries.set(e.id, e);
    return created;
  }

  /** Removes mappings by id (or by name): their listeners stop, their connections and flows close. */
  remove(key: number | string | readonly number[]): Promise<number[]> {
    return this.serial(async () => {
      const keys = Array.isArray(key) ? key : [key];
      const gone = [...this.entries.values()].filter((e) => keys.includes(e.id) || keys.includes(e.mapping.name));
      for (const e of gone) this.entries.delete(e.id);
      for (const l of gone.flatMap((e) => e.listeners)) l.destroy();
      await Promise.all(gone.flatMap((e) => e.listeners).map((l) => l.close(0)));
      for (const e of gone) this.deps.releaseDialer?.(e.mapping);
      return gone.map((e) => e.id);
    });
  }

  list(): Mapping[] {
    return [...this.entries.values()].map((e) => e.mapping);
  }

  entry(id: number): ManagedMapping | undefined {
    return this.entries.get(id);
  }

  managed(): ManagedMapping[] {
    return [...this.entries.values()];
  }

  listeners(name?: string): Listener[] {
    const entries = [...this.entries.values()];
    return (name === undefined ? entries : entries.filter((e) => e.mapping.name === name)).flatMap((e) => e.listeners);
  }

  stats(): (BindingStats & { id: number })[] {
    return [...this.entries.values()].flatMap((e) =>
      e.listeners.map((l) => ({ id: e.id, mapping: l.binding.mapping.name, host: l.address() ?? l.binding.host, container: l.binding.container, stats: l.stats() })),
    );
  }

  /** Stops accepting everywhere; open connections get graceMs to finish; then they are closed. */
  close(graceMs: number): Promise<void> {
    if (this.state === 'open') this.state = 'closing';
    return this.serial(async () => {
      const entries = [...this.entries.values()];
      this.entries.clear();
      await Promise.all(entries.flatMap((e) => e.listeners).map((l) => l.close(graceMs)));
      for (const e of entries) this.deps.releaseDialer?.(e.mapping);
      this.state = 'closed';
    });
  }

  /** Aborts everything now, including an add that is still binding. Idempotent. */
  destroy(): void {
    if (this.state === 'open') this.state = 'closing';
    for (const l of this.binding) l.destroy();
    const entries = [...this.entries.values()];
    this.entries.clear();
    for (const l of entries.flatMap((e) => e.listeners)) l.destroy();
    for (const e of entries) this.deps.releaseDialer?.(e.mapping);
  }

  private createListener(binding: Binding, dialer: Dialer): Listener {
    const { mapping } = binding;
    const logger = this.deps.logger.child({ mapping: mapping.name, proto: mapping.protocol, host: formatHostPort(binding.host.ip, binding.host.port), target: formatHostPort(binding.container.ip, binding.container.port) });
    const deps = { dialer, logger };
    return mapping.protocol === 'tcp' ? new TcpListener(binding, deps) : new UdpListener(binding, deps);
  }
}
