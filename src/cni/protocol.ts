// The CNI execution protocol (SPEC.md 1.1, as libcni drives a plugin and pkg/skel checks it):
// the CNI_ environment, the configuration on stdin, versions, the result a chained plugin prints,
// and the addresses of the sandbox interface in prevResult. Pure; loads nothing heavy.
import { isIP } from 'node:net';
import { PortferryError } from '../errors.js';

export const SUPPORTED_VERSIONS = ['0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST_VERSION = '1.1.0';
export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type CniCommand = (typeof COMMANDS)[number];

export interface CniEnv {
  readonly command: CniCommand;
  readonly containerID: string;
  readonly netns: string;
  readonly ifname: string;
  readonly args: string;
  readonly path: string;
}

// libcni's rule for container IDs and network names.
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** skel's interface name rule: 1-15 bytes, not . or .., no / : or whitespace. */
function ifnameProblem(name: string): string | null {
  if (Buffer.byteLength(name) > 15) return 'is longer than 15 characters';
  if (name === '.' || name === '..') return 'is . or ..';
  if (/[/:\s]/.test(name)) return 'contains / or : or whitespace';
  return null;
}

/** The environment as skel reads it: every missing or invalid variable reported at once (PF_CNI_ENV, CNI code 4). */
export function readEnv(env: NodeJS.ProcessEnv): CniEnv {
  const get = (k: string): string => env[k] ?? '';
  const command = get('CNI_COMMAND');
  const problems: string[] = [];
  if (command === '') problems.push('CNI_COMMAND is missing');
  else if (!(COMMANDS as readonly string[]).includes(command)) problems.push(`CNI_COMMAND "${command}" is not one of ${COMMANDS.join(', ')}`);
  const perContainer = command === 'ADD' || command === 'DEL' || command === 'CHECK';
  const containerID = get('CNI_CONTAINERID');
  const ifname = get('CNI_IFNAME');
  const netns = get('CNI_NETNS');
  if (perContainer) {
    if (containerID === '') problems.push('CNI_CONTAINERID is missing');
    else if (!NAME_RE.test(containerID)) problems.push(`CNI_CONTAINERID "${containerID}" has characters other than letters, digits, _ . - (or does not start with a letter or digit)`);
    if (ifname === '') problems.push('CNI_IFNAME is missing');
    else {
      const why = ifnameProblem(ifname);
      if (why !== null) problems.push(`CNI_IFNAME "${ifname}" ${why}`);
    }
    if (netns === '' && command !== 'DEL') problems.push('CNI_NETNS is missing');
  }
  if (problems.length > 0) {
    throw new PortferryError('PF_CNI_ENV', `invalid CNI environment: ${problems.join('; ')}`, { details: { variables: problems } });
  }
  return { command: command as CniCommand, containerID, netns, ifname, args: get('CNI_ARGS'), path: get('CNI_PATH') };
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The decoded configuration: the keys every plugin has, and the rest as given. */
export interface NetConf {
  readonly cniVersion: string;
  readonly name: string;
  readonly raw: Readonly<Record<string, unknown>>;
  readonly prevResult: Readonly<Record<string, unknown>> | null;
}

/** The cniVersion of a text, when it is a JSON object with one; for error output before decoding succeeded. */
export function sniffVersion(text: string): string {
  try {
    const v = (JSON.parse(text) as Record<string, unknown>)['cniVersion'];
    return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v) ? v : LATEST_VERSION;
  } catch {
    return LATEST_VERSION;
  }
}

/** stdin → NetConf: JSON (PF_CNI_DECODE, 6), name (PF_CNI_CONFIG, 7), version (PF_CNI_VERSION, 1). */
export function decodeConf(text: string, command: CniCommand): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new PortferryError('PF_CNI_DECODE', `the network configuration on stdin is not JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PortferryError('PF_CNI_DECODE', 'the network configuration on stdin is not a JSON object');
  const conf = raw as Record<string, unknown>;
  const name = conf['name'];
  if (typeof name !== 'string' || name === '') throw new PortferryError('PF_CNI_CONFIG', 'the network configuration has no "name"');
  if (!NAME_RE.test(name)) throw new PortferryError('PF_CNI_CONFIG', `network name "${name}" has characters other than letters, digits, _ . -`);
  const version = conf['cniVersion'];
  if (typeof version !== 'string' || !(SUPPORTED_VERSIONS as readonly string[]).includes(version)) {
    throw new PortferryError('PF_CNI_VERSION', `cniVersion ${JSON.stringify(version ?? null)} is not supported; this plugin speaks ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  if ((command === 'STATUS' || command === 'GC') && compareVersions(version, '1.1.0') < 0) {
    throw new PortferryError('PF_CNI_VERSION', `config version ${version} does not allow ${command} (it came with 1.1.0)`);
  }
  const prev = conf['prevResult'];
  let prevResult: Record<string, unknown> | null = null;
  if (prev !== undefined && prev !== null) {
    if (typeof prev !== 'object' || Array.isArray(prev)) throw new PortferryError('PF_CNI_CONFIG', 'prevResult is not an object');
    prevResult = prev as Record<string, unknown>;
  }
  return { cniVersion: version, name, raw: conf, prevResult };
}

/** VERSION's answer: the version asked about (or the latest) and every version spoken. */
export function versionResult(stdin: string): Record<string, unknown> {
  return { cniVersion: sniffVersion(stdin), supportedVersions: [...SUPPORTED_VERSIONS] };
}

/**
 * What ADD prints: prevResult unchanged (this plugin adds no interface or address), in the
 * configuration's version. 0.4.0 results carry `version` on each IP; 1.x results do not.
 */
export function resultFor(prevResult: Readonly<Record<string, unknown>>, version: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...prevResult, cniVersion: version };
  const ips = prevResult['ips'];
  if (Array.isArray(ips)) {
    out['ips'] = ips.map((entry: unknown) => {
      if (typeof entry !== 'object' || entry === null) return entry;
      const ip = { ...(entry as Record<string, unknown>) };
      if (version === '0.4.0') {
        const addr = typeof ip['address'] === 'string' ? ip['address'].split('/')[0] ?? '' : '';
        if (ip['version'] === undefined && isIP(addr) !== 0) ip['version'] = isIP(addr) === 6 ? '6' : '4';
      } else {
        delete ip['version'];
      }
      return ip;
    });
  }
  return out;
}

