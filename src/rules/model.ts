// The input of the rule builders, in the CNI portmap plugin's own terms, and the adapters that turn
// our Mappings or CNI `runtimeConfig.portMappings` entries into it. Pure: no commands, no files.
//
// The portmap model: one container, at most one address per family (with its prefix), and one list
// of port-map entries that the plugin applies to each container address in turn.
import { createHash } from 'node:crypto';
import type { Family, Mapping } from '../api.js';
import { familyOf } from '../addr.js';
import { parseCniPortMappings, type CniPortMapEntry } from '../config/cni.js';
import { PortferryError } from '../errors.js';

export { familyOf } from '../addr.js';

/** One CNI port-map entry: a single host port. `hostIP` '' means unspecified, as in CNI. */
export type PortMapEntry = CniPortMapEntry;

/** The container's address on its network, as in a CNI result (`10.88.0.2/24`). */
export interface ContainerNet {
  readonly ip: string;
  readonly prefix: number;
  readonly family: Family;
}

/** The plugin's options, with its defaults filled in. */
export interface PortmapOptions {
  /** Mark hairpin and localhost traffic for masquerading. Default true. */
  readonly snat: boolean;
  /** The mark bit used by CNI-HOSTPORT-SETMARK / MASQ. Default 13 (0x2000). */
  readonly markMasqBit: number;
  /** Jump here instead of CNI-HOSTPORT-SETMARK (iptables only); the chain must exist. */
  readonly externalSetMarkChain: string | null;
  /** Masquerade traffic from every source, not only hairpin and localhost (newer plugins). */
  readonly masqAll: boolean;
  /** Extra match arguments on the entry rules: iptables arguments, or nft expressions. */
  readonly conditionsV4: readonly string[];
  readonly conditionsV6: readonly string[];
}

/** One family's worth of work: the container address of that family and the entries it gets. */
export interface PortmapTarget {
  readonly net: ContainerNet;
  readonly entries: readonly PortMapEntry[];
}

export interface PortmapInput {
  readonly network: string;
  readonly containerID: string;
  /** IPv4 first, then IPv6 (the plugin's order); at most one per family. */
  readonly targets: readonly PortmapTarget[];
  readonly options: PortmapOptions;
  /** Things the kernel rules cannot express (cross-family mappings), for the user. */
  readonly warnings: readonly string[];
}

export const DEFAULT_PORTMAP_OPTIONS: PortmapOptions = Object.freeze({
  snat: true,
  markMasqBit: 13,
  externalSetMarkChain: null,
  masqAll: false,
  conditionsV4: [],
  conditionsV6: [],
});

/** Options as a user gives them: every key optional. */
export type PortmapOptionsInput = Partial<PortmapOptions> & { readonly markMasqBit?: number };

// libcni's rules for network names and container IDs; both end up inside rule comments.
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** `CNI-DN-` + hex(sha512(network + containerID)), cut to 28 characters. */
export function dnatChainName(network: string, containerID: string): string {
  return ('CNI-DN-' + createHash('sha512').update(network + containerID).digest('hex')).slice(0, 28);
}

/** Parses `10.88.0.2/24` or `fd00::2/64` (a bare address gets /32 or /128). */
export function parseContainerCidr(text: string, place: string): ContainerNet {
  const slash = text.indexOf('/');
  const ip = slash < 0 ? text : text.slice(0, slash);
  const family = familyOf(ip);
  if (family === null) {
    throw new PortferryError('PF_IP_INVALID', `${place}: "${text}" is not an IP address with an optional /prefix`, {
      details: { input: text },
    });
  }
  const max = family === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1);
  const prefix = Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText) || prefix > max) {
    throw new PortferryError('PF_CONFIG_VALUE', `${place}: prefix "/${prefixText}" of ${text} is not a number from 0 to ${max}`, {
      details: { input: text },
    });
  }
  return Object.freeze({ ip, prefix, family });
}

