// The one rate-limited warner of the data plane. Warnings that can repeat per datagram or per
// connection (a full flow table, a container that refuses, EMFILE) are logged at most once per
// interval and key; the next line says how many were held back in between (`suppressed`), so a
// flood costs one log line per interval and its size is still visible.
import type { Logger } from '../log.js';

/** How often one kind of warning may be logged by default. */
export const WARN_INTERVAL_MS = 10_000;

export class RateLimitedWarner {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = WARN_INTERVAL_MS,
  ) {}

  /**
   * Logs `msg` with `fields` at warn level unless a warning with the same key was logged less than
   * the interval ago (then it is only counted). Returns whether it was logged.
   */
  warn(key: string, fields: Record<string, unknown>, msg: string, now = Date.now()): boolean {
    const seen = this.last.get(key);
    if (seen !== undefined && now - seen.at < this.intervalMs) {
      seen.suppressed++;
      return false;
    }
    const suppressed = seen?.suppressed ?? 0;
    this.last.set(key, { at: now, suppressed: 0 });
    this.logger.warn(suppressed > 0 ? { ...fields, suppressed } : fields, msg);
    return true;
  }
}
