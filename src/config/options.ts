// The one table of options: key → parser, default, scope, doc line. Validation (validate.ts),
// the defaults (DEFAULTS), the file and API schema (mappingToObject, optionSchema), the command-line
// flags of the -p mappings (cli/common.ts) and the README's options table (renderOptionsTable,
// `npm run docs:options`; test/unit/config-options.test.ts fails when the README differs) all come
// from OPTIONS. A new per-mapping option is one entry here, plus its field in api.ts's Mapping and
// its use in the data path.
import type { Mapping, ProxyProtocolVersion, ProxyTlvOptions } from '../api.js';
import { Invalid, countParser, describe, durationParser, formatDuration } from './values.js';

export type OptionScope = 'mapping' | 'process';

interface OptionCommon<V> {
  readonly scope: OptionScope;
  /** What a value looks like, for the docs and the API schema. */
  readonly type: string;
  readonly default: V;
  /** What 0 means, for options where 0 turns the limit off. */
  readonly zero?: string;
  /** One line for the docs table. */
  readonly doc: string;
  /** A command-line flag that sets it (for the -p mappings, or for the process), with its help text. */
  readonly flag?: { readonly spec: string; readonly help: string };
  /** The written value → the value; an Invalid says why not. Never sees undefined. */
  parse(value: unknown): V | Invalid;
  /** The value as written in a file or an API body; undefined leaves the key out. */
  write(value: V): unknown;
}

/** The Mapping fields that options fill. */
export type MappingOptionField = 'netns' | 'proxyProtocol' | 'proxyTlvs' | 'connectTimeoutMs' | 'idleTimeoutMs' | 'halfCloseTimeoutMs' | 'maxConnections' | 'udpIdleTimeoutMs' | 'udpMaxFlows';

export interface MappingOption<F extends MappingOptionField> extends OptionCommon<Mapping[F]> {
  readonly scope: 'mapping';
  /** The Mapping field it fills. */
  readonly field: F;
}

export interface ProcessOption<V> extends OptionCommon<V> {
  readonly scope: 'process';
  /** The DEFAULTS key. */
  readonly field: string;
}

const mapping = <F extends MappingOptionField>(o: Omit<MappingOption<F>, 'scope'>): MappingOption<F> => ({ scope: 'mapping', ...o });

const durationOption = <F extends MappingOptionField & `${string}Ms`>(field: F, allowZero: boolean, dflt: number, doc: string, zero?: string): MappingOption<F> =>
  mapping({ field, type: 'duration', default: dflt as Mapping[F], doc, ...(zero === undefined ? {} : { zero }), parse: durationParser(allowZero) as (v: unknown) => Mapping[F] | Invalid, write: (v) => (v === 0 ? 0 : formatDuration(v as number)) });

const countOption = <F extends 'maxConnections' | 'udpMaxFlows'>(field: F, min: number, dflt: number, doc: string, zero?: string): MappingOption<F> =>
  mapping({ field, type: 'integer', default: dflt, doc, ...(zero === undefined ? {} : { zero }), parse: countParser(min), write: (v) => v });

const TLV_NAMES = ['uniqueId', 'crc32c'] as const;

function parseTlvs(value: unknown): ProxyTlvOptions | Invalid {
  const list = typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter((s) => s !== '') : value;
  if (!Array.isArray(list)) return new Invalid('PF_CONFIG_VALUE', `must be a list of ${TLV_NAMES.join(', ')}; got ${describe(value)}`);
  const out = { uniqueId: false, crc32c: false };
  for (const item of list as unknown[]) {
    if (item !== 'uniqueId' && item !== 'crc32c') return new Invalid('PF_CONFIG_VALUE', `has an unknown TLV ${describe(item)}: allowed are ${TLV_NAMES.join(', ')}`);
    out[item] = true;
  }
  return Object.freeze(out);
}

