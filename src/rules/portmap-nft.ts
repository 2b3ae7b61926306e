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

export interface NftRuleset {
  readonly family: NftFamily;
  readonly table: typeof NFT_TABLE;
  /** The comment on every rule of the container. */
  readonly comment: string;
  readonly conditions: readonly string[];
  readonly snat: boolean;
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
  return Object.freeze({
    family: ipX,
    table: NFT_TABLE,
    comment: input.containerID,
    conditions: family === 6 ? input.options.conditionsV6 : input.options.conditionsV4,
    snat,
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
  const cond = rs.conditions.length > 0 ? `${rs.conditions.join(' ')} ` : '';
  const lines = [
    `add table ${t} { comment ${nftQuote(NFT_TABLE_COMMENT)} ; }`,
    `add chain ${t} hostports`,
    `add chain ${t} hostip_hostports`,
    `add chain ${t} hostports_all`,
    `flush chain ${t} hostports_all`,
    `add rule ${t} hostports_all jump hostip_hostports`,
    `add rule ${t} hostports_all jump hostports`,
    `add chain ${t} prerouting { type nat hook prerouting priority -100 ; }`,
    `flush chain ${t} prerouting`,
    `add rule ${t} prerouting ${cond}fib daddr type local jump hostports_all`,
    `add chain ${t} output { type nat hook output priority -100 ; }`,
    `flush chain ${t} output`,
    `add rule ${t} output ${cond}fib daddr type local jump hostports_all`,
  ];
  if (rs.snat) lines.push(`add chain ${t} masquerading { type nat hook postrouting priority 100 ; }`);
  for (const d of live.deleteHandles) lines.push(`delete rule ${t} ${d.chain} handle ${d.handle}`);
  if (!live.upToDate) for (const r of rs.rules) lines.push(`add rule ${t} ${r.chain} ${nftRuleText(rs, r)}`);
  return lines;
}

/** The whole `nft -f` script (every family in one transaction). */
export function renderNft(rulesets: readonly NftRuleset[], live?: ReadonlyMap<NftFamily, NftLiveState>): string {
  return rulesets.flatMap((rs) => renderNftLines(rs, live?.get(rs.family) ?? FRESH_NFT)).join('\n') + '\n';
}
