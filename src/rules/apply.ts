// The only place that runs iptables, ip6tables, nft, sysctl, ip and conntrack. Everything goes
// through a CommandRunner, so tests and the benchmark can point it into a namespace
// (`prefixedRunner(['ip', 'netns', 'exec', name])`).
//
// apply:  idempotent; one restore (per family) / one `nft -f` transaction; if a later family fails,
//         the earlier ones are put back from a snapshot and route_localnet is reset: nothing stays.
// check:  lists every expected rule that is missing.
// delete: removes exactly the container's rules; shared chains and other containers stay. A second
//         delete finds nothing and succeeds.
import { spawn } from 'node:child_process';
import type { Family } from '../api.js';
import { PortferryError } from '../errors.js';
import { dnatChainName, udpHostPorts, type PortmapInput } from './model.js';
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

export type Backend = 'iptables' | 'nftables';

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface CommandRunner {
  run(cmd: string, args: readonly string[], stdin?: string): Promise<CommandResult>;
}

/** Runs commands here. A command that is not installed yields code 127. */
export const localRunner: CommandRunner = {
  run(cmd, args, stdin) {
    return new Promise((resolve) => {
      const child = spawn(cmd, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let spawnError: NodeJS.ErrnoException | undefined;
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.stdin.on('error', () => {}); // EPIPE when the command exits without reading
      child.on('error', (e: NodeJS.ErrnoException) => {
        spawnError = e;
      });
      child.on('close', (code) => {
        if (spawnError !== undefined) {
          resolve({ code: spawnError.code === 'ENOENT' ? 127 : 126, stdout: '', stderr: `${cmd}: ${spawnError.message}` });
          return;
        }
        resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
      });
      child.stdin.end(stdin ?? '');
    });
  },
};

/** Runs every command behind a prefix, e.g. `['ip', 'netns', 'exec', 'pf-x']`. */
export function prefixedRunner(prefix: readonly string[], base: CommandRunner = localRunner): CommandRunner {
  const [head, ...rest] = prefix;
  if (head === undefined) return base;
  return { run: (cmd, args, stdin) => base.run(head, [...rest, cmd, ...args], stdin) };
}

const PACKAGE_OF: Readonly<Record<string, string>> = {
  iptables: 'iptables',
  'iptables-restore': 'iptables',
  'iptables-save': 'iptables',
  ip6tables: 'iptables',
  'ip6tables-restore': 'iptables',
  'ip6tables-save': 'iptables',
  nft: 'nftables',
  conntrack: 'conntrack',
  sysctl: 'procps',
  ip: 'iproute2',
};

function isMissingTool(res: CommandResult): boolean {
  // 127: our own spawn; `ip netns exec` / nsenter report a failed exec on stderr.
  return (
    res.code === 127 ||
    /exec of "[^"]*" failed: No such file or directory/.test(res.stderr) ||
    /nsenter: failed to execute [^:]*: No such file or directory/.test(res.stderr)
  );
}

function toolMissing(cmd: string): PortferryError {
  const pkg = PACKAGE_OF[cmd] ?? cmd;
  return new PortferryError('PF_RULES_TOOL_MISSING', `the command "${cmd}" is not installed (or not on PATH)`, {
    hint: `Install it: \`apt-get install -y ${pkg}\` (Debian/Ubuntu package "${pkg}").`,
    details: { command: cmd, package: pkg },
  });
}

/** Runs a command; a missing tool becomes PF_RULES_TOOL_MISSING, everything else is returned. */
async function exec(runner: CommandRunner, cmd: string, args: readonly string[], stdin?: string): Promise<CommandResult> {
  const res = await runner.run(cmd, args, stdin);
  if (res.code !== 0 && isMissingTool(res)) throw toolMissing(cmd);
  return res;
}

