// The nftables backend: reads `table ip|ip6 cni_hostport` (`nft -a list`) and brings it to the
// rule sets built by portmap-nft.ts in one `nft -f` transaction for both families. Check and
// delete work from the same builders. Unlike the plugin, delete removes the table once no
// container has rules left in it (the plugin leaves an empty skeleton behind).
import type { CommandRunner } from '../exec.js';
import type { PortmapInput } from './model.js';
import {
  NFT_CONTAINER_CHAINS,
  NFT_TABLE,
  buildNftRuleset,
  nftQuote,
  nftRuleText,
  renderNft,
  type NftContainerChain,
  type NftFamily,
  type NftLiveState,
  type NftRuleset,
} from './portmap-nft.js';
import { exec, refused } from './command.js';
import type { ContainerRef, RulesBackend } from './backend.js';

interface NftListedRule {
  readonly chain: string;
  readonly text: string;
  readonly handle: number;
}

interface NftListing {
  readonly chains: ReadonlySet<string>;
  readonly rules: readonly NftListedRule[];
}

/** The rules of `table <family> cni_hostport` with handles, or null when the table does not exist. */
async function listTable(runner: CommandRunner, family: NftFamily): Promise<NftListing | null> {
  const res = await exec(runner, 'nft', ['-a', 'list', 'table', family, NFT_TABLE]);
  if (res.code !== 0) {
    if (/No such file or directory/.test(res.stderr)) return null;
    throw refused(`nft list table ${family} ${NFT_TABLE}`, res);
  }
  const chains = new Set<string>();
  const rules: NftListedRule[] = [];
  let chain: string | null = null;
  for (const raw of res.stdout.split('\n')) {
    const line = raw.trim();
    const head = /^chain (\S+) \{/.exec(line);
    if (head?.[1] !== undefined) {
      chain = head[1];
      chains.add(chain);
      continue;
    }
    if (line === '}') {
      chain = null;
      continue;
    }
    const rule = /^(.*\S)\s+# handle (\d+)$/.exec(line);
    if (chain !== null && rule?.[1] !== undefined && rule[2] !== undefined) rules.push({ chain, text: rule[1], handle: Number(rule[2]) });
  }
  return { chains, rules };
}

/** Rules that belong to a container: in a container chain, with a comment (the container ID). */
function containerRules(listed: NftListing): NftListedRule[] {
  return listed.rules.filter((r) => (NFT_CONTAINER_CHAINS as readonly string[]).includes(r.chain) && / comment "(?:[^"\\]|\\.)*"$/.test(r.text));
}

function rulesOf(listed: NftListing, comment: string): NftListedRule[] {
  const suffix = ` comment ${nftQuote(comment)}`;
  return containerRules(listed).filter((r) => r.text.endsWith(suffix));
}

async function liveState(runner: CommandRunner, rs: NftRuleset): Promise<NftLiveState> {
  const table = await listTable(runner, rs.family);
  if (table === null) return { deleteHandles: [], upToDate: false };
  const mine = rulesOf(table, rs.comment);
  const same =
    mine.length === rs.rules.length &&
    NFT_CONTAINER_CHAINS.every((c) => {
      const have = mine.filter((r) => r.chain === c).map((r) => r.text);
      const want = rs.rules.filter((r) => r.chain === c).map((r) => nftRuleText(rs, r));
      return have.length === want.length && have.every((t, i) => t === want[i]);
    });
  if (same) return { deleteHandles: [], upToDate: true };
  return { deleteHandles: mine.map((r) => ({ chain: r.chain as NftContainerChain, handle: r.handle })), upToDate: false };
}

async function apply(input: PortmapInput, runner: CommandRunner): Promise<string[]> {
  const rulesets = input.targets.map((t) => buildNftRuleset(input, t));
  const live = new Map<NftFamily, NftLiveState>();
  for (const rs of rulesets) live.set(rs.family, await liveState(runner, rs));
  const script = renderNft(rulesets, live);
  const res = await exec(runner, 'nft', ['-f', '-'], script);
  if (res.code !== 0) throw refused('nft -f (one transaction)', res, script);
  return [script];
}

/**
 * Every rule the builder makes, looked up in the listing. The skeleton's entry rules carry the
 * user's conditions as the user wrote them; nft may print them in its own words, so a rule that
 * ends with the unconditioned text counts as present too.
 */
async function check(input: PortmapInput, runner: CommandRunner): Promise<string[]> {
  const missing: string[] = [];
  for (const t of input.targets) {
    const rs = buildNftRuleset(input, t);
    const table = await listTable(runner, rs.family);
    const prefix = `${rs.family} ${NFT_TABLE}`;
    const listed = (chain: string): string[] => table?.rules.filter((r) => r.chain === chain).map((r) => r.text) ?? [];
    for (const r of rs.shared) {
      const found = listed(r.chain).some((text) => text === r.rule || (r.rule !== r.bare && text.endsWith(` ${r.bare}`)));
      if (!found) missing.push(`add rule ${prefix} ${r.chain} ${r.rule}`);
    }
    for (const r of rs.rules) {
      const text = nftRuleText(rs, r);
      if (!listed(r.chain).includes(text)) missing.push(`add rule ${prefix} ${r.chain} ${text}`);
    }
  }
  return missing;
}

async function remove(who: ContainerRef, runner: CommandRunner): Promise<string[]> {
  const lines: string[] = [];
  for (const family of ['ip', 'ip6'] as const) {
    const table = await listTable(runner, family);
    if (table === null) continue;
    const mine = rulesOf(table, who.containerID);
    if (mine.length > 0 && containerRules(table).length === mine.length) {
      lines.push(`delete table ${family} ${NFT_TABLE}`); // the last container: nothing of ours stays
    } else {
      for (const r of mine) lines.push(`delete rule ${family} ${NFT_TABLE} ${r.chain} handle ${r.handle}`);
    }
  }
  if (lines.length === 0) return [];
  const script = lines.join('\n') + '\n';
  const res = await exec(runner, 'nft', ['-f', '-'], script);
  if (res.code !== 0) throw refused('nft -f (delete, one transaction)', res, script);
  return [script];
}

export const nftablesBackend: RulesBackend = { name: 'nftables', tools: ['nft'], apply, check, remove };
