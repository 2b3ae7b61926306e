// Raw mappings (from specs, YAML or CNI JSON, values still `unknown`) → validated, frozen Mapping[].
// Every problem of every mapping is collected; then the checks across mappings (conflicts, names,
// the listener budget); then one throw. The options come from the one table in options.ts.
import type { Binding, Mapping, Protocol } from '../api.js';
import { canonicalIP, familyOf, formatHostPort, isMappedIPv4, isUnspecified, nonUnicastKind, parseIP } from '../addr.js';
import { PortferryError, type ErrorCode } from '../errors.js';
import { MAPPING_OPTION_KEYS, parseMappingOptions, resolveMappingOptions, type MappingOptionKey, type MappingOptionValues } from './options.js';
import { Invalid, describe, parsePorts } from './values.js';

export { parseDuration, formatDuration } from './values.js';

/** The keys that say what a mapping connects (every other key is an option of OPTIONS). */
export const ADDRESS_KEYS = ['name', 'protocol', 'hostIP', 'hostPort', 'containerIP', 'containerPort'] as const;
/** Every key a mapping object may carry (a file's `mappings:` items, the runtime API). */
export const MAPPING_KEYS: readonly string[] = [...ADDRESS_KEYS, ...MAPPING_OPTION_KEYS];

/**
 * The most listeners (bindings: host address × host port) one process may hold. A mapping without
 * host IP counts twice (0.0.0.0 and ::). Bounds startup memory and descriptors; documented in the README.
 */
export const MAX_LISTENERS = 4096;

/** A mapping as written, before validation. `place` is where it came from, for messages. */
export type RawMapping = {
  readonly place: string;
  readonly source: string;
  /** Options from `defaults:` or command-line flags, parsed already; the mapping's own win. */
  readonly inherited?: Partial<MappingOptionValues>;
} & { readonly [K in (typeof ADDRESS_KEYS)[number] | MappingOptionKey]?: unknown };

/** An IP for hostIP or containerIP: canonical text, or why not (IPv4-mapped addresses refused). */
function parseAddress(value: unknown, role: 'host' | 'container'): string | Invalid {
  const ip = typeof value === 'string' ? canonicalIP(value.trim()) : null;
  if (ip === null) {
    const hint = typeof value === 'string' && /^\[.*\]$/.test(value.trim()) ? ' (write it without brackets here)' : '';
    return new Invalid('PF_IP_INVALID', `${describe(value)} is not an IPv4 or IPv6 address${hint}`);
  }
  const bytes = parseIP(ip)?.bytes;
  if (bytes !== undefined && isMappedIPv4(bytes)) {
    const v4 = ip.slice('::ffff:'.length);
    return new Invalid('PF_IP_INVALID', `${ip} is an IPv4-mapped IPv6 address, which a socket of either family refuses${role === 'host' ? ' to bind' : ''}: write ${v4}`);
  }
  if (role === 'container') {
    const kind = nonUnicastKind(ip);
    if (kind !== null) return new Invalid('PF_IP_INVALID', `${ip} is ${kind === 'unspecified' ? 'the unspecified address' : `a ${kind} address`}, not an address one can connect to: give the container's own address`);
  }
  return ip;
}

/** Validates one raw mapping; pushes problems; returns the Mapping when it has none. */
function validateOne(raw: RawMapping, problems: PortferryError[]): Mapping | null {
  const before = problems.length;
  const at = (key: string): string => (raw.place.startsWith('-p') ? raw.place : `${raw.place}.${key}`);
  const problem = (code: ErrorCode, key: string, why: string): void => {
    problems.push(new PortferryError(code, `${at(key)}: ${why}`, { details: { place: at(key), source: raw.source } }));
  };
  const missing = (key: string, what: string): void => problem('PF_CONFIG_MISSING', key, `the ${what} is missing`);
  const given = (v: unknown): boolean => v !== undefined && v !== null && v !== '';

  let protocol: Protocol = 'tcp';
  if (raw.protocol !== undefined) {
    const p = typeof raw.protocol === 'string' ? raw.protocol.toLowerCase() : raw.protocol;
    if (p === 'tcp' || p === 'udp') protocol = p;
    else problem('PF_PROTOCOL_INVALID', 'protocol', `${describe(raw.protocol)} is not a protocol: use tcp or udp`);
  }

  let hostIP: string | null = null;
  if (given(raw.hostIP)) {
    const ip = parseAddress(raw.hostIP, 'host');
    if (ip instanceof Invalid) problem(ip.code, 'hostIP', ip.why);
    else hostIP = ip;
  }
  let containerIP = '';
  if (!given(raw.containerIP)) missing('containerIP', 'container IP');
  else {
    const ip = parseAddress(raw.containerIP, 'container');
    if (ip instanceof Invalid) problem(ip.code, 'containerIP', ip.why);
    else containerIP = ip;
  }

  const ports = (key: 'hostPort' | 'containerPort', what: string): { start: number; end: number } => {
    if (raw[key] === undefined) missing(key, what);
    else {
      const r = parsePorts(raw[key]);
      if (!(r instanceof Invalid)) return r;
      problem(r.code, key, r.why);
    }
    return { start: 0, end: 0 };
  };
  const { start: hostPort, end: hostPortEnd } = ports('hostPort', 'host port');
  const { start: containerPort, end: containerPortEnd } = ports('containerPort', 'container port');
  if (hostPort > 0 && containerPort > 0 && hostPortEnd - hostPort !== containerPortEnd - containerPort) {
    problem(
      'PF_PORT_RANGE',
      'containerPort',
      `host ports ${hostPort}-${hostPortEnd} (${hostPortEnd - hostPort + 1}) and container ports ${containerPort}-${containerPortEnd} (${containerPortEnd - containerPort + 1}) differ in length; ranges must have the same length`,
    );
  }

  const own = parseMappingOptions(raw, (key, bad) => problem(bad.code, key, `${key} ${bad.why}`));
  const o = resolveMappingOptions(own, raw.inherited ?? {});
  if (o.proxyProtocol === 'v1' && protocol === 'udp') {
    problem('PF_CONFIG_VALUE', 'proxyProtocol', 'PROXY protocol v1 cannot carry UDP: use proxyProtocol: v2 for a udp mapping');
  }
  if ((o.proxyTlvs.uniqueId || o.proxyTlvs.crc32c) && o.proxyProtocol !== 'v2') {
    problem('PF_CONFIG_VALUE', 'proxyProtocolTLVs', 'TLVs exist only in PROXY protocol v2: set proxyProtocol: v2');
  }

  let name = '';
  if (raw.name !== undefined) {
    if (typeof raw.name !== 'string' || raw.name.trim() === '') problem('PF_CONFIG_VALUE', 'name', `name must be a non-empty string, got ${describe(raw.name)}`);
    else name = raw.name.trim();
  }

  if (problems.length > before) return null;
  return Object.freeze({
    name: name === '' ? derivedName({ protocol, hostIP, hostPort, hostPortEnd }) : name,
    protocol,
    hostIP,
    hostPort,
    hostPortEnd,
    containerIP,
    containerPort,
    containerPortEnd,
    ...o,
    source: raw.source,
  });
}