function refused(what: string, res: CommandResult, script?: string): PortferryError {
  const out = (res.stderr.trim() || res.stdout.trim() || `exit code ${res.code}`).split('\n').slice(0, 8).join('; ');
  return new PortferryError('PF_RULES_APPLY', `${what} failed: ${out}`, {
    details: { code: res.code, stderr: res.stderr, ...(script === undefined ? {} : { script }) },
  });
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

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

interface SysctlUndo {
  readonly key: string;
  readonly old: string;
}

/** Like portmap: with snat on IPv4, the interface that routes to the container gets route_localnet=1. */
async function enableRouteLocalnet(runner: CommandRunner, input: PortmapInput): Promise<SysctlUndo | null> {
  if (!input.options.snat) return null;
  const v4 = input.targets.find((t) => t.net.family === 4);
  if (v4 === undefined) return null;
  const route = await exec(runner, 'ip', ['-4', 'route', 'get', v4.net.ip]);
  const dev = route.code === 0 ? /\bdev (\S+)/.exec(route.stdout)?.[1] : undefined;
  if (dev === undefined || dev === 'lo') return null; // no route: the plugin skips it too
  const key = `net/ipv4/conf/${dev}/route_localnet`;
  const cur = await exec(runner, 'sysctl', ['-n', key]);
  if (cur.code !== 0) throw refused(`sysctl -n ${key}`, cur);
  const old = cur.stdout.trim();
  if (old === '1') return null;
  const set = await exec(runner, 'sysctl', ['-q', '-w', `${key}=1`]);
  if (set.code !== 0) throw refused(`sysctl -w ${key}=1`, set);
  return { key, old };
}

async function undoSysctl(runner: CommandRunner, undo: SysctlUndo | null): Promise<void> {
  if (undo !== null) await runner.run('sysctl', ['-q', '-w', `${undo.key}=${undo.old}`]);
}

/** Drops UDP conntrack entries for the host ports, so old flows do not bypass the new DNAT. */
async function flushUdpConntrack(runner: CommandRunner, input: PortmapInput): Promise<string[]> {
  const warnings: string[] = [];
  for (const t of input.targets) {
    for (const port of udpHostPorts(t)) {
      const args = ['-D', '-f', t.net.family === 6 ? 'ipv6' : 'ipv4', '-p', 'udp', '--orig-port-dst', String(port)];
      let res: CommandResult;
      try {
        res = await exec(runner, 'conntrack', args);
      } catch (e) {
        if (e instanceof PortferryError && e.code === 'PF_RULES_TOOL_MISSING') {
          return [
            'conntrack is not installed: stale UDP conntrack entries for the host ports were not flushed, so existing UDP flows may ' +
              'bypass the new rules until they expire; install it with `apt-get install -y conntrack`',
          ];
        }
        throw e;
      }
      // conntrack exits 1 when nothing matched: that is fine.
      if (res.code !== 0 && !/0 flow entries have been deleted/.test(res.stderr)) {
        warnings.push(`conntrack ${args.join(' ')} failed: ${res.stderr.trim()}`);
      }
    }
  }
  return warnings;
}

export interface ApplyResult {
  /** The scripts that were run, in order (for logs and --verbose). */
  readonly scripts: readonly string[];
  readonly warnings: readonly string[];
}

export async function applyRules(input: PortmapInput, backend: Backend, runner: CommandRunner = localRunner): Promise<ApplyResult> {
  if (input.targets.length === 0) return { scripts: [], warnings: [...input.warnings] };
  const undo = await enableRouteLocalnet(runner, input);
  let scripts: string[];
  try {
    scripts = backend === 'iptables' ? await applyIptables(runner, input) : await applyNft(runner, input);
  } catch (e) {
    await undoSysctl(runner, undo);
    throw e;
  }
  const warnings = [...input.warnings, ...(await flushUdpConntrack(runner, input))];
  return { scripts, warnings };
}

async function applyIptables(runner: CommandRunner, input: PortmapInput): Promise<string[]> {
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

interface NftListedRule {
  readonly chain: string;
  readonly text: string;
  readonly handle: number;
}

/** The rules of `table <family> cni_hostport` with handles, or null when the table does not exist. */
async function listNftTable(runner: CommandRunner, family: NftFamily): Promise<{ chains: Set<string>; rules: NftListedRule[] } | null> {
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

function containerRulesOf(listed: readonly NftListedRule[], comment: string): NftListedRule[] {
  const suffix = ` comment ${nftQuote(comment)}`;
  return listed.filter((r) => (NFT_CONTAINER_CHAINS as readonly string[]).includes(r.chain) && r.text.endsWith(suffix));
}

async function nftLive(runner: CommandRunner, rs: NftRuleset): Promise<NftLiveState> {
  const table = await listNftTable(runner, rs.family);
  if (table === null) return { deleteHandles: [], upToDate: false };
  const mine = containerRulesOf(table.rules, rs.comment);
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

async function applyNft(runner: CommandRunner, input: PortmapInput): Promise<string[]> {
  const rulesets = input.targets.map((t) => buildNftRuleset(input, t));
  const live = new Map<NftFamily, NftLiveState>();
  for (const rs of rulesets) live.set(rs.family, await nftLive(runner, rs));
  const script = renderNft(rulesets, live);
  const res = await exec(runner, 'nft', ['-f', '-'], script);
  if (res.code !== 0) throw refused('nft -f (one transaction)', res, script);
  return [script];
}

export interface CheckResult {
  readonly ok: boolean;
  /** Each missing rule, as the command that would add it. */
  readonly missing: readonly string[];
}

export async function checkRules(input: PortmapInput, backend: Backend, runner: CommandRunner = localRunner): Promise<CheckResult> {
  const missing: string[] = [];
  for (const t of input.targets) {
    if (backend === 'iptables') {
      const rs = buildIptablesRuleset(input, t);
      const { ipt } = iptCmd(rs.family);
      const listing = await listNat(runner, rs.family);
      const rules = iptRules(rs);
      const there = await mapLimit(rules, 4, (r) =>
        BUILTIN.has(r.chain) || listing.chains.has(r.chain) ? ruleExists(runner, rs.family, r) : Promise.resolve(false),
      );
      rules.forEach((r, i) => {
        if (there[i] !== true) missing.push(`${ipt} -t nat ${formatRule('-A', r.chain, r.args)}`);
      });
    } else {
      const rs = buildNftRuleset(input, t);
      const table = await listNftTable(runner, rs.family);
      const prefix = `${rs.family} ${NFT_TABLE}`;
      const has = (chain: string, text: string): boolean => table?.rules.some((r) => r.chain === chain && r.text === text) ?? false;
      const cond = rs.conditions.length > 0 ? `${rs.conditions.join(' ')} ` : '';
      const skeleton: [string, string][] = [
        ['prerouting', `${cond}fib daddr type local jump hostports_all`],
        ['output', `${cond}fib daddr type local jump hostports_all`],
        ['hostports_all', 'jump hostip_hostports'],
        ['hostports_all', 'jump hostports'],
      ];
      for (const [chain, text] of skeleton) if (!has(chain, text)) missing.push(`add rule ${prefix} ${chain} ${text}`);
      for (const r of rs.rules) {
        const text = nftRuleText(rs, r);
        if (!has(r.chain, text)) missing.push(`add rule ${prefix} ${r.chain} ${text}`);
      }
    }
  }
  return { ok: missing.length === 0, missing };
}

export interface DeleteResult {
  /** Scripts run (empty when nothing was there: deleting twice is fine). */
  readonly scripts: readonly string[];
}

/** Removes the container's rules in both families. Needs only the network name and container ID. */
export async function deleteRules(
  who: { readonly network: string; readonly containerID: string },
  backend: Backend,
  runner: CommandRunner = localRunner,
): Promise<DeleteResult> {
  return backend === 'iptables' ? deleteIptables(runner, who) : deleteNft(runner, who.containerID);
}

async function deleteIptables(runner: CommandRunner, who: { readonly network: string; readonly containerID: string }): Promise<DeleteResult> {
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
  return { scripts };
}

async function deleteNft(runner: CommandRunner, containerID: string): Promise<DeleteResult> {
  const lines: string[] = [];
  for (const family of ['ip', 'ip6'] as const) {
    const table = await listNftTable(runner, family);
    if (table === null) continue;
    for (const r of containerRulesOf(table.rules, containerID)) lines.push(`delete rule ${family} ${NFT_TABLE} ${r.chain} handle ${r.handle}`);
  }
  if (lines.length === 0) return { scripts: [] };
  const script = lines.join('\n') + '\n';
  const res = await exec(runner, 'nft', ['-f', '-'], script);
  if (res.code !== 0) throw refused('nft -f (delete, one transaction)', res, script);
  return { scripts: [script] };
}
