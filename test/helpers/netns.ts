// The one way tests make a throwaway network namespace: `pf-<purpose>-<hex>`, lo up, optional
// per-namespace sysctls (such as net.ipv4.ip_unprivileged_port_start, instead of whatever the host
// has), removed in teardown also when the test fails. Needs root and ip.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/** A fresh namespace name: `pf-<purpose>-<8 hex>`. */
export function nsName(purpose: string): string {
  return `pf-${purpose}-${randomBytes(4).toString('hex')}`;
}

/** Creates the namespace and registers its removal right away; returns its name. */
export function scratchNetns(teardown: (fn: () => unknown) => void, purpose: string, sysctls: Readonly<Record<string, string>> = {}): string {
  const name = nsName(purpose);
  execFileSync('ip', ['netns', 'add', name]);
  teardown(() => {
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  });
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  for (const [key, value] of Object.entries(sysctls)) execFileSync('ip', ['netns', 'exec', name, 'sysctl', '-q', '-w', `${key}=${value}`]);
  return name;
}
