// The one way in: specs, a file, or both → validated, frozen Mapping[] (or one PF_CONFIG_INVALID
// error listing every problem). Reads the file (regular files only, bounded: read.ts); binds nothing.
import path from 'node:path';
import type { Mapping } from '../api.js';
import { PortferryError } from '../errors.js';
import { parseConfigText } from './file.js';
import { OPTIONS, parseMappingOptions, writeMappingOptions, type MappingOptionKey } from './options.js';
import { readConfigFile } from './read.js';
import { parseSpec } from './spec.js';
import { validateMappings, type RawMapping } from './validate.js';

export {
  ADDRESS_KEYS,
  MAPPING_KEYS,
  MAX_LISTENERS,
  bindingCount,
  checkListenerBudget,
  derivedName,
  expandBindings,
  findConflicts,
  findDuplicateNames,
  hostAddresses,
  parseDuration,
  formatDuration,
  throwIfProblems,
  validateMappings,
} from './validate.js';
export { DEFAULTS, OPTIONS, MAPPING_OPTION_KEYS, optionSchema, renderOptionsTable, type OptionDescription, type OptionKey, type MappingOptionKey, type OptionScope } from './options.js';
export { MAX_CONFIG_BYTES, readConfigFile } from './read.js';
export { MAX_YAML_ALIASES } from './file.js';
export { parseCniPortMappings, type CniPortMapEntry } from './cni.js';

export interface LoadInput {
  /** `-p` specs. */
  readonly specs?: readonly string[];
  /** `-c` file path (kept for library callers; `files` takes several). */
  readonly file?: string;
  /**
   * `-c` file paths, each given once: their mappings are merged with the `-p` ones, each file's
   * `defaults:` applying to its own mappings only; names must be unique across all of them
   * (PF_NAME_DUPLICATE names both places) and host ports must not collide (PF_CONFLICT).
   */
  readonly files?: readonly string[];
  /** Options for the `-p` mappings (command-line flags such as --proxy-protocol, --netns), by option key. */
  readonly specOptions?: Partial<Record<MappingOptionKey, unknown>>;
  /** Container address for CNI portMappings files, which carry none. */
  readonly containerIP?: string;
}

export async function loadMappings(input: LoadInput): Promise<readonly Mapping[]> {
  const problems: PortferryError[] = [];
  const raws: RawMapping[] = [];
  const specs = input.specs ?? [];
  // Flags are parsed once, named by their flag; the -p mappings inherit them.
  const inherited = parseMappingOptions(input.specOptions ?? {}, (key, bad) => {
    const flag = (OPTIONS[key] as { flag?: { spec: string } }).flag?.spec.split(' ')[0] ?? key;
    problems.push(new PortferryError(bad.code, `${flag}: ${key} ${bad.why}`, { details: { place: flag } }));
  });
  for (const spec of specs) {
    const r = parseSpec(spec, `-p ${spec}`);
    if (r instanceof PortferryError) problems.push(r);
    else raws.push({ ...r, inherited });
  }
  const files = [...(input.file !== undefined ? [input.file] : []), ...(input.files ?? [])];
  // A file given twice would only report each of its mappings as a duplicate of itself.
  const seen = new Map<string, string>();
  const noMappings: PortferryError[] = [];
  for (const file of files) {
    const key = path.resolve(file);
    const first = seen.get(key);
    if (first !== undefined) {
      problems.push(new PortferryError('PF_CONFIG_REPEATED', `-c ${file}: the file is given twice (first as -c ${first})`, { details: { file } }));
      continue;
    }
    seen.set(key, file);
    let text: string | undefined;
    try {
      text = await readConfigFile(file);
    } catch (err) {
      if (!(err instanceof PortferryError)) throw err;
      problems.push(err);
    }
    if (text !== undefined) {
      const parsed = parseConfigText(text, file, input.containerIP === undefined ? {} : { containerIP: input.containerIP });
      for (const p of parsed.problems) (p.code === 'PF_NO_MAPPINGS' ? noMappings : problems).push(p);
      for (const r of parsed.raws) raws.push(r);
    }
  }
  // A file without a `mappings` list is an error only when nothing else gives a mapping (as
  // `-c FILE -p SPEC` always allowed); with nothing at all, each such file is named.
  if (specs.length === 0 && raws.length === 0) problems.push(...noMappings);
  return validateMappings(raws, problems);
}

/**
 * Mapping objects in the YAML schema (the items of a file's `mappings:` list), as the runtime API
 * and the state file carry them → validated, frozen Mapping[]. The same checks as a file (unknown
 * keys, every value, conflicts and names among them); throws PF_CONFIG_INVALID with every problem.
 * `place` names where they came from in messages (`POST /v1/mappings`, a state file path).
 */
export function mappingsFromObjects(list: unknown, place: string): readonly Mapping[] {
  const parsed = parseConfigText(JSON.stringify({ mappings: list ?? null }), place);
  return validateMappings(parsed.raws, parsed.problems);
}

/** The inverse of mappingsFromObjects: a Mapping in the YAML schema, every option spelt out. */
export function mappingToObject(m: Mapping): Record<string, unknown> {
  const range = (a: number, b: number): number | string => (a === b ? a : `${a}-${b}`);
  return {
    name: m.name,
    protocol: m.protocol,
    ...(m.hostIP !== null ? { hostIP: m.hostIP } : {}),
    hostPort: range(m.hostPort, m.hostPortEnd),
    containerIP: m.containerIP,
    containerPort: range(m.containerPort, m.containerPortEnd),
    ...writeMappingOptions(m),
  };
}
