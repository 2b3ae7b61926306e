// The CNI portmap plugin's iptables layout (table nat) as plain data, and its rendering as
// `iptables-restore --noflush` text. Pure and deterministic.
//
// Layout (facts from the plugin, checked against the real binary by test/rules/oracle.test.ts):
//   PREROUTING, OUTPUT:   -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT         (appended)
//   POSTROUTING:          -m comment ... -j CNI-HOSTPORT-MASQ                      (inserted at 1)
//   CNI-HOSTPORT-SETMARK: -j MARK --set-xmark <mark>/<mark>
//   CNI-HOSTPORT-MASQ:    -m mark --mark <mark>/<mark> -j MASQUERADE
//   CNI-HOSTPORT-DNAT:    per protocol (sorted), ≤ 15 ports: -m multiport ... -j CNI-DN-<hash>
//   CNI-DN-<hash>:        per entry: hairpin mark, localhost mark (IPv4), DNAT
import { isUnspecified } from '../addr.js';
import type { Family } from '../api.js';
import { dnatChainName, type PortmapInput, type PortmapTarget } from './model.js';

export const TOP_DNAT_CHAIN = 'CNI-HOSTPORT-DNAT';
export const SETMARK_CHAIN = 'CNI-HOSTPORT-SETMARK';
export const MASQ_CHAIN = 'CNI-HOSTPORT-MASQ';

export type RuleArgs = readonly string[];

/** One chain as the plugin manages it. */
export interface IptChain {
  readonly name: string;
  /** True for the container's own chain: apply rewrites it whole, delete removes it. */
  readonly owned: boolean;
  /** Rules inside the chain, in order (each includes its `-j`). */
  readonly rules: readonly RuleArgs[];
  /** Chains that jump here, and the matches of those jumps (without `-j <name>`). */
  readonly entryChains: readonly string[];
  readonly entryRules: readonly RuleArgs[];
  /** Entry rules go to the top of the entry chain instead of the end. */
  readonly prependEntry: boolean;
}

/** Everything for one family, in the plugin's setup order. */
export interface IptablesRuleset {
  readonly family: Family;
  readonly table: 'nat';
  readonly chains: readonly IptChain[];
  /** The container's chain (`CNI-DN-…`). */
  readonly containerChain: string;
}

/** A rule as it lives in a chain: the unit of check and idempotent apply. */
export interface IptRule {
  readonly chain: string;
  readonly args: RuleArgs;
  /** Belongs to the container (its chain or an entry into it), not to the shared layout. */
  readonly owned: boolean;
}

function markDef(bit: number): string {
  const v = (1 << bit) >>> 0;
  return `0x${v.toString(16)}/0x${v.toString(16)}`;
}

/** iptables comments hold at most 255 bytes; the plugin cuts to 253 and adds "...". */
function trimComment(text: string): string {
  const b = Buffer.from(text, 'utf8');
  return b.length <= 255 ? text : b.subarray(0, 253).toString('utf8') + '...';
}

function splitPorts(ports: readonly number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < ports.length; i += 15) out.push(ports.slice(i, i + 15).join(','));
  return out;
}

function ipPort(ip: string, port: number, family: Family): string {
  return family === 6 ? `[${ip}]:${port}` : `${ip}:${port}`;
}

function containerChainFor(input: PortmapInput, target: PortmapTarget): IptChain {
  const { options } = input;
  const family = target.net.family;
  const comment = trimComment(`dnat name: "${input.network}" id: "${input.containerID}"`);
  const setMark = options.externalSetMarkChain ?? SETMARK_CHAIN;

  // Entry rules: per protocol in sorted order, ports in config order (including entries skipped
  // below for their host IP's family: the plugin does the same), at most 15 per multiport match.
  const byProto = new Map<string, number[]>();
  for (const e of target.entries) {
    const list = byProto.get(e.protocol) ?? [];
    list.push(e.hostPort);
    byProto.set(e.protocol, list);
  }
  const conditions = family === 6 ? options.conditionsV6 : options.conditionsV4;
  const entryRules: RuleArgs[] = [];
  for (const proto of [...byProto.keys()].sort()) {
    for (const ports of splitPorts(byProto.get(proto) ?? [])) {
      entryRules.push(['-m', 'comment', '--comment', comment, '-m', 'multiport', '-p', proto, '--destination-ports', ports, ...conditions]);
    }
  }

  const rules: RuleArgs[] = [];
  for (const e of target.entries) {
    const base = ['-p', e.protocol, '--dport', String(e.hostPort)];
    if (e.hostIP !== '') {
      const hostFamily = e.hostIP.includes(':') ? 6 : 4;
      if (hostFamily !== family) continue;
      if (!isUnspecified(e.hostIP)) base.push('-d', e.hostIP);
    }
    if (options.snat) {
      const hairpinSource = options.masqAll ? (family === 6 ? '::/0' : '0.0.0.0/0') : `${target.net.ip}/${target.net.prefix}`;
      rules.push([...base, '-s', hairpinSource, '-j', setMark]);
      if (family === 4 && !options.masqAll) rules.push([...base, '-s', '127.0.0.1', '-j', setMark]);
    }
    rules.push([...base, '-j', 'DNAT', '--to-destination', ipPort(target.net.ip, e.containerPort, family)]);
  }

  return Object.freeze({
    name: dnatChainName(input.network, input.containerID),
    owned: true,
    rules: Object.freeze(rules),
    entryChains: Object.freeze([TOP_DNAT_CHAIN]),
    entryRules: Object.freeze(entryRules),
    prependEntry: false,
  });
}

