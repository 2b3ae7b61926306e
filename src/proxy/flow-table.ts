// The UDP flow table: flows by client key, kept in a doubly linked list ordered by last activity
// (oldest first). Touching a flow moves it to the newest end (a few pointer writes, no allocation),
// so both the least recently used flow (eviction) and the flows idle for too long (expiry) sit at
// the oldest end: evicting is O(1) and a sweep costs O(flows expired), not O(flows).

/** The links a flow carries so the table can order it without allocating per touch. */
export interface FlowLink<F> {
  readonly key: string;
  /** Last datagram either way (ms, Date.now()). */
  lastActive: number;
  older: F | null;
  newer: F | null;
}

export class FlowTable<F extends FlowLink<F>> {
  private readonly byKey = new Map<string, F>();
  private oldestFlow: F | null = null;
  private newestFlow: F | null = null;

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): F | undefined {
    return this.byKey.get(key);
  }

  /** The least recently used flow, or null when the table is empty. */
  oldest(): F | null {
    return this.oldestFlow;
  }

  /** Adds a flow as the most recently used. Its key must not be in the table. */
  insert(flow: F, now: number): void {
    flow.lastActive = now;
    this.byKey.set(flow.key, flow);
    this.append(flow);
  }

  /** Marks a flow as used now: it becomes the most recently used. */
  touch(flow: F, now: number): void {
    flow.lastActive = now;
    if (flow === this.newestFlow) return;
    this.unlink(flow);
    this.append(flow);
  }

  /** Removes a flow; false when it was not in the table. */
  remove(flow: F): boolean {
    if (this.byKey.get(flow.key) !== flow) return false;
    this.byKey.delete(flow.key);
    this.unlink(flow);
    return true;
  }

  /**
   * Removes every flow last active before `cutoff`, oldest first, calling `onExpired` for each after
   * it has left the table. Returns how many were removed.
   */
  sweep(cutoff: number, onExpired: (flow: F) => void): number {
    let removed = 0;
    let flow = this.oldestFlow;
    while (flow !== null && flow.lastActive < cutoff) {
      this.byKey.delete(flow.key);
      this.unlink(flow);
      removed++;
      onExpired(flow);
      flow = this.oldestFlow;
    }
    return removed;
  }

  /** Every flow, oldest first (a snapshot: the caller may remove flows while iterating it). */
  snapshot(): F[] {
    const out: F[] = [];
    for (let f = this.oldestFlow; f !== null; f = f.newer) out.push(f);
    return out;
  }

  clear(): void {
    for (let f = this.oldestFlow; f !== null; ) {
      const next: F | null = f.newer;
      f.older = null;
      f.newer = null;
      f = next;
    }
    this.byKey.clear();
    this.oldestFlow = null;
    this.newestFlow = null;
  }

  private append(flow: F): void {
    flow.older = this.newestFlow;
    flow.newer = null;
    if (this.newestFlow === null) this.oldestFlow = flow;
    else this.newestFlow.newer = flow;
    this.newestFlow = flow;
  }

  private unlink(flow: F): void {
    const { older, newer } = flow;
    if (older === null) this.oldestFlow = newer;
    else older.newer = newer;
    if (newer === null) this.newestFlow = older;
    else newer.older = older;
    flow.older = null;
    flow.newer = null;
  }
}
