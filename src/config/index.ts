// The one way in: specs, a file, or both → validated, frozen Mapping[] (or one PF_CONFIG_INVALID
// error listing every problem). Reads the file; binds nothing.
import { readFile } from 'node:fs/promises';
import type { Mapping } from '../api.js';
import { PortferryError, errnoCode } from '../errors.js';
import { parseConfigText } from './file.js';
import { parseSpec } from './spec.js';
import { validateMappings, type RawMapping } from './validate.js';

export { expandBindings, findConflicts, hostAddresses, parseDuration, throwIfProblems } from './validate.js';
export { DEFAULTS } from './defaults.js';

export interface LoadInput {
  /** `-p` specs. */
  readonly specs?: readonly string[];
  /** `-c` file path. */
  readonly file?: string;
  /** Options applied to the `-p` mappings (CLI flags such as --proxy-protocol, --netns). */
  readonly specOptions?: Partial<Omit<RawMapping, 'place' | 'source'>>;
  /** Container address for CNI portMappings files, which carry none. */
  readonly containerIP?: string;
}

export async function loadMappings(input: LoadInput): Promise<readonly Mapping[]> {
  const problems: PortferryError[] = [];
  const raws: RawMapping[] = [];
  const specOptions = input.specOptions ?? {};
  (input.specs ?? []).forEach((spec) => {
    const r = parseSpec(spec, `-p ${spec}`);
    if (r instanceof PortferryError) problems.push(r);
    else raws.push({ ...specOptions, ...r });
  });
  let defaults: Partial<RawMapping> = {};
  if (input.file !== undefined) {
    let text: string | undefined;
    try {
      text = await readFile(input.file, 'utf8');
    } catch (err) {
      problems.push(new PortferryError('PF_CONFIG_READ', `cannot read config file ${input.file}: ${errnoCode(err) ?? String(err)}`, { cause: err, details: { file: input.file } }));
    }
    if (text !== undefined) {
      const parsed = parseConfigText(text, input.file, input.containerIP === undefined ? {} : { containerIP: input.containerIP });
      problems.push(...parsed.problems.filter((p) => p.code !== 'PF_NO_MAPPINGS' || (input.specs ?? []).length === 0));
      raws.push(...parsed.raws);
      defaults = parsed.defaults;
    }
  }
  // File defaults apply to file mappings only; spec options were merged into the spec raws above.
  return validateMappings(
    raws.map((r) => (r.source.startsWith('-p ') ? r : { ...defaults, ...r })),
    {},
    problems,
  );
}

/**
 * Mapping objects in the YAML schema (the items of a file's `mappings:` list), as the runtime API
 * and the state file carry them → validated, frozen Mapping[]. The same checks as a file (unknown
 * keys, every value, conflicts among them); throws PF_CONFIG_INVALID with every problem.
 * `place` names where they came from in messages (`POST /v1/mappings`, a state file path).
 */
export function mappingsFromObjects(list: unknown, place: string): readonly Mapping[] {
  const parsed = parseConfigText(JSON.stringify({ mappings: list ?? null }), place);
  return validateMappings(parsed.raws, {}, parsed.problems);
}

/** The inverse of mappingsFromObjects: a Mapping in the YAML schema, every option spelt out. */
export function mappingToObject(m: Mapping): Record<string, unknown> {
  const range = (a: number, b: number): number | string => (a === b ? a : `${a}-${b}`);
  const tlvs = [...(m.proxyTlvs.uniqueId ? ['uniqueId'] : []), ...(m.proxyTlvs.crc32c ? ['crc32c'] : [])];
  const ms = (v: number): string | number => (v === 0 ? 0 : v % 3_600_000 === 0 ? `${v / 3_600_000}h` : v % 60_000 === 0 ? `${v / 60_000}m` : v % 1000 === 0 ? `${v / 1000}s` : `${v}ms`);
  return {
    name: m.name,
    protocol: m.protocol,
    ...(m.hostIP !== null ? { hostIP: m.hostIP } : {}),
    hostPort: range(m.hostPort, m.hostPortEnd),
    containerIP: m.containerIP,
    containerPort: range(m.containerPort, m.containerPortEnd),
    ...(m.netns !== null ? { netns: m.netns } : {}),
    ...(m.proxyProtocol !== null ? { proxyProtocol: m.proxyProtocol } : {}),
    ...(tlvs.length > 0 ? { proxyProtocolTLVs: tlvs } : {}),
    connectTimeout: ms(m.connectTimeoutMs),
    idleTimeout: ms(m.idleTimeoutMs),
    halfCloseTimeout: ms(m.halfCloseTimeoutMs),
    maxConnections: m.maxConnections,
    udpIdleTimeout: ms(m.udpIdleTimeoutMs),
    udpMaxFlows: m.udpMaxFlows,
  };
}