function checkOptions(input: PortmapOptionsInput): PortmapOptions {
  const o: PortmapOptions = { ...DEFAULT_PORTMAP_OPTIONS, ...input };
  if (input.markMasqBit !== undefined && input.externalSetMarkChain !== undefined && input.externalSetMarkChain !== null) {
    throw new PortferryError('PF_CONFIG_VALUE', 'markMasqBit and externalSetMarkChain cannot both be given (the plugin refuses this too)', {
      hint: 'Keep one: markMasqBit for the plugin\'s own SETMARK/MASQ chains, or externalSetMarkChain to jump to a chain you manage.',
    });
  }
  if (!Number.isInteger(o.markMasqBit) || o.markMasqBit < 0 || o.markMasqBit > 31) {
    throw new PortferryError('PF_CONFIG_VALUE', `markMasqBit ${String(o.markMasqBit)} is not a whole number from 0 to 31`);
  }
  if (o.externalSetMarkChain !== null && !/^[A-Za-z0-9_.-]{1,28}$/.test(o.externalSetMarkChain)) {
    throw new PortferryError('PF_CONFIG_VALUE', `externalSetMarkChain "${o.externalSetMarkChain}" is not a valid iptables chain name (1-28 of A-Z a-z 0-9 _ . -)`);
  }
  return Object.freeze({ ...o, conditionsV4: Object.freeze([...o.conditionsV4]), conditionsV6: Object.freeze([...o.conditionsV6]) });
}

function checkIds(network: string, containerID: string): void {
  if (!NAME_RE.test(network)) {
    throw new PortferryError('PF_CONFIG_VALUE', `network name "${network}" is not valid: it must start with a letter or digit and hold only letters, digits, _ . -`, {
      hint: 'Give --network the name of the CNI network, e.g. `podman` or `cni0`.',
    });
  }
  if (!NAME_RE.test(containerID)) {
    throw new PortferryError('PF_CONFIG_VALUE', `container ID "${containerID}" is not valid: it must start with a letter or digit and hold only letters, digits, _ . -`, {
      hint: 'Give --container-id the container\'s ID as the runtime passes it in CNI_CONTAINERID.',
    });
  }
}

function checkEntry(e: PortMapEntry, place: string): void {
  for (const [k, v] of [['hostPort', e.hostPort], ['containerPort', e.containerPort]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 65535) {
      throw new PortferryError('PF_PORT_INVALID', `${place}.${k}: ${String(v)} is not a port from 1 to 65535`);
    }
  }
  if (e.protocol !== 'tcp' && e.protocol !== 'udp') {
    throw new PortferryError('PF_PROTOCOL_INVALID', `${place}.protocol: "${String(e.protocol)}" is not tcp or udp`);
  }
  if (e.hostIP !== '' && familyOf(e.hostIP) === null) {
    throw new PortferryError('PF_IP_INVALID', `${place}.hostIP: "${e.hostIP}" is not an IP address`);
  }
}

function crossFamilyWarnings(targets: readonly PortmapTarget[]): string[] {
  // A host IP is served when the container has an address of its family; otherwise nothing can.
  const families = new Set(targets.map((t) => t.net.family));
  const out = new Set<string>();
  for (const t of targets) {
    for (const e of t.entries) {
      const hf = e.hostIP === '' ? null : familyOf(e.hostIP);
      if (hf !== null && !families.has(hf)) {
        out.add(
          `${e.protocol}/${e.hostIP}:${e.hostPort}: host IP is IPv${hf} but the container has no IPv${hf} address; ` +
            'the kernel cannot DNAT across families, so no rule forwards it (use the userspace forwarder)',
        );
      }
    }
  }
  return [...out];
}

function sortTargets(targets: PortmapTarget[]): readonly PortmapTarget[] {
  return Object.freeze(targets.sort((a, b) => a.net.family - b.net.family));
}

/** A raw CNI `runtimeConfig.portMappings` entry as found in JSON. */
export interface CniPortMapping {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol?: string;
  readonly hostIP?: string;
}

/**
 * The plugin's own input: CNI port mappings applied to each container address (at most one per
 * family, as the plugin takes the first IPv4 and first IPv6 address of the sandbox interface).
 */
