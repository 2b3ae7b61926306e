// Raw mappings (from specs, YAML or CNI JSON, values still `unknown`) → validated, frozen Mapping[].
// Every problem of every mapping is collected; then conflicts across mappings; then one throw.
import net from 'node:net';
import type { Binding, Mapping, Protocol, ProxyProtocolVersion } from '../api.js';
import { formatHostPort, isUnspecified } from '../addr.js';
import { PortferryError } from '../errors.js';
import { DEFAULTS } from './defaults.js';

/** A mapping as written, before validation. `place` is where it came from, for messages. */
export interface RawMapping {
  readonly place: string;
  readonly source: string;
  readonly name?: unknown;
  readonly protocol?: unknown;
  readonly hostIP?: unknown;
  readonly hostPort?: unknown;
  readonly containerIP?: unknown;
  readonly containerPort?: unknown;
  readonly netns?: unknown;
  readonly proxyProtocol?: unknown;
  readonly proxyProtocolTLVs?: unknown;
  readonly connectTimeout?: unknown;
  readonly idleTimeout?: unknown;
  readonly halfCloseTimeout?: unknown;
  readonly maxConnections?: unknown;
  readonly udpIdleTimeout?: unknown;
  readonly udpMaxFlows?: unknown;
}

/** The per-mapping option keys (also allowed under `defaults:` in a file, and as CLI flags). */
export const OPTION_KEYS = [
  'netns',
  'proxyProtocol',
  'proxyProtocolTLVs',
  'connectTimeout',
  'idleTimeout',
  'halfCloseTimeout',
  'maxConnections',
  'udpIdleTimeout',
  'udpMaxFlows',
] as const;
export const MAPPING_KEYS = ['name', 'protocol', 'hostIP', 'hostPort', 'containerIP', 'containerPort', ...OPTION_KEYS] as const;

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
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

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  return `${typeof value} ${JSON.stringify(value)}`;
}

/** A port or port range: `80`, 80, `8000-8010`. */
function parsePorts(value: unknown): { start: number; end: number } | { error: 'PF_PORT_INVALID' | 'PF_PORT_RANGE'; why: string } {
  let text: string;
  if (typeof value === 'number') text = String(value);
  else if (typeof value === 'string') text = value.trim();
  else return { error: 'PF_PORT_INVALID', why: `must be a port number or a range "start-end", got ${describe(value)}` };
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (m === null) return { error: 'PF_PORT_INVALID', why: `"${text}" is not a port (1-65535) or a range "start-end"` };
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  for (const p of [start, end]) {
    if (!Number.isSafeInteger(p) || p < 1 || p > 65535) return { error: 'PF_PORT_INVALID', why: `port ${p} is out of range: ports go from 1 to 65535` };
  }
  if (end < start) return { error: 'PF_PORT_RANGE', why: `range "${text}" ends before it starts` };
  return { start, end };
}

/** Canonical text of an IP literal (lowercase, compressed IPv6), or null. */
export function canonicalIP(ip: string): string | null {
  const family = net.isIP(ip);
  if (family === 4) return ip;
  if (family === 6) {
    try {
      return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
    } catch {
      return null;
    }
  }
  return null;
}

export function familyOf(ip: string): 4 | 6 {
  return net.isIPv6(ip) ? 6 : 4;
}

