// The iptables backend: reads the live nat table (`-S`, `-C`) and brings it to the rule set built
// by portmap-iptables.ts with one `iptables-restore --noflush` per family. Check and delete work
// from the same builders, so what is checked is exactly what apply writes.
import type { CommandRunner } from '../exec.js';
import type { Family } from '../api.js';
import { PortferryError } from '../errors.js';
import { dnatChainName, type PortmapInput } from './model.js';
import {
  TOP_DNAT_CHAIN,
  buildIptablesRuleset,
  formatRule,
  iptRules,
  renderIptablesDelete,
  renderIptablesRestore,
  ruleKey,
  type IptRule,
  type IptablesLiveState,
  type IptablesRuleset,
} from './portmap-iptables.js';
import { exec, mapLimit, refused } from './command.js';
import type { ContainerRef, RulesBackend } from './backend.js';

const BUILTIN = new Set(['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING']);

function iptCmd(family: Family): { ipt: string; restore: string; save: string } {
  return family === 6
    ? { ipt: 'ip6tables', restore: 'ip6tables-restore', save: 'ip6tables-save' }
    : { ipt: 'iptables', restore: 'iptables-restore', save: 'iptables-save' };
}

interface NatListing {
  readonly chains: ReadonlySet<string>;
  readonly lines: readonly string[];
}

async function listNat(runner: CommandRunner, family: Family): Promise<NatListing> {
  const { ipt } = iptCmd(family);
  const res = await exec(runner, ipt, ['-t', 'nat', '-S']);
  if (res.code !== 0) throw refused(`${ipt} -t nat -S`, res);
  const lines = res.stdout.split('\n').filter((l) => l !== '');
  const chains = new Set(lines.filter((l) => l.startsWith('-N ')).map((l) => l.slice(3).trim()));
  return { chains, lines };
}

/** `-S` lines of entry chains that jump to `chain`. */
function jumpLines(listing: NatListing, entryChain: string, chain: string): string[] {
  return listing.lines.filter((l) => l.startsWith(`-A ${entryChain} `) && l.endsWith(` -j ${chain}`));
}

async function ruleExists(runner: CommandRunner, family: Family, r: IptRule): Promise<boolean> {
  const res = await exec(runner, iptCmd(family).ipt, ['-t', 'nat', '-C', r.chain, ...r.args]);
  return res.code === 0;
}

async function iptablesLive(runner: CommandRunner, rs: IptablesRuleset): Promise<IptablesLiveState> {
  const listing = await listNat(runner, rs.family);
  const rules = iptRules(rs);
  const chainThere = (c: string): boolean => BUILTIN.has(c) || listing.chains.has(c);
  // Shared rules and the entries into the container chain are added only when missing; the
  // container chain itself is rewritten whole, so its rules need no look.
  const toLook = rules.filter((r) => chainThere(r.chain) && !(r.owned && r.chain === rs.containerChain) && (!r.owned || listing.chains.has(rs.containerChain)));
  const found = await mapLimit(toLook, 4, (r) => ruleExists(runner, rs.family, r));
  const present = new Set<string>();
  toLook.forEach((r, i) => {
    if (found[i] === true) present.add(ruleKey(r.chain, r.args));
  });
  // Entries into the container chain that are not in the rule set (an earlier apply with other
  // ports): remove them all and add the wanted ones, so the chain is entered for these ports only.
  const entries = rules.filter((r) => r.owned && r.chain !== rs.containerChain);
  const live = jumpLines(listing, TOP_DNAT_CHAIN, rs.containerChain);
  const entriesPresent = entries.filter((r) => present.has(ruleKey(r.chain, r.args))).length;
  if (live.length > entriesPresent) {
    for (const r of entries) present.delete(ruleKey(r.chain, r.args));
    return { chains: listing.chains, present, remove: live.map((l) => l.replace(/^-A /, '-D ')) };
  }
  return { chains: listing.chains, present, remove: [] };
}