function parseProxyProtocol(value: unknown): ProxyProtocolVersion | null | Invalid {
  if (value === null || value === false || value === 'none' || value === 'off' || value === '') return null;
  const v = typeof value === 'string' ? value.toLowerCase() : typeof value === 'number' ? `v${value}` : value;
  if (v === 'v1' || v === 'v2') return v;
  return new Invalid('PF_CONFIG_VALUE', `must be v1 or v2, got ${describe(value)}`);
}

function parseNetns(value: unknown): string | null | Invalid {
  if (value === null || value === '') return null;
  if (typeof value !== 'string' || !value.startsWith('/')) {
    return new Invalid('PF_NETNS_INVALID', `must be an absolute path such as /proc/1234/ns/net or /run/netns/NAME, got ${describe(value)}`);
  }
  return value;
}

/** Every option, in the order of the docs table. The key is what a file, the API and `defaults:` write. */
export const OPTIONS = {
  connectTimeout: durationOption('connectTimeoutMs', false, 5_000, 'how long dialling the container may take; then the client is reset'),
  idleTimeout: durationOption('idleTimeoutMs', true, 0, 'close a TCP connection with no traffic either way for this long', 'none'),
  halfCloseTimeout: durationOption('halfCloseTimeoutMs', true, 60_000, 'once one side has closed its write half, close when nothing moves for this long', 'never'),
  maxConnections: countOption('maxConnections', 0, 0, 'open TCP connections per listener; more are refused with a reset', 'none'),
  udpIdleTimeout: durationOption('udpIdleTimeoutMs', false, 90_000, 'drop a UDP flow with no datagram either way for this long'),
  udpMaxFlows: countOption('udpMaxFlows', 1, 4096, 'UDP flows per listener; when full, the least recently used is evicted'),
  proxyProtocol: mapping({
    field: 'proxyProtocol',
    type: 'v1 | v2',
    default: null,
    doc: '`v1` (TCP only) or `v2`; see [docs/proxy-protocol.md](docs/proxy-protocol.md)',
    flag: { spec: '--proxy-protocol <version>', help: 'send a PROXY protocol header (v1|v2) on the -p mappings' },
    parse: parseProxyProtocol,
    write: (v) => v ?? undefined,
  }),
  proxyProtocolTLVs: mapping({
    field: 'proxyTlvs',
    type: 'list of uniqueId, crc32c',
    default: Object.freeze({ uniqueId: false, crc32c: false }),
    doc: 'v2 TLVs: `uniqueId` (per-connection id, also logged), `crc32c`',
    parse: parseTlvs,
    write: (v) => {
      const names = TLV_NAMES.filter((n) => v[n]);
      return names.length === 0 ? undefined : names;
    },
  }),
  netns: mapping({
    field: 'netns',
    type: 'path',
    default: null,
    doc: 'network namespace path to dial the container from (rootless): `/proc/PID/ns/net`, `/run/netns/NAME`',
    flag: { spec: '--netns <path>', help: "dial the -p mappings' containers from inside this network namespace (/proc/PID/ns/net, /run/netns/NAME)" },
    parse: parseNetns,
    write: (v) => v ?? undefined,
  }),
  drainTimeout: {
    scope: 'process',
    field: 'drainTimeoutMs',
    type: 'duration',
    default: 10_000,
    doc: 'on SIGTERM/SIGINT, stop accepting and let open connections finish for this long (`run --drain-timeout`)',
    parse: durationParser(true),
    write: (v: number) => (v === 0 ? 0 : formatDuration(v)),
  } satisfies ProcessOption<number>,
} as const;

export type OptionKey = keyof typeof OPTIONS;
type Options = typeof OPTIONS;
/** The keys of per-mapping options (also allowed under `defaults:` in a file). */
export type MappingOptionKey = { [K in OptionKey]: Options[K]['scope'] extends 'mapping' ? K : never }[OptionKey];