/** Validates one raw mapping; pushes problems; returns the Mapping when it has none. */
function validateOne(raw: RawMapping, defaults: Partial<RawMapping>, problems: PortferryError[]): Mapping | null {
  const before = problems.length;
  const at = (key: string): string => (raw.place.startsWith('-p') ? raw.place : `${raw.place}.${key}`);
  const problem = (code: ConstructorParameters<typeof PortferryError>[0], key: string, why: string): void => {
    problems.push(new PortferryError(code, `${at(key)}: ${why}`, { details: { place: at(key), source: raw.source } }));
  };
  const opt = <K extends keyof RawMapping>(key: K): RawMapping[K] | undefined =>
    raw[key] !== undefined ? raw[key] : (defaults[key] as RawMapping[K] | undefined);

  // protocol
  let protocol: Protocol = 'tcp';
  if (raw.protocol !== undefined) {
    const p = typeof raw.protocol === 'string' ? raw.protocol.toLowerCase() : raw.protocol;
    if (p === 'tcp' || p === 'udp') protocol = p;
    else problem('PF_PROTOCOL_INVALID', 'protocol', `${describe(raw.protocol)} is not a protocol: use tcp or udp`);
  }

  // addresses
  let hostIP: string | null = null;
  if (raw.hostIP !== undefined && raw.hostIP !== null && raw.hostIP !== '') {
    const ip = typeof raw.hostIP === 'string' ? canonicalIP(raw.hostIP) : null;
    if (ip === null) problem('PF_IP_INVALID', 'hostIP', `${describe(raw.hostIP)} is not an IPv4 or IPv6 address`);
    else hostIP = ip;
  }
  let containerIP = '';
  if (raw.containerIP === undefined || raw.containerIP === null || raw.containerIP === '') {
    problems.push(new PortferryError('PF_CONFIG_MISSING', `${at('containerIP')}: the container IP is missing`, { details: { place: at('containerIP') } }));
  } else {
    const ip = typeof raw.containerIP === 'string' ? canonicalIP(raw.containerIP) : null;
    if (ip === null) problem('PF_IP_INVALID', 'containerIP', `${describe(raw.containerIP)} is not an IPv4 or IPv6 address`);
    else if (isUnspecified(ip)) problem('PF_IP_INVALID', 'containerIP', `${ip} is not an address one can connect to: give the container's address`);
    else containerIP = ip;
  }

  // ports
  let hostPort = 0, hostPortEnd = 0, containerPort = 0, containerPortEnd = 0;
  if (raw.hostPort === undefined) {
    problems.push(new PortferryError('PF_CONFIG_MISSING', `${at('hostPort')}: the host port is missing`, { details: { place: at('hostPort') } }));
  } else {
    const r = parsePorts(raw.hostPort);
    if ('error' in r) problem(r.error, 'hostPort', r.why);
    else ({ start: hostPort, end: hostPortEnd } = r);
  }
  if (raw.containerPort === undefined) {
    problems.push(new PortferryError('PF_CONFIG_MISSING', `${at('containerPort')}: the container port is missing`, { details: { place: at('containerPort') } }));
  } else {
    const r = parsePorts(raw.containerPort);
    if ('error' in r) problem(r.error, 'containerPort', r.why);
    else ({ start: containerPort, end: containerPortEnd } = r);
  }
  if (hostPort > 0 && containerPort > 0 && hostPortEnd - hostPort !== containerPortEnd - containerPort) {
    problem(
      'PF_PORT_RANGE',
      'containerPort',
      `host ports ${hostPort}-${hostPortEnd} (${hostPortEnd - hostPort + 1}) and container ports ${containerPort}-${containerPortEnd} (${containerPortEnd - containerPort + 1}) differ in length; ranges must have the same length`,
    );
  }

  // options
  const duration = (key: 'connectTimeout' | 'idleTimeout' | 'halfCloseTimeout' | 'udpIdleTimeout', allowZero: boolean, dflt: number): number => {
    const v = opt(key);
    if (v === undefined) return dflt;
    const d = parseDuration(v, allowZero);
    if (typeof d === 'string') {
      problem('PF_DURATION_INVALID', key, `${key} ${d}`);
      return dflt;
    }
    return d;
  };
  const count = (key: 'maxConnections' | 'udpMaxFlows', min: number, dflt: number): number => {
    const v = opt(key);
    if (v === undefined) return dflt;
    const n = typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min || n > 10_000_000) {
      problem('PF_CONFIG_VALUE', key, `${key} must be a whole number from ${min} to 10000000, got ${describe(v)}`);
      return dflt;
    }
    return n;
  };
  const connectTimeoutMs = duration('connectTimeout', false, DEFAULTS.connectTimeoutMs);
  const idleTimeoutMs = duration('idleTimeout', true, DEFAULTS.idleTimeoutMs);
  const halfCloseTimeoutMs = duration('halfCloseTimeout', true, DEFAULTS.halfCloseTimeoutMs);
  const udpIdleTimeoutMs = duration('udpIdleTimeout', false, DEFAULTS.udpIdleTimeoutMs);
  const maxConnections = count('maxConnections', 0, DEFAULTS.maxConnections);
  const udpMaxFlows = count('udpMaxFlows', 1, DEFAULTS.udpMaxFlows);

  let proxyProtocol: ProxyProtocolVersion | null = null;
  const pp = opt('proxyProtocol');
  if (pp !== undefined && pp !== null && pp !== false && pp !== 'none' && pp !== 'off') {
    const v = typeof pp === 'string' ? pp.toLowerCase() : typeof pp === 'number' ? `v${pp}` : pp;
    if (v === 'v1' || v === 'v2') proxyProtocol = v;
    else problem('PF_CONFIG_VALUE', 'proxyProtocol', `proxyProtocol must be v1 or v2, got ${describe(pp)}`);
  }
  if (proxyProtocol === 'v1' && protocol === 'udp') {
    problem('PF_CONFIG_VALUE', 'proxyProtocol', 'PROXY protocol v1 cannot carry UDP: use proxyProtocol: v2 for a udp mapping');
  }
  let uniqueId = false;
  let crc32c = false;
  const tlvs = opt('proxyProtocolTLVs');
  if (tlvs !== undefined) {
    const list = typeof tlvs === 'string' ? tlvs.split(',').map((s) => s.trim()).filter((s) => s !== '') : tlvs;
    if (!Array.isArray(list)) {
      problem('PF_CONFIG_VALUE', 'proxyProtocolTLVs', `proxyProtocolTLVs must be a list of uniqueId, crc32c; got ${describe(tlvs)}`);
    } else {
      for (const item of list as unknown[]) {
        if (item === 'uniqueId') uniqueId = true;
        else if (item === 'crc32c') crc32c = true;
        else problem('PF_CONFIG_VALUE', 'proxyProtocolTLVs', `unknown TLV ${describe(item)}: allowed are uniqueId, crc32c`);
      }
      if ((uniqueId || crc32c) && proxyProtocol !== 'v2') {
        problem('PF_CONFIG_VALUE', 'proxyProtocolTLVs', 'TLVs exist only in PROXY protocol v2: set proxyProtocol: v2');
      }
    }
  }

  let netns: string | null = null;
  const ns = opt('netns');
  if (ns !== undefined && ns !== null && ns !== '') {
    if (typeof ns !== 'string' || !ns.startsWith('/')) {
      problem('PF_NETNS_INVALID', 'netns', `netns must be an absolute path such as /proc/1234/ns/net or /run/netns/NAME, got ${describe(ns)}`);
    } else netns = ns;
  }

  let name = '';
  if (raw.name !== undefined) {
    if (typeof raw.name !== 'string' || raw.name.trim() === '') problem('PF_CONFIG_VALUE', 'name', `name must be a non-empty string, got ${describe(raw.name)}`);
    else name = raw.name.trim();
  }

  if (problems.length > before) return null;
  const ports = hostPort === hostPortEnd ? `${hostPort}` : `${hostPort}-${hostPortEnd}`;
  if (name === '') name = `${protocol}/${formatHostPort(hostIP, ports)}`;
  return Object.freeze({
    name,
    protocol,
    hostIP,
    hostPort,
    hostPortEnd,
    containerIP,
    containerPort,
    containerPortEnd,
    netns,
    proxyProtocol,
    proxyTlvs: Object.freeze({ uniqueId, crc32c }),
    connectTimeoutMs,
    idleTimeoutMs,
    halfCloseTimeoutMs,
    maxConnections,
    udpIdleTimeoutMs,
    udpMaxFlows,
    source: raw.source,
  });
}