async function apply(input: PortmapInput, runner: CommandRunner): Promise<string[]> {
  const rulesets = input.targets.map((t) => buildIptablesRuleset(input, t));
  const scripts: string[] = [];
  const snapshots: { family: Family; text: string }[] = [];
  try {
    for (const [i, rs] of rulesets.entries()) {
      const { restore, save } = iptCmd(rs.family);
      const script = renderIptablesRestore(rs, await iptablesLive(runner, rs));
      // A later family may still fail: keep a snapshot to put this one back.
      if (i < rulesets.length - 1) {
        const snap = await exec(runner, save, ['-c', '-t', 'nat']);
        if (snap.code !== 0) throw refused(`${save} -t nat`, snap);
        snapshots.push({ family: rs.family, text: snap.stdout });
      }
      const res = await exec(runner, restore, ['--noflush'], script);
      if (res.code !== 0) throw refused(`${restore} --noflush (IPv${rs.family}, container chain ${rs.containerChain})`, res, script);
      scripts.push(script);
    }
  } catch (e) {
    for (const s of snapshots.slice(0, scripts.length).reverse()) {
      await runner.run(iptCmd(s.family).restore, ['-c', '-T', 'nat'], s.text);
    }
    throw e;
  }
  return scripts;
}

/** Every rule the builder makes for the container, checked with `-C` (as the plugin's CHECK does). */
async function check(input: PortmapInput, runner: CommandRunner): Promise<string[]> {
  const missing: string[] = [];
  for (const t of input.targets) {
    const rs = buildIptablesRuleset(input, t);
    const { ipt } = iptCmd(rs.family);
    const listing = await listNat(runner, rs.family);
    const rules = iptRules(rs);
    const there = await mapLimit(rules, 4, (r) => (BUILTIN.has(r.chain) || listing.chains.has(r.chain) ? ruleExists(runner, rs.family, r) : Promise.resolve(false)));
    rules.forEach((r, i) => {
      if (there[i] !== true) missing.push(`${ipt} -t nat ${formatRule('-A', r.chain, r.args)}`);
    });
  }
  return missing;
}

/** The container's chain and the entries into it, in both families; shared chains stay. */
async function remove(who: ContainerRef, runner: CommandRunner): Promise<string[]> {
  const chain = dnatChainName(who.network, who.containerID);
  const scripts: string[] = [];
  const failures: PortferryError[] = [];
  for (const family of [4, 6] as const) {
    let listing: NatListing;
    try {
      listing = await listNat(runner, family);
    } catch (e) {
      // Like the plugin: a family whose iptables is unusable is skipped, unless both are.
      if (e instanceof PortferryError && e.code === 'PF_RULES_APPLY') {
        failures.push(e);
        continue;
      }
      throw e;
    }
    const entries = jumpLines(listing, TOP_DNAT_CHAIN, chain);
    const exists = listing.chains.has(chain);
    if (entries.length === 0 && !exists) continue;
    const script = renderIptablesDelete(chain, entries, exists);
    const { restore } = iptCmd(family);
    const res = await exec(runner, restore, ['--noflush'], script);
    if (res.code !== 0) throw refused(`${restore} --noflush (delete ${chain})`, res, script);
    scripts.push(script);
  }
  if (failures.length === 2 && failures[0] !== undefined) throw failures[0];
  return scripts;
}

/** Containers of `network` with entry rules, from the comments (`dnat name: "NET" id: "ID"`), both families. */
async function containers(network: string, runner: CommandRunner): Promise<string[]> {
  const found = new Set<string>();
  for (const family of [4, 6] as const) {
    let listing: NatListing;
    try {
      listing = await listNat(runner, family);
    } catch (e) {
      if (e instanceof PortferryError && e.code === 'PF_RULES_APPLY') continue; // that family's iptables is unusable
      throw e;
    }
    for (const line of listing.lines) {
      if (!line.startsWith(`-A ${TOP_DNAT_CHAIN} `)) continue;
      const m = /--comment "dnat name: \\"(.*?)\\" id: \\"(.*?)\\""/.exec(line);
      if (m?.[1] === network && m[2] !== undefined) found.add(m[2]);
    }
  }
  return [...found];
}

export const iptablesBackend: RulesBackend = { name: 'iptables', tools: ['iptables-restore', 'iptables', 'iptables-save'], apply, check, remove, containers };
