// How the rules backends run their tools: through a CommandRunner (src/exec.ts), with a missing
// tool turned into PF_RULES_TOOL_MISSING and a refusal into PF_RULES_APPLY; and one lock so that
// two portferry processes never edit the same namespace's tables at once.
import net from 'node:net';
import type { CommandResult, CommandRunner } from '../exec.js';
import { PortferryError, errnoCode } from '../errors.js';

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

export function toolMissing(cmd: string): PortferryError {
  const pkg = PACKAGE_OF[cmd] ?? cmd;
  return new PortferryError('PF_RULES_TOOL_MISSING', `the command "${cmd}" is not installed (or not on PATH)`, {
    hint: `Install it: \`apt-get install -y ${pkg}\` (Debian/Ubuntu package "${pkg}").`,
    details: { command: cmd, package: pkg },
  });
}

/** Runs a command; a missing tool becomes PF_RULES_TOOL_MISSING, everything else is returned. */
export async function exec(runner: CommandRunner, cmd: string, args: readonly string[], stdin?: string): Promise<CommandResult> {
  const res = await runner.run(cmd, args, stdin);
  if (res.code !== 0 && isMissingTool(res)) throw toolMissing(cmd);
  return res;
}

/** PF_RULES_APPLY naming the command and the first lines of what it said. */
export function refused(what: string, res: CommandResult, script?: string): PortferryError {
  const out = (res.stderr.trim() || res.stdout.trim() || `exit code ${res.code}`).split('\n').slice(0, 8).join('; ');
  return new PortferryError('PF_RULES_APPLY', `${what} failed: ${out}`, {
    details: { code: res.code, stderr: res.stderr, ...(script === undefined ? {} : { script }) },
  });
}

/** Runs fn over items with at most `limit` at a time, keeping the order of results. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
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

// The lock is an abstract unix socket: the kernel frees it when its holder dies, however it dies,
// so there is no stale lock file. Abstract names are per network namespace, like the tables.
const LOCK_NAME = '\0portferry-rules-lock';
const LOCK_POLL_MS = 20;
const LOCK_WAIT_MS = 20_000;

function tryLock(): Promise<net.Server | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (e) => (errnoCode(e) === 'EADDRINUSE' ? resolve(null) : reject(e)));
    server.listen({ path: LOCK_NAME }, () => {
      server.unref();
      resolve(server);
    });
  });
}

/**
 * Runs fn while holding the rules lock. Apply reads the live tables and then writes them; two
 * processes doing that at once (a runtime adds two containers in parallel) could each create the
 * shared chains and flush the other's entry. Waits at most LOCK_WAIT_MS (PF_RULES_BUSY).
 */
export async function withRulesLock<T>(fn: () => Promise<T>, waitMs = LOCK_WAIT_MS): Promise<T> {
  const deadline = Date.now() + waitMs;
  let lock = await tryLock();
  while (lock === null) {
    if (Date.now() >= deadline) {
      throw new PortferryError('PF_RULES_BUSY', `another portferry process held the rules lock for ${waitMs / 1000} s`, {
        details: { lock: '@portferry-rules-lock' },
      });
    }
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
    lock = await tryLock();
  }
  const held = lock;
  try {
    return await fn();
  } finally {
    await new Promise<void>((r) => held.close(() => r()));
  }
}
