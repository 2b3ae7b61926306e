// Test fixture: throwaway network namespaces (pf-<random>) and commands run inside them.
// Every namespace is removed in the test's teardown, also when the test fails.
import type { Test } from 'tap';
import { scratchNetns } from '../helpers/netns.js';
import { localRunner, prefixedRunner, type CommandResult, type CommandRunner } from '../../src/rules/apply.js';


/** Creates a namespace (lo up) and registers its removal right away. */
export function makeNs(t: Test, tag: string): string {
  return scratchNetns(t.teardown.bind(t), tag);
}

export function nsRunner(name: string): CommandRunner {
  return prefixedRunner(['ip', 'netns', 'exec', name]);
}

export async function inNs(name: string, cmd: string, args: readonly string[], stdin?: string): Promise<CommandResult> {
  return localRunner.run('ip', ['netns', 'exec', name, cmd, ...args], stdin);
}

export async function inNsOk(name: string, cmd: string, args: readonly string[], stdin?: string): Promise<string> {
  const r = await inNs(name, cmd, args, stdin);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${name} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** `iptables-save -t nat` (or ip6tables-save) without '#' lines and with counters zeroed. */
export async function natDump(name: string, family: 4 | 6): Promise<string> {
  const out = await inNsOk(name, family === 6 ? 'ip6tables-save' : 'iptables-save', ['-t', 'nat']);
  return out
    .split('\n')
    .filter((l) => !l.startsWith('#') && l !== '')
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
    .join('\n');
}

/** `nft list table <family> cni_hostport`, or '' when it does not exist. */
export async function nftDump(name: string, family: 'ip' | 'ip6'): Promise<string> {
  const r = await inNs(name, 'nft', ['list', 'table', family, 'cni_hostport']);
  return r.code === 0 ? r.stdout : '';
}
