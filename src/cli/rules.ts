// `portferry rules`: the same mappings as kernel DNAT rules laid out like the CNI portmap plugin.
// Prints the iptables-restore / nft script, or applies, checks or deletes it.
// Exit codes: 0 done (check: every rule present), 1 failure (check: rules missing, listed), 2 usage.
import { InvalidArgumentError, type Command } from 'commander';
import { PortferryError } from '../errors.js';
import { applyRules, backendProblems, checkRules, deleteRules, parseBackend, type Backend } from '../rules/apply.js';
import { checkContainerRef, fromMappings, parseContainerCidr, type PortmapInput } from '../rules/model.js';
import { buildIptables, renderIptablesRestore } from '../rules/portmap-iptables.js';
import { buildNft, renderNft } from '../rules/portmap-nft.js';
import { EXIT_FAILURE, EXIT_OK, collect, loadFromFlags, mappingOptions, reportError, type MappingFlags } from './common.js';

interface RulesFlags extends MappingFlags {
  readonly backend?: Backend;
  readonly network?: string;
  readonly containerId?: string;
  readonly containerCidr: string[];
  readonly snat: boolean;
  readonly markMasqBit?: number;
  readonly masqAll?: boolean;
  readonly apply?: boolean;
  readonly check?: boolean;
  readonly delete?: boolean;
}

function backendArg(value: string): Backend {
  const b = parseBackend(value);
  if (b === null) throw new InvalidArgumentError('use iptables or nftables (or nft)');
  return b;
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

/** Every usage problem at once: missing required options and conflicting actions. */
function usageProblems(flags: RulesFlags): { action: 'print' | 'apply' | 'check' | 'delete'; backend: Backend; who: { network: string; containerID: string } } {
  const problems: string[] = [];
  const required = [
    ['--backend <iptables|nftables>', flags.backend],
    ['--network <name>', flags.network],
    ['--container-id <id>', flags.containerId],
  ] as const;
  const absent = required.filter(([, v]) => v === undefined).map(([k]) => k);
  if (absent.length > 0) problems.push(`missing required option${absent.length > 1 ? 's' : ''}: ${absent.join(', ')}`);
  const actions = (['apply', 'check', 'delete'] as const).filter((a) => flags[a] === true);
  if (actions.length > 1) problems.push(`--${actions.join(', --')} cannot be combined: give at most one (none prints the script)`);
  if (problems.length > 0 || flags.backend === undefined || flags.network === undefined || flags.containerId === undefined) {
    throw new PortferryError('PF_USAGE', problems.join('; '), {
      hint: 'Example: `portferry rules -p 8080:10.88.0.2:80 --backend iptables --network podman --container-id c0ffee --container-cidr 10.88.0.2/16 --apply`.',
    });
  }
  return { action: actions[0] ?? 'print', backend: flags.backend, who: { network: flags.network, containerID: flags.containerId } };
}

async function runRules(flags: RulesFlags): Promise<number> {
  const { action, backend, who } = usageProblems(flags);
  checkContainerRef(who.network, who.containerID);
  if (action === 'delete' && (flags.publish ?? []).length === 0 && (flags.config ?? []).length === 0) {
    // Deleting needs only the network name and container ID, like CNI DEL.
    const res = await deleteRules(who, backend);
    process.stdout.write(`deleted: ${res.scripts.length === 0 ? 'nothing was there' : `rules of container ${who.containerID}`}\n`);
    return EXIT_OK;
  }
  const cidrs = flags.containerCidr.map((c) => parseContainerCidr(c, `--container-cidr ${c}`));
  // A CNI portMappings file carries no container address: the first CIDR gives it.
  const containerIp = flags.containerIp ?? cidrs[0]?.ip;
  const mappings = await loadFromFlags({ ...flags, ...(containerIp !== undefined ? { containerIp } : {}) });
  const input = fromMappings({
    ...who,
    mappings,
    containerCidrs: cidrs,
    options: { snat: flags.snat, ...(flags.markMasqBit !== undefined ? { markMasqBit: flags.markMasqBit } : {}), masqAll: flags.masqAll === true },
  });
  const problems = backendProblems(input, backend);
  if (problems.length > 0) throw new PortferryError('PF_CONFIG_INVALID', `the ${backend} backend cannot take these rules (${problems.length} problem${problems.length > 1 ? 's' : ''}); nothing was changed`, { problems });
  for (const w of input.warnings) process.stderr.write(`portferry: warning: ${w}\n`);
  if (flags.proxyProtocol !== undefined || flags.netns !== undefined) {
    process.stderr.write('portferry: warning: --proxy-protocol and --netns apply to the userspace forwarder; kernel rules ignore them\n');
  }

  switch (action) {
    case 'print':
      process.stdout.write(renderScript(input, backend));
      return EXIT_OK;
    case 'apply': {
      const res = await applyRules(input, backend);
      for (const w of res.warnings.slice(input.warnings.length)) process.stderr.write(`portferry: warning: ${w}\n`);
      process.stdout.write(`applied: ${backend} rules of container ${who.containerID} (${input.targets.map((x) => `${x.net.ip}/${x.net.prefix}`).join(', ')})\n`);
      return EXIT_OK;
    }
    case 'check': {
      const res = await checkRules(input, backend);
      if (res.ok) {
        process.stdout.write(`ok: every ${backend} rule of container ${who.containerID} is present\n`);
        return EXIT_OK;
      }
      for (const m of res.missing) process.stdout.write(`missing: ${m}\n`);
      const err = new PortferryError('PF_RULES_CHECK', `${res.missing.length} ${backend} rule(s) of container ${who.containerID} are missing (listed on stdout)`, {
        details: { missing: res.missing },
      });
      process.stderr.write(`portferry: ${err.format()}\n`);
      return EXIT_FAILURE;
    }
    case 'delete': {
      const res = await deleteRules(who, backend);
      process.stdout.write(`deleted: ${res.scripts.length === 0 ? 'nothing was there' : `rules of container ${who.containerID}`}\n`);
      return EXIT_OK;
    }
  }
}

export function registerRulesCommand(program: Command): void {
  const cmd = program
    .command('rules')
    .description('render the mappings as the kernel DNAT rules of the CNI portmap plugin; print, --apply, --check or --delete them')
    .addHelpText(
      'after',
      '\nExample:\n  portferry rules -p 8080:10.88.0.2:80 -p 5353:10.88.0.2:53/udp --backend nft --network podman \\\n' +
        '    --container-id c0ffee --container-cidr 10.88.0.2/16 --apply',
    );
  mappingOptions(cmd)
    .option('--backend <name>', '(required) iptables or nftables (alias: nft)', backendArg)
    .option('--network <name>', '(required) CNI network name (part of the chain name and comments)')
    .option('--container-id <id>', '(required) container ID (CNI_CONTAINERID)')
    .option('--container-cidr <cidr>', 'container address with prefix, e.g. 10.88.0.2/24 (repeatable, one per family); gives the prefix when the mappings name the container IP', collect, [])
    .option('--no-snat', 'do not mark hairpin and localhost traffic for masquerading')
    .option('--mark-masq-bit <bit>', 'mark bit for masquerading (default 13)', bitArg)
    .option('--masq-all', 'masquerade traffic from every source, not only hairpin and localhost')
    .option('--apply', 'install the rules (idempotent, one transaction)')
    .option('--check', 'exit 0 when every rule is present, 1 listing the missing ones')
    .option('--delete', 'remove the container\'s rules (other containers stay)')
    .action(async (flags: RulesFlags) => {
      try {
        process.exitCode = await runRules(flags);
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