export function fromCniPortMappings(args: {
  readonly network: string;
  readonly containerID: string;
  readonly containerNets: readonly ContainerNet[];
  readonly portMappings: readonly CniPortMapping[];
  readonly options?: PortmapOptionsInput;
}): PortmapInput {
  checkIds(args.network, args.containerID);
  const options = checkOptions(args.options ?? {});
  // The one CNI portMappings parser (config/cni.ts): the same checks as a config file.
  const entries = parseCniPortMappings(args.portMappings, 'portMappings');
  const seen = new Set<Family>();
  const targets: PortmapTarget[] = [];
  for (const net of args.containerNets) {
    if (seen.has(net.family)) continue; // the plugin keeps the first address of each family
    seen.add(net.family);
    targets.push(Object.freeze({ net, entries: Object.freeze(entries) }));
  }
  const sorted = sortTargets(targets);
  return Object.freeze({ network: args.network, containerID: args.containerID, targets: sorted, options, warnings: Object.freeze(crossFamilyWarnings(sorted)) });
}

/**
 * Our Mappings: ranges expand to single ports; each mapping goes to the container address of its
 * containerIP's family. `containerCidrs` give the prefix (an address without a CIDR gets /32 or
 * /128, so the hairpin rule matches the container itself).
 */
export function fromMappings(args: {
  readonly network: string;
  readonly containerID: string;
  readonly mappings: readonly Mapping[];
  readonly containerCidrs?: readonly ContainerNet[];
  readonly options?: PortmapOptionsInput;
}): PortmapInput {
  checkIds(args.network, args.containerID);
  const options = checkOptions(args.options ?? {});
  const byFamily = new Map<Family, { net: ContainerNet; entries: PortMapEntry[] }>();
  for (const m of args.mappings) {
    const family = familyOf(m.containerIP);
    if (family === null) throw new PortferryError('PF_IP_INVALID', `${m.source}: container IP "${m.containerIP}" is not an IP address`);
    let slot = byFamily.get(family);
    if (slot === undefined) {
      const cidr = (args.containerCidrs ?? []).find((c) => c.family === family);
      if (cidr !== undefined && cidr.ip !== m.containerIP) {
        throw new PortferryError('PF_USAGE', `${m.source}: container IP ${m.containerIP} differs from --container-cidr ${cidr.ip}/${cidr.prefix}`, {
          hint: 'When the mappings name the container IP, --container-cidr only adds the prefix: give the same address, e.g. ' + `${m.containerIP}/${cidr.prefix}.`,
        });
      }
      slot = { net: Object.freeze({ ip: m.containerIP, prefix: cidr?.prefix ?? (family === 4 ? 32 : 128), family }), entries: [] };
      byFamily.set(family, slot);
    } else if (slot.net.ip !== m.containerIP) {
      throw new PortferryError('PF_CONFIG_VALUE', `${m.source}: container IP ${m.containerIP} differs from ${slot.net.ip}; kernel rules are made for one container with one address per family`, {
        hint: 'Render the rules once per container (one --container-id each), or point every mapping at the same container IP.',
      });
    }
    const count = m.hostPortEnd - m.hostPort + 1;
    for (let i = 0; i < count; i++) {
      const e: PortMapEntry = Object.freeze({
        hostPort: m.hostPort + i,
        containerPort: m.containerPortEnd > m.containerPort ? m.containerPort + i : m.containerPort,
        protocol: m.protocol,
        hostIP: m.hostIP ?? '',
      });
      checkEntry(e, m.source);
      slot.entries.push(e);
    }
  }
  const targets = sortTargets([...byFamily.values()].map((s) => Object.freeze({ net: s.net, entries: Object.freeze(s.entries) })));
  return Object.freeze({ network: args.network, containerID: args.containerID, targets, options, warnings: Object.freeze(crossFamilyWarnings(targets)) });
}

/** UDP host ports, sorted and unique, whose conntrack entries apply flushes (per family, as the plugin). */
export function udpHostPorts(target: PortmapTarget): readonly number[] {
  return [...new Set(target.entries.filter((e) => e.protocol === 'udp').map((e) => e.hostPort))].sort((a, b) => a - b);
}
