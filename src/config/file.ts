// Config files: portferry's YAML (`mappings:` + optional `defaults:`), or CNI JSON carrying
// `runtimeConfig.portMappings` (or a bare `portMappings` list). JSON is YAML, so one parser reads both.
import { parseDocument } from 'yaml';
import { PortferryError } from '../errors.js';
import { CNI_ENTRY_KEYS, parseCniPortMapping } from './cni.js';
import { MAPPING_OPTION_KEYS, parseMappingOptions, type MappingOptionValues } from './options.js';
import { MAPPING_KEYS, type RawMapping } from './validate.js';

export interface ParsedFile {
  readonly raws: RawMapping[];
  readonly problems: PortferryError[];
}

/**
 * The most alias expansions a file may make (yaml's maxAliasCount; its default of 100 refuses an
 * ordinary 150-mapping file that reuses `*ip`). Bounds the "billion laughs" blow-up all the same.
 */
export const MAX_YAML_ALIASES = 10_000;
/** Parse errors listed at most (a binary file has thousands). */
const MAX_PARSE_ERRORS = 10;

const TOP_KEYS = ['mappings', 'defaults'] as const;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Levenshtein distance, for "did you mean" on misspelt keys. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

function unknownKeys(obj: Record<string, unknown>, allowed: readonly string[], place: string, file: string, problems: PortferryError[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      const near = allowed.find((a) => editDistance(a.toLowerCase(), key.toLowerCase()) <= 2);
      problems.push(
        new PortferryError('PF_CONFIG_KEY', `${file}: ${place}${place === '' ? '' : '.'}${key}: unknown key "${key}"${near !== undefined ? ` (did you mean "${near}"?)` : ''}; allowed here: ${allowed.join(', ')}`, {
          details: { file, place: `${place}${place === '' ? '' : '.'}${key}` },
        }),
      );
    }
  }
}

/** YAML text → a plain value, or the problems (syntax errors with line:column, too many aliases). */
function parseYaml(text: string, file: string, problems: PortferryError[]): unknown {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    for (const err of doc.errors.slice(0, MAX_PARSE_ERRORS)) {
      const pos = err.linePos?.[0];
      problems.push(
        new PortferryError('PF_CONFIG_PARSE', `${file}${pos !== undefined ? `:${pos.line}:${pos.col}` : ''}: ${err.message.split('\n')[0] ?? err.message}`, {
          details: { file, ...(pos !== undefined ? { line: pos.line, column: pos.col } : {}) },
        }),
      );
    }
    if (doc.errors.length > MAX_PARSE_ERRORS) problems.push(new PortferryError('PF_CONFIG_PARSE', `${file}: ${doc.errors.length - MAX_PARSE_ERRORS} more syntax errors not listed (is it a YAML or JSON file?)`, { details: { file } }));
    return undefined;
  }
  try {
    return doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (err) {
    // yaml throws ReferenceError('Excessive alias count …') past maxAliasCount.
    problems.push(
      new PortferryError('PF_CONFIG_PARSE', `${file}: the aliases (*name) expand to more than ${MAX_YAML_ALIASES} nodes: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
        details: { file, maxAliasCount: MAX_YAML_ALIASES },
        hint: `Write the repeated values out, or use fewer aliases: at most ${MAX_YAML_ALIASES} alias expansions are allowed (a guard against "billion laughs" files).`,
      }),
    );
    return undefined;
  }
}

/**
 * Parses the text of a config file. `containerIP` supplies the container address for CNI
 * portMappings, which carry none. `defaults:` are parsed once here and handed to each mapping.
 */
export function parseConfigText(text: string, file: string, options: { containerIP?: string } = {}): ParsedFile {
  const problems: PortferryError[] = [];
  const raws: RawMapping[] = [];
  const root = parseYaml(text, file, problems);
  if (problems.length > 0) return { raws, problems };
  if (!isRecord(root)) {
    problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: the file must hold a map with a "mappings" list, got ${root === null || root === undefined ? 'nothing' : typeof root}`, { details: { file } }));
    return { raws, problems };
  }

  // CNI: {runtimeConfig: {portMappings: [...]}} (a whole plugin config) or {portMappings: [...]}.
  const cni = isRecord(root['runtimeConfig']) ? root['runtimeConfig']['portMappings'] : root['portMappings'];
  if (cni !== undefined && root['mappings'] === undefined) {
    if (!Array.isArray(cni)) {
      problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: portMappings must be a list`, { details: { file } }));
      return { raws, problems };
    }
    cni.forEach((entry: unknown, i) => {
      const place = `portMappings[${i}]`;
      if (isRecord(entry)) unknownKeys(entry, CNI_ENTRY_KEYS, place, file, problems);
      const parsed = parseCniPortMapping(entry, `${file}: ${place}`);
      if (Array.isArray(parsed)) {
        problems.push(...parsed);
        return;
      }
      if (options.containerIP === undefined) {
        problems.push(new PortferryError('PF_CONFIG_MISSING', `${file}: ${place}: CNI portMappings carry no container IP; pass it with --container-ip (or --container-cidr for rules)`, { details: { file, place } }));
        return;
      }
      const { hostIP, ...rest } = parsed;
      raws.push({ place: `${file}: ${place}`, source: `${file} ${place}`, ...rest, ...(hostIP === '' ? {} : { hostIP }), containerIP: options.containerIP });
    });
    return { raws, problems };
  }

  unknownKeys(root, TOP_KEYS, '', file, problems);
  let inherited: Partial<MappingOptionValues> = {};
  const defaults = root['defaults'];
  if (defaults !== undefined && defaults !== null) {
    if (!isRecord(defaults)) problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: defaults must be a map of mapping options`, { details: { file } }));
    else {
      unknownKeys(defaults, MAPPING_OPTION_KEYS, 'defaults', file, problems);
      inherited = parseMappingOptions(defaults, (key, bad) => {
        problems.push(new PortferryError(bad.code, `${file}: defaults.${key}: ${key} ${bad.why}`, { details: { file, place: `defaults.${key}` } }));
      });
    }
  }
  const list = root['mappings'];
  if (list === undefined || list === null) {
    problems.push(new PortferryError('PF_NO_MAPPINGS', `${file}: there is no "mappings" list`, { details: { file } }));
    return { raws, problems };
  }
  if (!Array.isArray(list)) {
    problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: mappings must be a list, got ${typeof list}`, { details: { file } }));
    return { raws, problems };
  }
  for (const [i, entry] of (list as unknown[]).entries()) {
    const place = `mappings[${i}]`;
    if (!isRecord(entry)) {
      problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: ${place} must be a map (hostPort, containerIP, containerPort …)`, { details: { file, place } }));
      continue;
    }
    unknownKeys(entry, MAPPING_KEYS, place, file, problems);
    raws.push({ ...entry, place: `${file}: ${place}`, source: `${file} ${place}`, inherited });
  }
  return { raws, problems };
}
