// The CNI portmap plugin's nftables layout (table `cni_hostport` per family) as plain data, and
// its rendering as `nft -f` text: one file, one transaction. Pure and deterministic.
//
// Layout (newer plugins' nftables backend; the Debian 1.1.1 plugin has no nftables backend):
//   table <ip|ip6> cni_hostport { comment "CNI portmap plugin" }
//   prerouting  (nat, hook prerouting, priority -100): [conditions] fib daddr type local jump hostports_all
//   output      (nat, hook output, priority -100):     same
//   hostports_all: jump hostip_hostports; jump hostports
//   hostports:     [ip daddr <hostIP>] <proto> dport <hostPort> dnat to <cip>:<cport> comment "<containerID>"
//   masquerading (nat, hook postrouting, priority 100), with snat:
//                  ip saddr <cip> ip daddr <cip> masquerade; IPv4 also ip saddr 127.0.0.1 …
import { isUnspecified } from '../addr.js';
import type { Family } from '../api.js';
import { familyOf, type PortmapInput, type PortmapTarget } from './model.js';

export const NFT_TABLE = 'cni_hostport';
export const NFT_TABLE_COMMENT = 'CNI portmap plugin';
/** Chains that hold per-container rules (marked with the container ID as comment). */
export const NFT_CONTAINER_CHAINS = ['hostports', 'hostip_hostports', 'masquerading'] as const;
export type NftContainerChain = (typeof NFT_CONTAINER_CHAINS)[number];

export type NftFamily = 'ip' | 'ip6';

/** A rule of the container: its chain and its text without the comment. */
export interface NftRule {
  readonly chain: NftContainerChain;
  readonly rule: string;
}

/** A rule of the shared skeleton: its chain, its text, and its text without the user's conditions. */
export interface NftSharedRule {
  readonly chain: string;
  readonly rule: string;
  readonly bare: string;
}

/** A chain of the skeleton: base chains carry their hook; flushed ones are rewritten on every apply. */
export interface NftChainDecl {
  readonly name: string;
  readonly hook: string | null;
  readonly flush: boolean;
}

export interface NftRuleset {
  readonly family: NftFamily;
  readonly table: typeof NFT_TABLE;
  /** The comment on every rule of the container. */
  readonly comment: string;
  /** Chains in declaration order (masquerading only with snat). */
  readonly chains: readonly NftChainDecl[];
  /** The rules of the flushed skeleton chains (the same for every container). */
  readonly shared: readonly NftSharedRule[];
  /** In install order: hostports rules, then masquerading rules. */
  readonly rules: readonly NftRule[];
}

export function nftFamily(family: Family): NftFamily {
  return family === 6 ? 'ip6' : 'ip';
}

function joinHostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function buildNftRuleset(input: PortmapInput, target: PortmapTarget): NftRuleset {
  const family = target.net.family;
  const ipX = nftFamily(family);
  const cip = target.net.ip;
  const rules: NftRule[] = [];
  for (const e of target.entries) {
    if (e.hostIP !== '' && familyOf(e.hostIP) !== family) continue; // no cross-family DNAT
    const daddr = e.hostIP !== '' && !isUnspecified(e.hostIP) ? `${ipX} daddr ${e.hostIP} ` : '';
    rules.push({ chain: 'hostports', rule: `${daddr}${e.protocol} dport ${e.hostPort} dnat to ${joinHostPort(cip, e.containerPort)}` });
  }
  const { snat, masqAll } = input.options;
  if (snat) {
    const src = masqAll ? (family === 6 ? '::/0' : '0.0.0.0/0') : cip;
    rules.push({ chain: 'masquerading', rule: `${ipX} saddr ${src} ${ipX} daddr ${cip} masquerade` });
    if (family === 4 && !masqAll) rules.push({ chain: 'masquerading', rule: `ip saddr 127.0.0.1 ip daddr ${cip} masquerade` });
  }
  const conditions = family === 6 ? input.options.conditionsV6 : input.options.conditionsV4;
  const entry = 'fib daddr type local jump hostports_all';
  const guarded = conditions.length > 0 ? `${conditions.join(' ')} ${entry}` : entry;
  return Object.freeze({
    family: ipX,
    table: NFT_TABLE,
    comment: input.containerID,
    chains: Object.freeze([
      { name: 'hostports', hook: null, flush: false },
      { name: 'hostip_hostports', hook: null, flush: false },
      { name: 'hostports_all', hook: null, flush: true },
      { name: 'prerouting', hook: 'type nat hook prerouting priority -100', flush: true },
      { name: 'output', hook: 'type nat hook output priority -100', flush: true },
      ...(snat ? [{ name: 'masquerading', hook: 'type nat hook postrouting priority 100', flush: false }] : []),
    ]),
    shared: Object.freeze([
      { chain: 'hostports_all', rule: 'jump hostip_hostports', bare: 'jump hostip_hostports' },
      { chain: 'hostports_all', rule: 'jump hostports', bare: 'jump hostports' },
      { chain: 'prerouting', rule: guarded, bare: entry },
      { chain: 'output', rule: guarded, bare: entry },
    ]),
    rules: Object.freeze(rules),
  });
}

export function buildNft(input: PortmapInput): readonly NftRuleset[] {
  return Object.freeze(input.targets.map((t) => buildNftRuleset(input, t)));
}

export function nftQuote(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** The text of a container rule as `nft list` shows it: rule, then its comment. */
export function nftRuleText(rs: NftRuleset, r: NftRule): string {
  return `${r.rule} comment ${nftQuote(rs.comment)}`;
}

/** What apply found in the live table of one family. */
export interface NftLiveState {
  /** Handles of the container's rules (comment = container ID) to delete first. */
  readonly deleteHandles: readonly { readonly chain: NftContainerChain; readonly handle: number }[];
  /** The container's rules are already exactly in place: do not add them again. */
  readonly upToDate: boolean;
}

export const FRESH_NFT: NftLiveState = Object.freeze({ deleteHandles: [], upToDate: false });

/** The `nft -f` lines for one family: the shared skeleton, then the container's rules. */
export function renderNftLines(rs: NftRuleset, live: NftLiveState = FRESH_NFT): string[] {
  const t = `${rs.family} ${rs.table}`;
  const lines = [`add table ${t} { comment ${nftQuote(NFT_TABLE_COMMENT)} ; }`];
  for (const c of rs.chains) {
    lines.push(`add chain ${t} ${c.name}${c.hook === null ? '' : ` { ${c.hook} ; }`}`);
    if (!c.flush) continue;
    lines.push(`flush chain ${t} ${c.name}`);
    for (const r of rs.shared) if (r.chain === c.name) lines.push(`add rule ${t} ${c.name} ${r.rule}`);
  }
  for (const d of live.deleteHandles) lines.push(`delete rule ${t} ${d.chain} handle ${d.handle}`);
  if (!live.upToDate) for (const r of rs.rules) lines.push(`add rule ${t} ${r.chain} ${nftRuleText(rs, r)}`);
  return lines;
}

/** The whole `nft -f` script (every family in one transaction). */
export function renderNft(rulesets: readonly NftRuleset[], live?: ReadonlyMap<NftFamily, NftLiveState>): string {
  return rulesets.flatMap((rs) => renderNftLines(rs, live?.get(rs.family) ?? FRESH_NFT)).join('\n') + '\n';
}