/** The name of a mapping that was given none: `tcp/127.0.0.1:8080`, `udp/*:9000-9010`. */
export function derivedName(m: Pick<Mapping, 'protocol' | 'hostIP' | 'hostPort' | 'hostPortEnd'>): string {
  return `${m.protocol}/${formatHostPort(m.hostIP, m.hostPort === m.hostPortEnd ? `${m.hostPort}` : `${m.hostPort}-${m.hostPortEnd}`)}`;
}

/** The addresses a mapping's host IP stands for: both wildcards when unspecified. */
export function hostAddresses(m: Mapping): readonly string[] {
  return m.hostIP === null ? ['0.0.0.0', '::'] : [m.hostIP];
}

/** How many listeners a mapping needs (host addresses × host ports). */
export function bindingCount(m: Mapping): number {
  return hostAddresses(m).length * (m.hostPortEnd - m.hostPort + 1);
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

/**
 * Mappings sharing a name (against `existing` too): a name is how a mapping is listed, removed and
 * logged, so two of them would leave one unowned. Derived names that collide are conflicts already.
 */
export function findDuplicateNames(mappings: readonly Mapping[], existing: readonly Mapping[] = []): PortferryError[] {
  const problems: PortferryError[] = [];
  const byName = new Map<string, Mapping>();
  for (const m of existing) byName.set(m.name, m);
  for (const m of mappings) {
    const other = byName.get(m.name);
    if (other === undefined) byName.set(m.name, m);
    else if (m.name !== derivedName(m) || other.name !== derivedName(other)) {
      problems.push(new PortferryError('PF_NAME_DUPLICATE', `${m.source} and ${other.source} are both named "${m.name}"`, { details: { name: m.name, places: [other.source, m.source] } }));
    }
  }
  return problems;
}

/** The listener budget: refuses a set of mappings that needs more than MAX_LISTENERS listeners. */
export function checkListenerBudget(mappings: readonly Mapping[], existing: readonly Mapping[] = []): PortferryError[] {
  const total = [...existing, ...mappings].reduce((n, m) => n + bindingCount(m), 0);
  if (total <= MAX_LISTENERS) return [];
  const largest = [...mappings].sort((a, b) => bindingCount(b) - bindingCount(a))[0];
  return [
    new PortferryError('PF_LISTENER_LIMIT', `the mappings need ${total} listeners, more than the maximum of ${MAX_LISTENERS} per process${largest === undefined ? '' : ` (the largest, ${largest.source}, needs ${bindingCount(largest)}${largest.hostIP === null ? ': one per port on 0.0.0.0 and one on ::' : ''})`}`, {
      details: { listeners: total, max: MAX_LISTENERS },
    }),
  ];
}

/** Validates every raw mapping and the set as a whole. Throws PF_CONFIG_INVALID with all problems. */
export function validateMappings(raws: readonly RawMapping[], earlier: readonly PortferryError[] = []): readonly Mapping[] {
  const problems: PortferryError[] = [...earlier];
  const mappings: Mapping[] = [];
  for (const raw of raws) {
    const m = validateOne(raw, problems);
    if (m !== null) mappings.push(m);
  }
  const budget = checkListenerBudget(mappings);
  problems.push(...budget);
  // Past the budget, a pairwise conflict check would only cost time: the set is refused anyway.
  if (budget.length === 0) problems.push(...findConflicts(mappings));
  problems.push(...findDuplicateNames(mappings));
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
