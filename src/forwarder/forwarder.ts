// The running forwarder as a service: the registry of mappings (id, owner, where it came from),
// one queue through which every change passes (add, replace, remove, close), and an engine that
// owns the listeners (this process, or TCP in worker processes). Used alike by `portferry run`,
// the runtime API, the docker shim and library users (src/index.ts).
//
// Ids start at 1 and are never reused while the process lives (a state file carries nextId on).
// A change is all or nothing: on any error nothing of it stays bound and the registry is as before.
// With a recorder (`run --state`), a change is answered only once it is recorded; a change that
// cannot be recorded is undone and fails with the recorder's error.
import type { Listener, Mapping } from '../api.js';
import { findConflicts, mappingToObject, throwIfProblems } from '../config/index.js';
import { checkListenerBudget } from '../config/validate.js';
import { PortferryError } from '../errors.js';
import type { Logger } from '../log.js';
import { checkNetnsPaths } from './dialers.js';
import { LocalEngine, type Engine, type StatsRow } from './engine.js';

export type Origin = 'cli' | 'api' | 'state';

export interface Entry {
  readonly id: number;
  readonly owner: string | null;
  readonly origin: Origin;
  readonly mapping: Mapping;
}

export interface ForwarderOptions {
  readonly logger: Logger;
  /** The engine; default: everything in this process. */
  readonly engine?: Engine;
  /** First id to hand out (from a state file); default 1. */
  readonly nextId?: number;
}

type State = 'open' | 'closing' | 'closed';

/** The registry as a change leaves it: what a recorder writes down. */
export interface ForwarderSnapshot {
  /** The next id to hand out: above every id handed out so far, also by changes that failed. */
  readonly nextId: number;
  /** Every entry, by id. */
  readonly entries: readonly Entry[];
}

export type Recorder = (snapshot: ForwarderSnapshot) => Promise<void>;

/** Two mappings are the same when every option is (where they came from does not count). */
function sameMapping(a: Mapping, b: Mapping): boolean {
  return JSON.stringify(mappingToObject(a)) === JSON.stringify(mappingToObject(b));
}

export class Forwarder {
  readonly engine: Engine;
  private readonly entries = new Map<number, Entry>();
  private readonly changeListeners = new Set<() => void | Promise<void>>();
  private recorder: Recorder | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private state: State = 'open';
  private nextIdValue: number;
  private readonly logger: Logger;

  constructor(opts: ForwarderOptions) {
    this.logger = opts.logger;
    this.engine = opts.engine ?? new LocalEngine(opts.logger);
    this.nextIdValue = opts.nextId ?? 1;
  }

  get nextId(): number {
    return this.nextIdValue;
  }

