// The portferry plugin's own keys (docs/cni.md): which backend, the portmap options for the kernel
// backends, and the daemon socket and dial options for the userspace one. Every problem at once.
import { commandOnPath } from '../exec.js';
import { PortferryError } from '../errors.js';
import { parseBackend } from '../rules/backend.js';
import type { CniPortMapping, PortmapOptionsInput } from '../rules/model.js';
import type { NetConf } from './protocol.js';

export type CniBackend = 'iptables' | 'nftables' | 'userspace';

export interface PluginConf {
  readonly backend: CniBackend;
  /** The portmap options, as given (the rules model fills in the defaults). */
  readonly portmap: PortmapOptionsInput;
  readonly portMappings: readonly CniPortMapping[];
  /** userspace: the daemon's API socket (null: its default). */
  readonly api: string | null;
  readonly dialInNetns: boolean;
  readonly proxyProtocol: 'v1' | 'v2' | null;
}

/** As portmap chooses without a `backend` key: iptables, unless only nft is there. */
function defaultBackend(): CniBackend {
  return !commandOnPath('iptables') && commandOnPath('nft') ? 'nftables' : 'iptables';
}

const USERSPACE_KEYS = ['api', 'dialInNetns', 'proxyProtocol'] as const;

export function pluginConf(conf: NetConf): PluginConf {
  const raw = conf.raw;
  const problems: string[] = [];
  const typed = <T>(key: string, ok: (v: unknown) => boolean, what: string): T | undefined => {
    const v = raw[key];
    if (v === undefined || v === null) return undefined;
    if (!ok(v)) {
      problems.push(`"${key}" must be ${what}, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v as T;
  };
  const isBool = (v: unknown): boolean => typeof v === 'boolean';
  const isStrings = (v: unknown): boolean => Array.isArray(v) && v.every((s) => typeof s === 'string');

  const backendText = typed<string>('backend', (v) => typeof v === 'string', '"iptables", "nftables" or "userspace"');
  let backend: CniBackend = 'iptables';
  if (backendText === undefined) backend = defaultBackend();
  else if (backendText === 'userspace') backend = 'userspace';
  else {
    const kernel = parseBackend(backendText);
    if (kernel !== null) backend = kernel;
    else problems.push(`"backend" is "${backendText}": use "iptables", "nftables" or "userspace"`);
  }

  const snat = typed<boolean>('snat', isBool, 'true or false');
  const masqAll = typed<boolean>('masqAll', isBool, 'true or false');
  const markMasqBit = typed<number>('markMasqBit', (v) => typeof v === 'number', 'a number from 0 to 31');
  const externalSetMarkChain = typed<string>('externalSetMarkChain', (v) => typeof v === 'string', 'a chain name');
  const conditionsV4 = typed<string[]>('conditionsV4', isStrings, 'a list of strings');
  const conditionsV6 = typed<string[]>('conditionsV6', isStrings, 'a list of strings');
  const api = typed<string>('api', (v) => typeof v === 'string' && v.startsWith('/'), 'an absolute path of a unix socket');
  const dialInNetns = typed<boolean>('dialInNetns', isBool, 'true or false');
  const proxyProtocol = typed<'v1' | 'v2'>('proxyProtocol', (v) => v === 'v1' || v === 'v2', '"v1" or "v2"');

  if (backend !== 'userspace') {
    const given = USERSPACE_KEYS.filter((k) => raw[k] !== undefined && raw[k] !== false);
    if (given.length > 0) problems.push(`${given.map((k) => `"${k}"`).join(', ')} only apply to "backend": "userspace" (kernel DNAT cannot dial into a namespace or send a PROXY header)`);
  }

  // The entries themselves are parsed by the one CNI portMappings parser (config/cni.ts) when a
  // backend builds its input; here only the shape around them.
  const rc = raw['runtimeConfig'];
  let portMappings: readonly CniPortMapping[] = [];
  if (rc !== undefined && rc !== null) {
    const pm = typeof rc === 'object' && !Array.isArray(rc) ? (rc as Record<string, unknown>)['portMappings'] : undefined;
    if (typeof rc !== 'object' || Array.isArray(rc)) problems.push('"runtimeConfig" must be an object');
    else if (pm !== undefined && pm !== null && !Array.isArray(pm)) problems.push('"runtimeConfig.portMappings" must be a list');
    else if (Array.isArray(pm)) portMappings = pm as CniPortMapping[];
  }
  if (problems.length > 0) {
    throw new PortferryError('PF_CNI_CONFIG', `the portferry plugin configuration of network "${conf.name}" is not valid: ${problems.join('; ')}`, {
      details: { problems },
    });
  }
  const portmap: PortmapOptionsInput = {
    ...(snat !== undefined ? { snat } : {}),
    ...(masqAll !== undefined ? { masqAll } : {}),
    ...(markMasqBit !== undefined ? { markMasqBit } : {}),
    ...(externalSetMarkChain !== undefined ? { externalSetMarkChain } : {}),
    ...(conditionsV4 !== undefined ? { conditionsV4 } : {}),
    ...(conditionsV6 !== undefined ? { conditionsV6 } : {}),
  };
  return { backend, portmap, portMappings, api: api ?? null, dialInNetns: dialInNetns === true, proxyProtocol: proxyProtocol ?? null };
}
