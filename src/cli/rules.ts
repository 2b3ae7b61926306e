// `portferry rules`: the same mappings as kernel DNAT rules laid out like the CNI portmap plugin.
// Prints the iptables-restore / nft script, or applies, checks or deletes it.
// Exit codes: 0 done (check: every rule present), 1 failure (check: rules missing, listed), 2 usage.
import { InvalidArgumentError, type Command } from 'commander';
import type { Mapping } from '../api.js';
import { loadMappings } from '../config/index.js';
import { PortferryError } from '../errors.js';
import { applyRules, checkRules, deleteRules, type Backend } from '../rules/apply.js';
import { fromMappings, parseContainerCidr, type ContainerNet, type PortmapInput } from '../rules/model.js';
import { buildIptables, renderIptablesRestore } from '../rules/portmap-iptables.js';
import { buildNft, renderNft } from '../rules/portmap-nft.js';
import { EXIT_FAILURE, EXIT_OK, collect, reportError } from './common.js';

interface RulesFlags {
  readonly publish: string[];
  readonly config?: string;
  readonly backend: Backend;
  readonly network: string;
  readonly containerId: string;
  readonly containerCidr: string[];
  readonly snat: boolean;
  readonly markMasqBit?: number;
  readonly masqAll?: boolean;
  readonly apply?: boolean;
  readonly check?: boolean;
  readonly delete?: boolean;
}

function backendArg(value: string): Backend {
  if (value !== 'iptables' && value !== 'nftables') throw new InvalidArgumentError('use iptables or nftables');
  return value;
}

function bitArg(value: string): number {
  const n = Number(value);
  if (!/^\d{1,2}$/.test(value) || n > 31) throw new InvalidArgumentError('use a whole number from 0 to 31');
  return n;
}

/** The printed script: each family's restore input (iptables) or one nft file. */
export function renderScript(input: PortmapInput, backend: Backend): string {
  if (backend === 'nftables') return renderNft(buildNft(input));
  return buildIptables(input)
    .map((rs) => `# ${rs.family === 6 ? 'ip6tables-restore' : 'iptables-restore'} --noflush (for a nat table without these chains; --apply adapts to the live table)\n${renderIptablesRestore(rs)}`)
    .join('');
}

async function loadInput(flags: RulesFlags, cidrs: readonly ContainerNet[]): Promise<readonly Mapping[]> {
  return loadMappings({
    specs: flags.publish,
    ...(flags.config !== undefined ? { file: flags.config } : {}),
    // A CNI portMappings file carries no container address: the CIDR gives it.
    ...(cidrs[0] !== undefined ? { containerIP: cidrs[0].ip } : {}),
  });
}

async function runRules(flags: RulesFlags): Promise<number> {
  const actions = (['apply', 'check', 'delete'] as const).filter((a) => flags[a] === true);
  if (actions.length > 1) {
    throw new PortferryError('PF_USAGE', `--${actions.join(', --')} cannot be combined`, { hint: 'Give at most one of --apply, --check, --delete (none prints the script).' });
  }
  const action = actions[0] ?? 'print';
  const who = { network: flags.network, containerID: flags.containerId };
  if (action === 'delete' && flags.publish.length === 0 && flags.config === undefined) {
    // Deleting needs only the network name and container ID, like CNI DEL.
    fromMappings({ ...who, mappings: [] });
    const res = await deleteRules(who, flags.backend);
    process.stdout.write(`deleted: ${res.scripts.length === 0 ? 'nothing was there' : `rules of container ${flags.containerId}`}\n`);
    return EXIT_OK;
  }
  const cidrs = flags.containerCidr.map((c) => parseContainerCidr(c, `--container-cidr ${c}`));
  const mappings = await loadInput(flags, cidrs);
  const input = fromMappings({
    ...who,
    mappings,
    containerCidrs: cidrs,
    options: { snat: flags.snat, ...(flags.markMasqBit !== undefined ? { markMasqBit: flags.markMasqBit } : {}), masqAll: flags.masqAll === true },
  });
  for (const w of input.warnings) process.stderr.write(`portferry: warning: ${w}\n`);

  switch (action) {
    case 'print':
      process.stdout.write(renderScript(input, flags.backend));
      return EXIT_OK;
    case 'apply': {
      const res = await applyRules(input, flags.backend);
      for (const w of res.warnings.slice(input.warnings.length)) process.stderr.write(`portferry: warning: ${w}\n`);
      process.stdout.write(`applied: ${flags.backend} rules of container ${flags.containerId} (${input.targets.map((x) => `${x.net.ip}/${x.net.prefix}`).join(', ')})\n`);
      return EXIT_OK;
    }
    case 'check': {
      const res = await checkRules(input, flags.backend);
      if (res.ok) {
        process.stdout.write(`ok: every ${flags.backend} rule of container ${flags.containerId} is present\n`);
        return EXIT_OK;
      }
      for (const m of res.missing) process.stdout.write(`missing: ${m}\n`);
      const err = new PortferryError('PF_RULES_CHECK', `${res.missing.length} ${flags.backend} rule(s) of container ${flags.containerId} are missing (listed on stdout)`, {
        details: { missing: res.missing },
      });
      process.stderr.write(`portferry: ${err.format()}\n`);
      return EXIT_FAILURE;
    }
    case 'delete': {
      const res = await deleteRules(who, flags.backend);
      process.stdout.write(`deleted: ${res.scripts.length === 0 ? 'nothing was there' : `rules of container ${flags.containerId}`}\n`);
      return EXIT_OK;
    }
  }
}

export function registerRulesCommand(program: Command): void {
  program
    .command('rules')
    .description('render the mappings as the kernel DNAT rules of the CNI portmap plugin; print, --apply, --check or --delete them')
    .option('-p, --publish <spec>', 'a port: [hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp] (repeatable)', collect, [])
    .option('-c, --config <file>', 'YAML config file, or CNI JSON with runtimeConfig.portMappings')
    .requiredOption('--backend <name>', 'iptables or nftables', backendArg)
    .requiredOption('--network <name>', 'CNI network name (part of the chain name and comments)')
    .requiredOption('--container-id <id>', 'container ID (CNI_CONTAINERID)')
    .option('--container-cidr <cidr>', 'container address with prefix, e.g. 10.88.0.2/24 (repeatable, one per family); gives the prefix when the mappings name the container IP', collect, [])
    .option('--no-snat', 'do not mark hairpin and localhost traffic for masquerading')
    .option('--mark-masq-bit <bit>', 'mark bit for masquerading (default 13)', bitArg)
    .option('--masq-all', 'masquerade traffic from every source, not only hairpin and localhost')
    .option('--apply', 'install the rules (idempotent, one transaction)')
    .option('--check', 'exit 0 when every rule is present, 1 listing the missing ones')
    .option('--delete', 'remove the container\'s rules (shared chains and other containers stay)')
    .action(async (flags: RulesFlags) => {
      try {
        process.exitCode = await runRules(flags);
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