export const MAPPING_OPTION_KEYS = (Object.keys(OPTIONS) as OptionKey[]).filter((k): k is MappingOptionKey => OPTIONS[k].scope === 'mapping');

/** Every option's default under its field name (`connectTimeoutMs: 5000`, …, `drainTimeoutMs`). */
export const DEFAULTS = Object.freeze(Object.fromEntries(Object.values(OPTIONS).map((o) => [o.field, o.default]))) as {
  readonly [K in OptionKey as Options[K]['field']]: Options[K]['default'];
};

/** The per-mapping option values, by Mapping field. */
export type MappingOptionValues = { -readonly [F in MappingOptionField]: Mapping[F] };

/**
 * Parses the options present in `obj` (keys of scope mapping; others are left to the caller's key
 * check). Problems go to `report(key, invalid)`; the result holds only the valid, present ones.
 */
export function parseMappingOptions(obj: Readonly<Record<string, unknown>>, report: (key: MappingOptionKey, why: Invalid) => void): Partial<MappingOptionValues> {
  const out: Record<string, unknown> = {};
  for (const key of MAPPING_OPTION_KEYS) {
    const value = obj[key];
    if (value === undefined) continue;
    const option = OPTIONS[key] as OptionCommon<unknown> & { field: MappingOptionField };
    const parsed = option.parse(value);
    if (parsed instanceof Invalid) report(key, parsed);
    else out[option.field] = parsed;
  }
  return out as Partial<MappingOptionValues>;
}

/** Every option value: the mapping's own, else the inherited ones (`defaults:`, flags), else the default. */
export function resolveMappingOptions(own: Partial<MappingOptionValues>, inherited: Partial<MappingOptionValues>): MappingOptionValues {
  const out: Record<string, unknown> = {};
  for (const key of MAPPING_OPTION_KEYS) {
    const { field } = OPTIONS[key];
    out[field] = field in own ? own[field] : field in inherited ? inherited[field] : OPTIONS[key].default;
  }
  return out as MappingOptionValues;
}

/** A mapping's options as written in a file (every one spelt out except those written as absent). */
export function writeMappingOptions(m: Mapping): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of MAPPING_OPTION_KEYS) {
    const option = OPTIONS[key] as OptionCommon<unknown> & { field: MappingOptionField };
    const v = option.write(m[option.field]);
    if (v !== undefined) out[key] = v;
  }
  return out;
}

/** One row of the options schema, as the API and the docs show it. */
export interface OptionDescription {
  readonly key: OptionKey;
  readonly scope: OptionScope;
  readonly type: string;
  /** The default as written in a file (absent: none). */
  readonly default?: unknown;
  readonly zero?: string;
  readonly flag?: string;
  readonly doc: string;
}

/** The options as plain data (for `GET` schema routes and tools). */
export function optionSchema(): readonly OptionDescription[] {
  return (Object.keys(OPTIONS) as OptionKey[]).map((key) => {
    const o = OPTIONS[key] as OptionCommon<unknown>;
    const written = o.write(o.default);
    return Object.freeze({
      key,
      scope: o.scope,
      type: o.type,
      ...(written === undefined ? {} : { default: written }),
      ...(o.zero === undefined ? {} : { zero: o.zero }),
      ...(o.flag === undefined ? {} : { flag: o.flag.spec.split(' ')[0] ?? o.flag.spec }),
      doc: o.doc,
    });
  });
}

/** The Markdown table of the README (between its `options-table` markers). */
export function renderOptionsTable(): string {
  const rows = optionSchema().map((o) => {
    const dflt = o.default === undefined ? 'none' : `\`${String(o.default)}\`${o.zero !== undefined && o.default === 0 ? ` (${o.zero})` : ''}`;
    const zero = o.zero !== undefined && o.default !== 0 ? ` (\`0\`: ${o.zero})` : '';
    return `| \`${o.key}\` | ${o.scope} | ${dflt} | ${o.doc}${zero} |`;
  });
  return ['| option | scope | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
