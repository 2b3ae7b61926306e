// CNI `runtimeConfig.portMappings` entries: the one parser, used by config files (file.ts) and by
// the rules model (rules/model.ts, the portmap plugin's own input). An entry is
// `{hostPort, containerPort, protocol?, hostIP?}` with single ports (CNI has no ranges).
import type { Protocol } from '../api.js';
import { canonicalIP } from '../addr.js';
import { PortferryError } from '../errors.js';
import { describe, parsePorts, Invalid } from './values.js';

/** One parsed entry. `hostIP` '' means unspecified, as in CNI. */
export interface CniPortMapEntry {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol: Protocol;
  readonly hostIP: string;
}

export const CNI_ENTRY_KEYS = ['hostPort', 'containerPort', 'protocol', 'hostIP'] as const;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * One entry → a CniPortMapEntry, or every problem with it (each naming `place.key`). Unknown keys
 * are the caller's to judge (a file refuses them; the plugin's JSON may carry more).
 */
export function parseCniPortMapping(entry: unknown, place: string): CniPortMapEntry | PortferryError[] {
  if (!isRecord(entry)) {
    return [new PortferryError('PF_CONFIG_VALUE', `${place} must be a map with hostPort, containerPort, protocol, hostIP; got ${describe(entry)}`, { details: { place } })];
  }
  const problems: PortferryError[] = [];
  const bad = (key: string, code: Invalid['code'], why: string): void => {
    problems.push(new PortferryError(code, `${place}.${key}: ${why}`, { details: { place: `${place}.${key}` } }));
  };
  const port = (key: 'hostPort' | 'containerPort'): number => {
    const v = entry[key];
    if (v === undefined) {
      bad(key, 'PF_CONFIG_MISSING', `the ${key === 'hostPort' ? 'host' : 'container'} port is missing`);
      return 0;
    }
    const r = typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v)) ? parsePorts(v) : new Invalid('PF_PORT_INVALID', `must be a single port number (CNI has no ranges), got ${describe(v)}`);
    if (r instanceof Invalid) {
      bad(key, r.code, r.why);
      return 0;
    }
    return r.start;
  };
  const hostPort = port('hostPort');
  const containerPort = port('containerPort');
  let protocol: Protocol = 'tcp';
  const p = entry['protocol'];
  if (p !== undefined && p !== '') {
    const lower = typeof p === 'string' ? p.toLowerCase() : p;
    if (lower === 'tcp' || lower === 'udp') protocol = lower;
    else bad('protocol', 'PF_PROTOCOL_INVALID', `${describe(p)} is not tcp or udp`);
  }
  let hostIP = '';
  const h = entry['hostIP'];
  if (h !== undefined && h !== null && h !== '') {
    const ip = typeof h === 'string' ? canonicalIP(h) : null;
    if (ip === null) bad('hostIP', 'PF_IP_INVALID', `${describe(h)} is not an IP address`);
    else hostIP = ip;
  }
  if (problems.length > 0) return problems;
  return Object.freeze({ hostPort, containerPort, protocol, hostIP });
}

/** A whole `portMappings` list; throws the problem (or PF_CONFIG_INVALID with every problem). */
export function parseCniPortMappings(list: unknown, place = 'portMappings'): readonly CniPortMapEntry[] {
  if (!Array.isArray(list)) throw new PortferryError('PF_CONFIG_VALUE', `${place} must be a list, got ${describe(list)}`);
  const problems: PortferryError[] = [];
  const out: CniPortMapEntry[] = [];
  list.forEach((entry: unknown, i) => {
    const r = parseCniPortMapping(entry, `${place}[${i}]`);
    if (Array.isArray(r)) problems.push(...r);
    else out.push(r);
  });
  const [first] = problems;
  if (first !== undefined) {
    throw problems.length === 1 ? first : new PortferryError('PF_CONFIG_INVALID', `${place} has ${problems.length} problems`, { problems });
  }
  return Object.freeze(out);
}
