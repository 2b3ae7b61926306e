// The one interface both rule backends implement (as the portmap plugin's PortMapper does:
// forwardPorts / checkPorts / unforwardPorts), the backend names, and the checks of an input
// against a backend that can be made before anything runs.
import type { CommandRunner } from '../exec.js';
import { PortferryError } from '../errors.js';
import type { PortmapInput } from './model.js';

export type Backend = 'iptables' | 'nftables';

/** What delete needs: no mappings, no addresses (as CNI DEL without prevResult). */
export interface ContainerRef {
  readonly network: string;
  readonly containerID: string;
}

export interface RulesBackend {
  readonly name: Backend;
  /** The commands it runs to apply (for a STATUS-style readiness probe). */
  readonly tools: readonly string[];
  /** Installs the rules (idempotent); returns the scripts it ran. */
  apply(input: PortmapInput, runner: CommandRunner): Promise<string[]>;
  /** Every expected rule that is missing, as the command that would add it. */
  check(input: PortmapInput, runner: CommandRunner): Promise<string[]>;
  /** Removes the container's rules; returns the scripts it ran (none when nothing was there). */
  remove(who: ContainerRef, runner: CommandRunner): Promise<string[]>;
  /** The IDs of the containers of a network that have rules, where the rules name the network (iptables). */
  containers?(network: string, runner: CommandRunner): Promise<string[]>;
}

/** `iptables`, `nftables`, or `nft` (an alias); null for anything else. */
export function parseBackend(text: string): Backend | null {
  if (text === 'iptables') return 'iptables';
  if (text === 'nftables' || text === 'nft') return 'nftables';
  return null;
}

/** nftables refuses rule comments over 128 characters; the container ID is the comment. */
const NFT_COMMENT_MAX = 128;

/**
 * What a backend cannot take, found before any command runs: every problem at once (the plugin's
 * own rules: iptables-only options on nftables and the other way round, and nft's comment limit).
 */
export function backendProblems(input: PortmapInput, backend: Backend): PortferryError[] {
  const problems: PortferryError[] = [];
  const o = input.options;
  const iptStyle = (c: readonly string[]): boolean => c.length > 0 && /^[-!]/.test(c[0] ?? '');
  if (backend === 'nftables') {
    if (input.containerID.length > NFT_COMMENT_MAX) {
      problems.push(
        new PortferryError('PF_CONFIG_VALUE', `container ID "${input.containerID.slice(0, 20)}…" is ${input.containerID.length} characters long; nftables takes rule comments of at most ${NFT_COMMENT_MAX}`, {
          hint: 'Use the iptables backend for this container, or a container ID of at most 128 characters (runtimes use 64).',
        }),
      );
    }
    if (o.externalSetMarkChain !== null) problems.push(new PortferryError('PF_CONFIG_VALUE', 'externalSetMarkChain is an iptables option; the nftables backend has no mark chains'));
    for (const [key, c] of [['conditionsV4', o.conditionsV4], ['conditionsV6', o.conditionsV6]] as const) {
      if (iptStyle(c)) problems.push(new PortferryError('PF_CONFIG_VALUE', `${key} holds iptables arguments ("${c[0] ?? ''}"); the nftables backend needs nft expressions such as "ip saddr != 10.0.0.0/8"`));
    }
  } else {
    for (const [key, c] of [['conditionsV4', o.conditionsV4], ['conditionsV6', o.conditionsV6]] as const) {
      if (c.length > 0 && !iptStyle(c)) problems.push(new PortferryError('PF_CONFIG_VALUE', `${key} holds nft expressions ("${c[0] ?? ''}"); the iptables backend needs iptables arguments such as "-s" "10.0.0.0/8"`));
    }
  }
  return problems;
}
