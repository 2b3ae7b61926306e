// apply / check / delete of a container's rules through one of the backends (iptables.ts,
// nftables.ts), with the host settings that go with them (host.ts) and the rules lock.
// Every command runs through a CommandRunner, so tests and the benchmark can point it into a
// namespace (`prefixedRunner(['ip', 'netns', 'exec', name])`).
//
// apply:  idempotent; one restore (per family) / one `nft -f` transaction; if a later family fails,
//         the earlier ones are put back from a snapshot and route_localnet is reset: nothing stays.
// check:  lists every expected rule that is missing (derived from the same builders as apply).
// delete: removes exactly the container's rules; other containers stay. A second delete finds
//         nothing and succeeds.
import { localRunner, type CommandRunner } from '../exec.js';
import type { PortmapInput } from './model.js';
import { withRulesLock } from './command.js';
import { enableRouteLocalnet, flushUdpConntrack, undoSysctl } from './host.js';
import { iptablesBackend } from './iptables.js';
import { nftablesBackend } from './nftables.js';
import { backendProblems, type Backend, type ContainerRef, type RulesBackend } from './backend.js';
import { PortferryError } from '../errors.js';

export { localRunner, prefixedRunner, type CommandResult, type CommandRunner } from '../exec.js';
export { backendProblems, parseBackend, type Backend, type ContainerRef, type RulesBackend } from './backend.js';

export const BACKENDS: Readonly<Record<Backend, RulesBackend>> = { iptables: iptablesBackend, nftables: nftablesBackend };

export interface ApplyResult {
  /** The scripts that were run, in order (for logs and --verbose). */
  readonly scripts: readonly string[];
  readonly warnings: readonly string[];
}

/** Every apply and check refuses what the backend cannot take before any command runs (callers may check earlier for their own wording). */
function refuseWhatBackendCannotTake(input: PortmapInput, backend: Backend): void {
  const problems = backendProblems(input, backend);
  if (problems.length > 0) throw new PortferryError('PF_CONFIG_INVALID', `the ${backend} backend cannot take these rules; nothing was changed`, { problems });
}

export async function applyRules(input: PortmapInput, backend: Backend, runner: CommandRunner = localRunner): Promise<ApplyResult> {
  refuseWhatBackendCannotTake(input, backend);
  if (input.targets.length === 0) return { scripts: [], warnings: [...input.warnings] };
  const scripts = await withRulesLock(async () => {
    const undo = await enableRouteLocalnet(runner, input);
    try {
      return await BACKENDS[backend].apply(input, runner);
    } catch (e) {
      await undoSysctl(runner, undo);
      throw e;
    }
  });
  const warnings = [...input.warnings, ...(await flushUdpConntrack(runner, input))];
  return { scripts, warnings };
}

export interface CheckResult {
  readonly ok: boolean;
  /** Each missing rule, as the command that would add it. */
  readonly missing: readonly string[];
}

export async function checkRules(input: PortmapInput, backend: Backend, runner: CommandRunner = localRunner): Promise<CheckResult> {
  refuseWhatBackendCannotTake(input, backend);
  const missing = await BACKENDS[backend].check(input, runner);
  return { ok: missing.length === 0, missing };
}

export interface DeleteResult {
  /** Scripts run (empty when nothing was there: deleting twice is fine). */
  readonly scripts: readonly string[];
}

/** Removes the container's rules in both families. Needs only the network name and container ID. */
export async function deleteRules(who: ContainerRef, backend: Backend, runner: CommandRunner = localRunner): Promise<DeleteResult> {
  return { scripts: await withRulesLock(() => BACKENDS[backend].remove(who, runner)) };
}

/**
 * Removes the rules of every container of `network` not in `keep` (CNI GC). Only backends whose
 * rules name the network can tell; the others (nftables) remove nothing. Returns the IDs removed.
 */
export async function collectRules(network: string, keep: ReadonlySet<string>, backend: Backend, runner: CommandRunner = localRunner): Promise<string[]> {
  const b = BACKENDS[backend];
  if (b.containers === undefined) return [];
  const list = b.containers.bind(b);
  return withRulesLock(async () => {
    const stale = (await list(network, runner)).filter((id) => !keep.has(id));
    for (const containerID of stale) await b.remove({ network, containerID }, runner);
    return stale;
  });
}
