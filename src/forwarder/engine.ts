// Where listeners live. The forwarder keeps the registry (ids, owners, names) and hands every
// change to an engine: the local one binds in this process; the worker engine (workers.ts) binds
// TCP in N worker processes and UDP here. An engine's add is all or nothing.
import type { BindingStats, Listener, Mapping } from '../api.js';
import type { Logger } from '../log.js';
import { Manager } from '../proxy/manager.js';
import { DialerPool } from './dialers.js';

export interface EngineItem {
  readonly id: number;
  readonly mapping: Mapping;
}

/** One listener's counters; with workers, one row per listener per worker. */
export type StatsRow = BindingStats & { readonly id: number };

export interface Engine {
  add(items: readonly EngineItem[]): Promise<void>;
  remove(ids: readonly number[]): Promise<void>;
  stats(): Promise<StatsRow[]>;
  close(graceMs: number): Promise<void>;
  destroy(): void;
  /** Facts for the ready line (workers, their pids). */
  describe(): Record<string, unknown>;
  /** The listeners in this process (none for TCP with workers). */
  listeners(): Listener[];
}

/** Everything in this process: one manager, one dialer pool. */
export class LocalEngine implements Engine {
  readonly manager: Manager;
  readonly dialers: DialerPool;

  constructor(logger: Logger) {
    this.dialers = new DialerPool(logger);
    this.manager = new Manager({ logger, dialerFor: this.dialers.acquire, releaseDialer: this.dialers.release });
  }

  async add(items: readonly EngineItem[]): Promise<void> {
    await this.manager.add(
      items.map((i) => i.mapping),
      items.map((i) => i.id),
    );
  }

  async remove(ids: readonly number[]): Promise<void> {
    await this.manager.remove(ids);
  }

  stats(): Promise<StatsRow[]> {
    return Promise.resolve(this.manager.stats());
  }

  async close(graceMs: number): Promise<void> {
    await this.manager.close(graceMs);
    await this.dialers.closeAll();
  }

  destroy(): void {
    this.manager.destroy();
    void this.dialers.closeAll();
  }

  describe(): Record<string, unknown> {
    return {};
  }

  listeners(): Listener[] {
    return this.manager.listeners();
  }
}
