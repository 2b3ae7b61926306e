// Settings dockerd cannot pass: a YAML file at $PORTFERRY_DOCKER_CONFIG (default
// /etc/portferry/docker-proxy.yaml). No file at the default path → defaults; a file that is there
// but unreadable or invalid → an error, so `docker run` fails with the reason instead of publishing
// a port without the PROXY header its backend expects. The YAML parser is loaded only when a file
// exists (every published port starts one of these processes).
//
//   defaults: { udpIdleTimeout: 5m }            # mapping options for every port
//   rules:                                      # the first rule whose `match` fits wins
//     - match: { hostPort: 8080, protocol: tcp, containerIP: 172.17.0.0/16 }
//       proxyProtocol: v2
//   log: { level: error, file: /var/log/portferry-docker-proxy.log, syslog: false }
//   drainTimeout: 2s
//
// Option values are checked by the config module's validator, the same as `portferry run`'s.
import net from 'node:net';
import type { Mapping, Protocol } from '../api.js';
import { canonicalIP, formatHostPort } from '../addr.js';
import { parseMappingOptions, type MappingOptionValues } from '../config/options.js';
import { readConfigFile } from '../config/read.js';
import { MAPPING_OPTION_KEYS } from '../config/options.js';
import { parseDuration, throwIfProblems, validateMappings, type RawMapping } from '../config/validate.js';
import { Invalid, parsePorts } from '../config/values.js';
import { PortferryError } from '../errors.js';
import { LOG_LEVELS, type LogLevel } from '../log.js';
import type { DockerProxyArgs } from './argv.js';

export const CONFIG_ENV = 'PORTFERRY_DOCKER_CONFIG';
export const DEFAULT_CONFIG_PATH = '/etc/portferry/docker-proxy.yaml';
const DEFAULT_DRAIN_MS = 2_000;
const MAX_DRAIN_MS = 60_000;

const TOP_KEYS = ['defaults', 'rules', 'log', 'drainTimeout'] as const;
const MATCH_KEYS = ['hostIP', 'hostPort', 'containerIP', 'containerPort', 'protocol'] as const;
const LOG_KEYS = ['level', 'file', 'syslog'] as const;
/** A docker container is dialled from the host namespace: `netns` has no meaning here. */
const RULE_OPTION_KEYS = MAPPING_OPTION_KEYS.filter((k) => k !== 'netns');

type Options = Readonly<Record<string, unknown>>;
type Defaults = Readonly<Partial<MappingOptionValues>>;

export interface LogSettings {
  readonly level: LogLevel;
  /** Append JSON lines to this file. */
  readonly file: string | null;
  /** Send lines to syslog; null: yes when no file is set (and syslog is there). */
  readonly syslog: boolean | null;
}

interface Matcher {
  readonly protocol?: Protocol;
  readonly hostPort?: readonly [number, number];
  readonly containerPort?: readonly [number, number];
  readonly hostIP?: net.BlockList;
  readonly containerIP?: net.BlockList;
}

interface Rule {
  readonly place: string;
  readonly match: Matcher;
  readonly options: Options;
}

export interface DockerProxyConfig {
  /** The file read, or null when there was none (defaults). */
  readonly file: string | null;
  /** `defaults:`, parsed. */
  readonly defaults: Defaults;
  readonly rules: readonly Rule[];
  readonly log: LogSettings;
  readonly drainTimeoutMs: number;
}

export const DEFAULT_CONFIG: DockerProxyConfig = Object.freeze<DockerProxyConfig>({
  file: null,
  defaults: {},
  rules: [],
  log: { level: 'error', file: null, syslog: null },
  drainTimeoutMs: DEFAULT_DRAIN_MS,
});

/** Reads the file named by the environment (or the default path, when it exists). */
export async function loadDockerProxyConfig(env: NodeJS.ProcessEnv): Promise<DockerProxyConfig> {
  const named = env[CONFIG_ENV];
  const file = named !== undefined && named !== '' ? named : DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readConfigFile(file);
  } catch (err) {
    if (!(err instanceof PortferryError)) throw err;
    if (file === DEFAULT_CONFIG_PATH && err.details['errno'] === 'ENOENT') return DEFAULT_CONFIG;
    throw new PortferryError(err.code, `${err.message}${file === named ? ` (named by ${CONFIG_ENV})` : ''}`, {
      cause: err,
      details: err.details,
      hint: `${err.hint} Or ${file === named ? `unset ${CONFIG_ENV} in dockerd's environment` : 'remove the file'} to run with the defaults.`,
    });
  }
  return parseDockerProxyConfig(text, file);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses and checks the whole file (every rule, also those this port does not match). */
