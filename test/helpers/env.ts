// Gates for tests that need root or an external tool. Run by hand without them, such a test skips
// and says why; under CI=true a missing prerequisite is a failure, never a silent skip.
import { execFileSync } from 'node:child_process';

export const inCI = process.env['CI'] === 'true';
export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

/** Whether a command is on PATH. */
export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns the reason a test cannot run here, or undefined when it can. Under CI=true it throws
 * instead, so the run fails rather than skipping.
 */
export function missing(needs: { root?: boolean; tools?: readonly string[] }): string | undefined {
  const reasons: string[] = [];
  if (needs.root === true && !isRoot) reasons.push('needs root');
  for (const tool of needs.tools ?? []) if (!hasTool(tool)) reasons.push(`needs ${tool} on PATH`);
  if (reasons.length === 0) return undefined;
  const reason = reasons.join(', ');
  if (inCI) throw new Error(`prerequisite missing under CI=true (no skips allowed): ${reason}`);
  return reason;
}

/** Options for `t.test(name, skipUnless({...}), fn)`: `{ skip: reason }` or `{}`. */
export function skipUnless(needs: { root?: boolean; tools?: readonly string[] }): { skip?: string } {
  const reason = missing(needs);
  return reason === undefined ? {} : { skip: reason };
}