/** The addresses a mapping's host IP stands for: both wildcards when unspecified. */
export function hostAddresses(m: Mapping): readonly string[] {
  return m.hostIP === null ? ['0.0.0.0', '::'] : [m.hostIP];
}

/** One Binding per host address and host port. */
export function expandBindings(m: Mapping): Binding[] {
  const out: Binding[] = [];
  for (let i = 0; i <= m.hostPortEnd - m.hostPort; i++) {
    for (const ip of hostAddresses(m)) {
      out.push(Object.freeze({ mapping: m, host: Object.freeze({ ip, port: m.hostPort + i }), container: Object.freeze({ ip: m.containerIP, port: m.containerPort + i }) }));
    }
  }
  return out;
}

/** Whether two host addresses (same port and protocol) would collide when bound. */
export function addressesOverlap(a: string, b: string): boolean {
  if (a === b) return true;
  if (familyOf(a) !== familyOf(b)) return false;
  return isUnspecified(a) || isUnspecified(b);
}

/** Conflicts among mappings (and against `existing`, for runtime additions). */
export function findConflicts(mappings: readonly Mapping[], existing: readonly Mapping[] = []): PortferryError[] {
  const problems: PortferryError[] = [];
  const seen: { m: Mapping; ip: string; start: number; end: number }[] = [];
  for (const m of existing) for (const ip of hostAddresses(m)) seen.push({ m, ip, start: m.hostPort, end: m.hostPortEnd });
  for (const m of mappings) {
    const mine = hostAddresses(m).map((ip) => ({ m, ip, start: m.hostPort, end: m.hostPortEnd }));
    let reported = false;
    for (const a of mine) {
      if (reported) break;
      for (const b of seen) {
        if (b.m.protocol !== m.protocol || b.m === m) continue;
        if (a.start > b.end || b.start > a.end) continue;
        if (!addressesOverlap(a.ip, b.ip)) continue;
        const port = Math.max(a.start, b.start);
        problems.push(
          new PortferryError(
            'PF_CONFLICT',
            `${m.source} (${m.name}) and ${b.m.source} (${b.m.name}) both claim ${m.protocol} ${formatHostPort(a.ip, port)}${b.ip !== a.ip ? ` (overlapping ${formatHostPort(b.ip, port)})` : ''}`,
            { details: { port, protocol: m.protocol } },
          ),
        );
        reported = true;
        break;
      }
    }
    seen.push(...mine);
  }
  return problems;
}

/** Validates every raw mapping and the set as a whole. Throws PF_CONFIG_INVALID with all problems. */
export function validateMappings(raws: readonly RawMapping[], defaults: Partial<RawMapping> = {}, earlier: readonly PortferryError[] = []): readonly Mapping[] {
  const problems: PortferryError[] = [...earlier];
  const mappings: Mapping[] = [];
  for (const raw of raws) {
    const m = validateOne(raw, defaults, problems);
    if (m !== null) mappings.push(m);
  }
  problems.push(...findConflicts(mappings));
  if (problems.length === 0 && mappings.length === 0) {
    problems.push(new PortferryError('PF_NO_MAPPINGS', 'no mapping was given'));
  }
  throwIfProblems(problems);
  return Object.freeze(mappings);
}

export function throwIfProblems(problems: readonly PortferryError[]): void {
  if (problems.length === 0) return;
  const only = problems[0];
  if (problems.length === 1 && only !== undefined && only.code === 'PF_NO_MAPPINGS') throw only;
  throw new PortferryError('PF_CONFIG_INVALID', `the configuration has ${problems.length} problem${problems.length === 1 ? '' : 's'}; nothing was started`, { problems });
}