export async function parseDockerProxyConfig(text: string, file: string): Promise<DockerProxyConfig> {
  const { parseDocument } = await import('yaml');
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const problems: PortferryError[] = doc.errors.map((e) => {
    const pos = e.linePos?.[0];
    return new PortferryError('PF_CONFIG_PARSE', `${file}${pos !== undefined ? `:${pos.line}:${pos.col}` : ''}: ${e.message.split('\n')[0] ?? e.message}`, { details: { file } });
  });
  throwIfProblems(problems);
  const root: unknown = doc.toJS() ?? {};
  const fail: Fail = (code, place, why): void => {
    problems.push(new PortferryError(code, `${file}: ${place}: ${why}`, { details: { file, place } }));
  };
  const keysIn = (obj: Record<string, unknown>, allowed: readonly string[], place: string): void => {
    for (const key of Object.keys(obj)) if (!allowed.includes(key)) fail('PF_CONFIG_KEY', place === '' ? key : `${place}.${key}`, `unknown key "${key}"; allowed here: ${allowed.join(', ')}`);
  };
  if (!isRecord(root)) {
    fail('PF_CONFIG_VALUE', '(top)', 'the file must hold a map (defaults, rules, log, drainTimeout)');
    throwIfProblems(problems);
  }
  const top = root as Record<string, unknown>;
  keysIn(top, TOP_KEYS, '');

  const optionsAt = (value: unknown, place: string, extra: readonly string[] = []): Options => {
    if (value === undefined || value === null) return {};
    if (!isRecord(value)) {
      fail('PF_CONFIG_VALUE', place, 'must be a map of mapping options');
      return {};
    }
    keysIn(value, [...extra, ...RULE_OPTION_KEYS], place);
    return Object.fromEntries(Object.entries(value).filter(([k]) => k !== 'match' && RULE_OPTION_KEYS.includes(k as never)));
  };
  // Option values: the config module's option parsers, and its validator on a stand-in mapping
  // (a documentation address) for what depends on the protocol (PROXY v1 cannot carry UDP).
  const check = (options: Options, place: string, protocol: Protocol, inherited: Defaults): void => {
    try {
      validateMappings([{ ...options, place: `${file}: ${place}`, source: `${file} ${place}`, protocol, hostPort: 1, containerIP: '192.0.2.1', containerPort: 1, inherited }]);
    } catch (err) {
      if (!(err instanceof PortferryError)) throw err;
      problems.push(...(err.problems.length > 0 ? err.problems : [err]));
    }
  };

  const defaults = parseMappingOptions(optionsAt(top['defaults'], 'defaults'), (key, bad) => fail(bad.code, `defaults.${key}`, `${key} ${bad.why}`));

  const rules: Rule[] = [];
  const list = top['rules'] ?? [];
  if (!Array.isArray(list)) fail('PF_CONFIG_VALUE', 'rules', 'must be a list of {match: {…}, options…}');
  else {
    list.forEach((entry: unknown, i) => {
      const place = `rules[${i}]`;
      const options = optionsAt(entry, place, ['match']);
      if (!isRecord(entry)) return;
      const match = parseMatch(entry['match'], `${place}.match`, fail, keysIn);
      check(options, place, match.protocol ?? 'tcp', defaults);
      rules.push({ place, match, options });
    });
  }

  const log = parseLog(top['log'], fail, keysIn);
  let drainTimeoutMs = DEFAULT_DRAIN_MS;
  if (top['drainTimeout'] !== undefined) {
    const d = parseDuration(top['drainTimeout'], true);
    if (typeof d === 'string') problems.push(new PortferryError('PF_DURATION_INVALID', `${file}: drainTimeout ${d}`, { details: { file, place: 'drainTimeout' } }));
    else if (d > MAX_DRAIN_MS) fail('PF_CONFIG_VALUE', 'drainTimeout', `at most ${MAX_DRAIN_MS / 1000}s: dockerd waits for the proxy to exit without a timeout`);
    else drainTimeoutMs = d;
  }
  throwIfProblems(problems);
  return { file, defaults, rules, log, drainTimeoutMs };
}

type Fail = (code: Invalid['code'], place: string, why: string) => void;
type KeysIn = (obj: Record<string, unknown>, allowed: readonly string[], place: string) => void;