  /**
   * Called after every change that went through (and was recorded). The change answers only once
   * every listener's promise has settled; a listener's failure is logged and changes nothing.
   */
  onChange(fn: () => void | Promise<void>): () => void {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  /**
   * Sets the recorder (`run --state` writes the state file with it; null: none). Every change
   * calls it with the registry as the change leaves it, before the change is answered: an add or
   * a replace once its listeners are bound, a remove before anything is unbound. When it throws,
   * the change is undone (listeners of an add unbound, a replaced set bound again, a remove not
   * made) and the caller gets its error, so nothing is reported done that was not recorded.
   */
  recordWith(fn: Recorder | null): void {
    this.recorder = fn;
  }

  private async record(entries: readonly Entry[]): Promise<void> {
    if (this.recorder !== null) await this.recorder({ nextId: this.nextIdValue, entries });
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const guarded = async (): Promise<T> => {
      if (this.state !== 'open') throw new PortferryError('PF_SHUTTING_DOWN', 'the forwarder is shutting down; mappings cannot be changed');
      return op();
    };
    const run = this.queue.then(guarded, guarded);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async changed(): Promise<void> {
    for (const fn of this.changeListeners) {
      try {
        await fn();
      } catch (err) {
        this.logger.error({ err }, 'a change listener failed');
      }
    }
  }

  /**
   * Adds mappings (all or nothing). `ids` restores entries from a state file with their old ids;
   * otherwise new ids are handed out. Names must be unique across the forwarder.
   */
  add(mappings: readonly Mapping[], opts: { owner?: string | null; origin: Origin; ids?: readonly number[]; owners?: readonly (string | null)[] }): Promise<Entry[]> {
    return this.serial(() => this.addNow(mappings, opts.owner ?? null, opts.origin, opts.ids, opts.owners, true));
  }

  /** Binds and registers; `commit`: record the result (undoing the add if that fails) and tell the listeners. */
  private async addNow(mappings: readonly Mapping[], owner: string | null, origin: Origin, ids: readonly number[] | undefined, owners: readonly (string | null)[] | undefined, commit: boolean): Promise<Entry[]> {
    const existing = [...this.entries.values()];
    const problems = checkListenerBudget(mappings, existing.map((e) => e.mapping));
    if (problems.length === 0) problems.push(...findConflicts(mappings, existing.map((e) => e.mapping)));
    const names = new Map(existing.map((e) => [e.mapping.name, e]));
    const portConflicts = problems.length > 0;
    mappings.forEach((m, i) => {
      const other = names.get(m.name);
      // A derived name repeats the host port: a port conflict already says it all.
      if (other !== undefined && !portConflicts) {
        problems.push(new PortferryError('PF_CONFLICT', `${m.source}: a mapping named "${m.name}" exists already (id ${other.id}, ${other.mapping.source})`, { hint: 'Give the new mapping another name (key `name`), or remove the old one first.' }));
      }
      const id = ids?.[i];
      if (id !== undefined && (this.entries.has(id) || !Number.isSafeInteger(id) || id < 1)) problems.push(new PortferryError('PF_CONFLICT', `mapping id ${id} is in use or invalid`));
      names.set(m.name, { id: id ?? 0, owner, origin, mapping: m });
    });
    throwIfProblems(problems);
    await checkNetnsPaths(mappings);
    const entries = mappings.map((mapping, i) => {
      const id = ids?.[i] ?? this.nextIdValue + i;
      const by = owners?.[i] ?? owner;
      // Later conflicts name this one by id and owner, not by the request that added it.
      const source = origin === 'cli' ? mapping.source : `mapping ${id}${by !== null ? ` of ${by}` : ''}`;
      return Object.freeze({ id, owner: by, origin, mapping: Object.freeze({ ...mapping, source }) });
    });
    // Reserved before binding: ids are never handed out twice, even when this add fails.
    this.nextIdValue = Math.max(this.nextIdValue, ...entries.map((e) => e.id + 1));
    await this.engine.add(entries);
    for (const e of entries) this.entries.set(e.id, e);
    if (commit) {
      try {
        await this.record(this.list());
      } catch (err) {
        await this.unbind(entries.map((e) => e.id));
        throw err;
      }
      await this.changed();
    }
    return entries;
  }

  /** Takes back what an add bound (its recording failed). Unbinding does not fail but is logged if it does. */
  private async unbind(ids: readonly number[]): Promise<void> {
    for (const id of ids) this.entries.delete(id);
    await this.engine.remove(ids).catch((err: unknown) => this.logger.error({ err, ids }, 'could not unbind the mappings of a change that was not recorded'));
  }

  /**
   * Makes the owner's mappings exactly `mappings`: those equal to one it has stay untouched (same
   * id, live connections kept), the rest of its old ones are removed, the new ones added. All or
   * nothing; calling it twice with the same list changes nothing the second time.
   */
  replaceOwner(owner: string, mappings: readonly Mapping[], origin: Origin = 'api'): Promise<Entry[]> {
    return this.serial(() => this.replaceNow((e) => e.owner === owner, mappings, owner, origin));
  }

  /** SIGHUP: the command line's mappings become `mappings` (same rules as replaceOwner). */
  replaceCommandLine(mappings: readonly Mapping[]): Promise<Entry[]> {
    return this.serial(() => this.replaceNow((e) => e.origin === 'cli', mappings, null, 'cli'));
  }

  private async replaceNow(mine: (e: Entry) => boolean, mappings: readonly Mapping[], owner: string | null, origin: Origin): Promise<Entry[]> {
    const have = [...this.entries.values()].filter(mine);
    const keep = new Map<Mapping, Entry>();
    for (const m of mappings) {
      const same = have.find((e) => sameMapping(e.mapping, m) && ![...keep.values()].includes(e));
      if (same !== undefined) keep.set(m, same);
    }
    const kept = new Set([...keep.values()].map((e) => e.id));
    const drop = have.filter((e) => !kept.has(e.id));
    const fresh = mappings.filter((m) => !keep.has(m));
    if (drop.length === 0 && fresh.length === 0) return mappings.map((m) => keep.get(m) as Entry);
    // Check the new ones against everything that stays before anything changes.
    const dropIds = new Set(drop.map((e) => e.id));
    throwIfProblems(findConflicts(fresh, [...this.entries.values()].filter((e) => !dropIds.has(e.id)).map((e) => e.mapping)));
    // The steps are not recorded one by one: the recorder sees the old set, then the new one.
    await this.removeNow(drop.map((e) => e.id), false);
    const restore = (): Promise<unknown> =>
      this.addNow(drop.map((e) => e.mapping), owner, origin, drop.map((e) => e.id), drop.map((e) => e.owner), false).catch((restoreErr: unknown) => {
        this.logger.error({ err: restoreErr, owner }, 'could not restore the mappings replaced by a change that failed');
      });
    let added: Entry[];
    try {
      added = await this.addNow(fresh, owner, origin, undefined, undefined, false);
    } catch (err) {
      await restore();
      throw err;
    }
    try {
      await this.record(this.list());
    } catch (err) {
      await this.unbind(added.map((e) => e.id));
      await restore();
      throw err;
    }
    await this.changed();
    const byMapping = new Map(fresh.map((m, i) => [m, added[i] as Entry]));
    return mappings.map((m) => keep.get(m) ?? (byMapping.get(m) as Entry));
  }

  /** Removes one mapping. Throws PF_API_NOT_FOUND for an unknown id. */
  remove(id: number): Promise<number[]> {
    return this.serial(async () => {
      if (!this.entries.has(id)) throw new PortferryError('PF_API_NOT_FOUND', `no mapping has id ${id}`);
      return this.removeNow([id], true);
    });
  }

  /** Removes every mapping of an owner; none is fine (idempotent). */
  removeOwner(owner: string): Promise<number[]> {
    return this.serial(() => this.removeNow([...this.entries.values()].filter((e) => e.owner === owner).map((e) => e.id), true));
  }

  /** `commit`: record first (a failure changes nothing: rebinding afterwards could fail), then tell the listeners. */
  private async removeNow(ids: readonly number[], commit: boolean): Promise<number[]> {
    if (ids.length === 0) return [];
    if (commit) await this.record(this.list().filter((e) => !ids.includes(e.id)));
    for (const id of ids) this.entries.delete(id);
    await this.engine.remove(ids);
    if (commit) await this.changed();
    return [...ids];
  }

  list(owner?: string): Entry[] {
    const all = [...this.entries.values()].sort((a, b) => a.id - b.id);
    return owner === undefined ? all : all.filter((e) => e.owner === owner);
  }

  get(id: number): Entry | undefined {
    return this.entries.get(id);
  }

  /** The listeners bound in this process (with workers, only UDP's). */
  listeners(): Listener[] {
    return this.engine.listeners();
  }

  stats(): Promise<StatsRow[]> {
    return this.engine.stats();
  }

  /** Stops accepting; open connections get graceMs; then everything is closed. Idempotent. */
  close(graceMs: number): Promise<void> {
    if (this.state !== 'open') return this.queue.then(() => undefined);
    this.state = 'closing';
    const run = this.queue.then(async () => {
      await this.engine.close(graceMs);
      this.entries.clear();
      this.state = 'closed';
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Aborts everything now, an add still binding included. Idempotent. */
  destroy(): void {
    if (this.state === 'open') this.state = 'closing';
    this.engine.destroy();
    this.entries.clear();
  }
}
