// The UDP flow table: flows by client address and port, kept in a doubly linked list ordered by
// last activity (oldest first). Touching a flow moves it to the newest end (a few pointer writes,
// no allocation), so both the least recently used flow (eviction) and the flows idle for too long
// (expiry) sit at the oldest end: evicting is O(1) and a sweep costs O(flows expired), not O(flows).
//
// Lookup is per datagram, so it builds no key string: flows are found by the client's port (a small
// integer key) and the few flows that share a port (clients on different addresses) are chained
// and told apart by address.

/** The links a flow carries so the table can find and order it without allocating per datagram. */
export interface FlowLink<F> {
  /** The client's address (as rinfo.address gives it) and port. */
  readonly ip: string;
  readonly port: number;
  /** Last datagram either way (ms, Date.now()). */
  lastActive: number;
  older: F | null;
  newer: F | null;
  /** The next flow of another client with the same port. */
  samePort: F | null;
}

export class FlowTable<F extends FlowLink<F>> {
  private readonly byPort = new Map<number, F>();
  private count = 0;
  private oldestFlow: F | null = null;
  private newestFlow: F | null = null;

  get size(): number {
    return this.count;
  }

  get(ip: string, port: number): F | undefined {
    let f = this.byPort.get(port);
    while (f !== undefined && f.ip !== ip) f = f.samePort ?? undefined;
    return f;
  }

  /** The least recently used flow, or null when the table is empty. */
  oldest(): F | null {
    return this.oldestFlow;
  }

  /** Adds a flow as the most recently used. No flow with its address and port may be in the table. */
  insert(flow: F, now: number): void {
    flow.lastActive = now;
    flow.samePort = this.byPort.get(flow.port) ?? null;
    this.byPort.set(flow.port, flow);
    this.count++;
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
    if (!this.unindex(flow)) return false;
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
      this.unindex(flow);
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
      f.samePort = null;
      f = next;
    }
    this.byPort.clear();
    this.count = 0;
    this.oldestFlow = null;
    this.newestFlow = null;
  }

  /** Takes a flow out of the port index; false when it is not there. */
  private unindex(flow: F): boolean {
    const head = this.byPort.get(flow.port);
    if (head === undefined) return false;
    if (head === flow) {
      if (flow.samePort === null) this.byPort.delete(flow.port);
      else this.byPort.set(flow.port, flow.samePort);
    } else {
      let prev = head;
      while (prev.samePort !== null && prev.samePort !== flow) prev = prev.samePort;
      if (prev.samePort !== flow) return false;
      prev.samePort = flow.samePort;
    }
    flow.samePort = null;
    this.count--;
    return true;
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