function parseMatch(value: unknown, place: string, fail: Fail, keysIn: KeysIn): Matcher {
  if (value === undefined || value === null) return {};
  if (!isRecord(value)) {
    fail('PF_CONFIG_VALUE', place, `must be a map of ${MATCH_KEYS.join(', ')}`);
    return {};
  }
  keysIn(value, MATCH_KEYS, place);
  const out: { -readonly [K in keyof Matcher]: Matcher[K] } = {};
  const p = value['protocol'];
  if (p !== undefined) {
    if (p === 'tcp' || p === 'udp') out.protocol = p;
    else fail('PF_CONFIG_VALUE', `${place}.protocol`, `${JSON.stringify(p)} is not tcp or udp`);
  }
  for (const key of ['hostPort', 'containerPort'] as const) {
    const v = value[key];
    if (v === undefined) continue;
    const ports = parsePorts(v);
    if (ports instanceof Invalid) fail(ports.code, `${place}.${key}`, ports.why);
    else out[key] = [ports.start, ports.end];
  }
  for (const key of ['hostIP', 'containerIP'] as const) {
    const v = value[key];
    if (v === undefined) continue;
    const list = new net.BlockList();
    const [addr, prefix, more] = String(v).split('/');
    const ip = canonicalIP(addr ?? '');
    const bits = prefix === undefined ? null : Number(prefix);
    const max = ip !== null && net.isIPv6(ip) ? 128 : 32;
    if (typeof v !== 'string' || ip === null || more !== undefined || (bits !== null && !(Number.isInteger(bits) && bits >= 0 && bits <= max && /^\d+$/.test(prefix ?? '')))) {
      fail('PF_CONFIG_VALUE', `${place}.${key}`, `${JSON.stringify(v)} is not an IP address or a CIDR such as 172.17.0.0/16`);
      continue;
    }
    list.addSubnet(ip, bits ?? max, max === 128 ? 'ipv6' : 'ipv4');
    out[key] = list;
  }
  return out;
}

function parseLog(value: unknown, fail: Fail, keysIn: KeysIn): LogSettings {
  const dflt = DEFAULT_CONFIG.log;
  if (value === undefined || value === null) return dflt;
  if (!isRecord(value)) {
    fail('PF_CONFIG_VALUE', 'log', `must be a map of ${LOG_KEYS.join(', ')}`);
    return dflt;
  }
  keysIn(value, LOG_KEYS, 'log');
  const { level = dflt.level, file = null, syslog = null } = value;
  if (!LOG_LEVELS.includes(level as LogLevel)) fail('PF_CONFIG_VALUE', 'log.level', `${JSON.stringify(level)} is not one of ${LOG_LEVELS.join(', ')}`);
  if (file !== null && (typeof file !== 'string' || !file.startsWith('/'))) fail('PF_CONFIG_VALUE', 'log.file', `must be an absolute path, got ${JSON.stringify(file)}`);
  if (syslog !== null && typeof syslog !== 'boolean') fail('PF_CONFIG_VALUE', 'log.syslog', `must be true or false, got ${JSON.stringify(syslog)}`);
  return { level, file, syslog } as LogSettings;
}

function inRange(range: readonly [number, number] | undefined, port: number): boolean {
  return range === undefined || (port >= range[0] && port <= range[1]);
}

function inList(list: net.BlockList | undefined, ip: string): boolean {
  return list === undefined || list.check(ip, net.isIPv6(ip) ? 'ipv6' : 'ipv4');
}

/** The first rule whose match fits this port, or null. */
export function matchRule(config: DockerProxyConfig, args: DockerProxyArgs): Rule | null {
  for (const rule of config.rules) {
    const m = rule.match;
    if (m.protocol !== undefined && m.protocol !== args.protocol) continue;
    if (!inRange(m.hostPort, args.hostPort) || !inRange(m.containerPort, args.containerPort)) continue;
    if (!inList(m.hostIP, args.hostIP) || !inList(m.containerIP, args.containerIP)) continue;
    return rule;
  }
  return null;
}

/** The validated mapping for this process: argv + defaults + the matching rule's options. */
export function mappingFor(args: DockerProxyArgs, config: DockerProxyConfig): Mapping {
  const rule = matchRule(config, args);
  const name = `docker/${args.protocol}/${formatHostPort(args.hostIP, args.hostPort)}`;
  const argvText = `docker-proxy ${args.protocol} ${formatHostPort(args.hostIP, args.hostPort)} -> ${formatHostPort(args.containerIP, args.containerPort)}`;
  const where = config.file === null ? 'docker-proxy arguments' : `${config.file}: ${rule?.place ?? 'defaults'}`;
  const raw: RawMapping = {
    ...(rule?.options ?? {}),
    inherited: config.defaults,
    place: where,
    source: rule === null ? argvText : `${argvText} (${config.file} ${rule.place})`,
    name,
    protocol: args.protocol,
    hostIP: args.hostIP,
    hostPort: args.hostPort,
    containerIP: args.containerIP,
    containerPort: args.containerPort,
  };
  return validateMappings([raw])[0] as Mapping;
}
