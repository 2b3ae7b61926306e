// Config files: portferry's YAML (`mappings:` + optional `defaults:`), or CNI JSON carrying
// `runtimeConfig.portMappings` (or a bare `portMappings` list). JSON is YAML, so one parser reads both.
import { parseDocument } from 'yaml';
import { PortferryError } from '../errors.js';
import { MAPPING_KEYS, OPTION_KEYS, type RawMapping } from './validate.js';

export interface ParsedFile {
  readonly raws: RawMapping[];
  readonly defaults: Partial<RawMapping>;
  readonly problems: PortferryError[];
}

const TOP_KEYS = ['mappings', 'defaults'] as const;
const CNI_ENTRY_KEYS = ['hostPort', 'containerPort', 'protocol', 'hostIP'] as const;

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

/**
 * Parses the text of a config file. `containerIP` supplies the container address for CNI
 * portMappings, which carry none.
 */
export function parseConfigText(text: string, file: string, options: { containerIP?: string } = {}): ParsedFile {
  const problems: PortferryError[] = [];
  const raws: RawMapping[] = [];
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    for (const err of doc.errors) {
      const pos = err.linePos?.[0];
      problems.push(
        new PortferryError('PF_CONFIG_PARSE', `${file}${pos !== undefined ? `:${pos.line}:${pos.col}` : ''}: ${err.message.split('\n')[0] ?? err.message}`, {
          details: { file, ...(pos !== undefined ? { line: pos.line, column: pos.col } : {}) },
        }),
      );
    }
    return { raws, defaults: {}, problems };
  }
  const root: unknown = doc.toJS();
  if (!isRecord(root)) {
    problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: the file must hold a map with a "mappings" list, got ${root === null || root === undefined ? 'nothing' : typeof root}`, { details: { file } }));
    return { raws, defaults: {}, problems };
  }

  // CNI: {runtimeConfig: {portMappings: [...]}} (a whole plugin config) or {portMappings: [...]}.
  const cni = isRecord(root['runtimeConfig']) ? root['runtimeConfig']['portMappings'] : root['portMappings'];
  if (cni !== undefined && root['mappings'] === undefined) {
    if (!Array.isArray(cni)) {
      problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: portMappings must be a list`, { details: { file } }));
      return { raws, defaults: {}, problems };
    }
    cni.forEach((entry: unknown, i) => {
      const place = `portMappings[${i}]`;
      if (!isRecord(entry)) {
        problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: ${place} must be a map with hostPort, containerPort, protocol, hostIP`, { details: { file, place } }));
        return;
      }
      unknownKeys(entry, CNI_ENTRY_KEYS, place, file, problems);
      if (options.containerIP === undefined) {
        problems.push(new PortferryError('PF_CONFIG_MISSING', `${file}: ${place}: CNI portMappings carry no container IP; pass it with --container-ip (or --container-cidr for rules)`, { details: { file, place } }));
        return;
      }
      raws.push({ place: `${file}: ${place}`, source: `${file} ${place}`, ...entry, containerIP: options.containerIP });
    });
    return { raws, defaults: {}, problems };
  }

  unknownKeys(root, TOP_KEYS, '', file, problems);
  let defaults: Partial<RawMapping> = {};
  if (root['defaults'] !== undefined) {
    if (!isRecord(root['defaults'])) problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: defaults must be a map of mapping options`, { details: { file } }));
    else {
      unknownKeys(root['defaults'], OPTION_KEYS, 'defaults', file, problems);
      defaults = root['defaults'] as Partial<RawMapping>;
    }
  }
  const list = root['mappings'];
  if (list === undefined || list === null) {
    problems.push(new PortferryError('PF_NO_MAPPINGS', `${file}: there is no "mappings" list`, { details: { file } }));
    return { raws, defaults, problems };
  }
  if (!Array.isArray(list)) {
    problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: mappings must be a list, got ${typeof list}`, { details: { file } }));
    return { raws, defaults, problems };
  }
  list.forEach((entry: unknown, i) => {
    const place = `mappings[${i}]`;
    if (!isRecord(entry)) {
      problems.push(new PortferryError('PF_CONFIG_VALUE', `${file}: ${place} must be a map (hostPort, containerIP, containerPort …)`, { details: { file, place } }));
      return;
    }
    unknownKeys(entry, MAPPING_KEYS, place, file, problems);
    raws.push({ place: `${file}: ${place}`, source: `${file} ${place}`, ...entry });
  });
  return { raws, defaults, problems };
}