/** The iptables rule set for one target (one container address), in the plugin's setup order. */
export function buildIptablesRuleset(input: PortmapInput, target: PortmapTarget): IptablesRuleset {
  const chains: IptChain[] = [];
  if (input.options.snat && input.options.externalSetMarkChain === null) {
    const mark = markDef(input.options.markMasqBit);
    chains.push({
      name: SETMARK_CHAIN,
      owned: false,
      rules: [['-m', 'comment', '--comment', 'CNI portfwd masquerade mark', '-j', 'MARK', '--set-xmark', mark]],
      entryChains: [],
      entryRules: [],
      prependEntry: false,
    });
    chains.push({
      name: MASQ_CHAIN,
      owned: false,
      rules: [['-m', 'mark', '--mark', mark, '-j', 'MASQUERADE']],
      entryChains: ['POSTROUTING'],
      // On top, so the masquerade rules of the bridge/ptp plugins cannot shadow it.
      entryRules: [['-m', 'comment', '--comment', 'CNI portfwd requiring masquerade']],
      prependEntry: true,
    });
  }
  chains.push({
    name: TOP_DNAT_CHAIN,
    owned: false,
    rules: [],
    entryChains: ['PREROUTING', 'OUTPUT'],
    entryRules: [['-m', 'addrtype', '--dst-type', 'LOCAL']],
    prependEntry: false,
  });
  const own = containerChainFor(input, target);
  chains.push(own);
  return Object.freeze({ family: target.net.family, table: 'nat', chains: Object.freeze(chains), containerChain: own.name });
}

/** One rule set per container address: IPv4 first, then IPv6. */
export function buildIptables(input: PortmapInput): readonly IptablesRuleset[] {
  return Object.freeze(input.targets.map((t) => buildIptablesRuleset(input, t)));
}

/** Every rule of a rule set, in the order apply installs them (chain rules, then entry rules). */
export function iptRules(rs: IptablesRuleset): readonly IptRule[] {
  const out: IptRule[] = [];
  for (const c of rs.chains) {
    for (const r of c.rules) out.push({ chain: c.name, args: r, owned: c.owned });
    for (const ec of c.entryChains) {
      for (const r of c.entryRules) out.push({ chain: ec, args: [...r, '-j', c.name], owned: c.owned });
    }
  }
  return out;
}

/** Quotes one argument the way iptables-save does, so iptables-restore reads it back. */
export function quoteArg(arg: string): string {
  if (arg !== '' && !/[\s"'\\]/.test(arg)) return arg;
  return `"${arg.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

export function formatRule(op: '-A' | '-C' | '-D' | '-I', chain: string, args: RuleArgs, index?: number): string {
  return [op, chain, ...(index === undefined ? [] : [String(index)]), ...args.map(quoteArg)].join(' ');
}

/** A key for a rule, for sets of present rules. */
export function ruleKey(chain: string, args: RuleArgs): string {
  return `${chain}\u0000${args.join('\u0000')}`;
}

/** What apply found in the live table; the empty state renders the script for a fresh table. */
export interface IptablesLiveState {
  /** User-defined chains that exist. */
  readonly chains: ReadonlySet<string>;
  /** Rules (by ruleKey) that `-C` found. */
  readonly present: ReadonlySet<string>;
  /** Stale rules to remove first, as `-D …` lines (entry rules into the container chain that no longer match). */
  readonly remove: readonly string[];
}

export const FRESH_TABLE: IptablesLiveState = Object.freeze({ chains: new Set<string>(), present: new Set<string>(), remove: [] });

/**
 * The `iptables-restore --noflush` script that brings the table from `live` to the rule set:
 * creates missing shared chains and rules, rewrites the container's chain whole (declaring a chain
 * in a --noflush restore flushes it), adds missing entry rules. One COMMIT: one transaction.
 */
export function renderIptablesRestore(rs: IptablesRuleset, live: IptablesLiveState = FRESH_TABLE): string {
  const lines: string[] = ['*nat'];
  for (const c of rs.chains) {
    if (c.owned || !live.chains.has(c.name)) lines.push(`:${c.name} - [0:0]`);
  }
  lines.push(...live.remove);
  for (const c of rs.chains) {
    for (const r of c.rules) {
      if (c.owned || !live.present.has(ruleKey(c.name, r))) lines.push(formatRule('-A', c.name, r));
    }
    for (const ec of c.entryChains) {
      for (const r of c.entryRules) {
        const args = [...r, '-j', c.name];
        if (live.present.has(ruleKey(ec, args))) continue;
        lines.push(c.prependEntry ? formatRule('-I', ec, args, 1) : formatRule('-A', ec, args));
      }
    }
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** The script that removes the container's chain and the rules jumping to it (given as `-S` lines). */
export function renderIptablesDelete(containerChain: string, entryLines: readonly string[], chainExists: boolean): string {
  const lines = ['*nat', ...entryLines.map((l) => l.replace(/^-A /, '-D '))];
  if (chainExists) lines.push(`-F ${containerChain}`, `-X ${containerChain}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}