/** An address of the sandbox interface, as prevResult gives it (`10.88.0.2/16`). */
export interface SandboxAddress {
  readonly cidr: string;
  readonly ip: string;
  readonly family: 4 | 6;
}

/**
 * The first IPv4 and the first IPv6 address that belong to the sandbox interface CNI_IFNAME, as
 * portmap picks them: an IP whose `interface` points at another interface, or at one without a
 * sandbox, is skipped; an IP without `interface` counts.
 */
export function sandboxAddresses(prevResult: Readonly<Record<string, unknown>>, ifname: string): SandboxAddress[] {
  const interfaces = Array.isArray(prevResult['interfaces']) ? (prevResult['interfaces'] as unknown[]) : [];
  const ips = Array.isArray(prevResult['ips']) ? (prevResult['ips'] as unknown[]) : [];
  const found = new Map<4 | 6, SandboxAddress>();
  for (const entry of ips) {
    if (typeof entry !== 'object' || entry === null) continue;
    const e = entry as Record<string, unknown>;
    const cidr = typeof e['address'] === 'string' ? e['address'] : '';
    const ip = cidr.split('/')[0] ?? '';
    const v = isIP(ip);
    if (v === 0) continue;
    const family = v === 6 ? 6 : 4;
    if (found.has(family)) continue;
    const idx = e['interface'];
    if (typeof idx === 'number' && idx >= 0 && idx < interfaces.length) {
      const itf = (interfaces[idx] ?? {}) as Record<string, unknown>;
      if (itf['name'] !== ifname || typeof itf['sandbox'] !== 'string' || itf['sandbox'] === '') continue;
    }
    found.set(family, { cidr, ip, family });
  }
  return [4, 6].flatMap((f) => {
    const a = found.get(f as 4 | 6);
    return a === undefined ? [] : [a];
  });
}

/** GC's `cni.dev/valid-attachments`: the attachments that stay (malformed entries are skipped). */
export function validAttachments(conf: NetConf): { containerID: string; ifname: string }[] {
  const list = conf.raw['cni.dev/valid-attachments'];
  if (!Array.isArray(list)) return [];
  return (list as unknown[]).flatMap((a) => {
    const o = (typeof a === 'object' && a !== null ? a : {}) as Record<string, unknown>;
    return typeof o['containerID'] === 'string' && typeof o['ifname'] === 'string' ? [{ containerID: o['containerID'], ifname: o['ifname'] }] : [];
  });
}
