// The value parsers every config key is built from: durations, counts, ports. Pure; a parser
// returns the value or an Invalid saying why (the caller names the place), never throws.
import type { ErrorCode } from '../errors.js';

/** A value that failed to parse: the code and why, worded to follow the key (`idleTimeout …`). */
export class Invalid {
  constructor(
    readonly code: ErrorCode,
    readonly why: string,
  ) {}
}

/** How a value looks in a message: `string "x"`, `number 5`, `a list`, `a map`, `null`. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  return `${typeof value} ${JSON.stringify(value)}`;
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
/** The longest duration any option takes. */
const MAX_DURATION_MS = 7 * 24 * 3_600_000;

/** `500ms`, `5s`, `2m`, `1h`, `1.5s` → milliseconds. `0` (number or string) → 0 when allowZero. */
export function parseDuration(value: unknown, allowZero: boolean): number | string {
  if ((value === 0 || value === '0') && allowZero) return 0;
  if (typeof value !== 'string') {
    return `must be a duration string such as "500ms", "5s", "2m"${allowZero ? ' (or 0 for no limit)' : ''}, got ${describe(value)}`;
  }
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(value.trim());
  if (m === null) return `"${value}" is not a duration: write a number with a unit, e.g. "500ms", "5s", "2m", "1h"`;
  const ms = Math.round(Number(m[1]) * (DURATION_UNITS[m[2] ?? 's'] ?? 1000));
  if (ms <= 0) return `"${value}" must be above zero${allowZero ? ' (write 0 for no limit)' : ''}`;
  if (ms > MAX_DURATION_MS) return `"${value}" is longer than the maximum of 7 days`;
  return ms;
}

/** Milliseconds as written in a file or shown in --help: `10s`, `2m`, `1h`, `1500ms`, `0`. */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function durationParser(allowZero: boolean): (value: unknown) => number | Invalid {
  return (value) => {
    const d = parseDuration(value, allowZero);
    return typeof d === 'string' ? new Invalid('PF_DURATION_INVALID', d) : d;
  };
}

/** The largest count any option takes. */
const MAX_COUNT = 10_000_000;

/** A whole number from `min` to MAX_COUNT (a string of digits too). */
export function countParser(min: number): (value: unknown) => number | Invalid {
  return (value) => {
    const n = typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min || n > MAX_COUNT) {
      return new Invalid('PF_CONFIG_VALUE', `must be a whole number from ${min} to ${MAX_COUNT}, got ${describe(value)}`);
    }
    return n;
  };
}

/** A port or a port range: 80, `80`, `8000-8010`. Leading zeros are refused (`0080` is not 80 everywhere). */
export function parsePorts(value: unknown): { start: number; end: number } | Invalid {
  let text: string;
  if (typeof value === 'number') text = String(value);
  else if (typeof value === 'string') text = value.trim();
  else return new Invalid('PF_PORT_INVALID', `must be a port number or a range "start-end", got ${describe(value)}`);
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (m === null) return new Invalid('PF_PORT_INVALID', `"${text}" is not a port (1-65535) or a range "start-end"`);
  for (const digits of [m[1], m[2]]) {
    if (digits !== undefined && digits.length > 1 && digits.startsWith('0')) {
      return new Invalid('PF_PORT_INVALID', `"${text}": port "${digits}" has a leading zero; write ${Number(digits) === 0 ? 'a port from 1 to 65535' : `${Number(digits)}`}`);
    }
  }
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  for (const p of [start, end]) {
    if (!Number.isSafeInteger(p) || p < 1 || p > 65535) return new Invalid('PF_PORT_INVALID', `port ${p} is out of range: ports go from 1 to 65535`);
  }
  if (end < start) return new Invalid('PF_PORT_RANGE', `range "${text}" ends before it starts`);
  return { start, end };
}
