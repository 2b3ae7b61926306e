// A throwaway network namespace for tests that need a known per-namespace sysctl (such as
// net.ipv4.ip_unprivileged_port_start) instead of whatever the host has. Removed in teardown.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/** Creates `pf-<purpose>-<hex>` with lo up and the given sysctls; returns its name. Needs root and ip. */
export function scratchNetns(teardown: (fn: () => unknown) => void, purpose: string, sysctls: Readonly<Record<string, string>> = {}): string {
  const name = `pf-${purpose}-${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  teardown(() => execFileSync('ip', ['netns', 'del', name]));
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  for (const [key, value] of Object.entries(sysctls)) execFileSync('ip', ['netns', 'exec', name, 'sysctl', '-q', '-w', `${key}=${value}`]);
  return name;
}
