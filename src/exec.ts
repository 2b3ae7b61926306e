// The one process runner: every external command portferry starts (ip, nsenter, iptables, nft,
// sysctl, conntrack …) goes through execCommand, with a bound on its run time. Two ways to use it:
// - execCommand / a CommandRunner: always resolves with the exit code and output (127 when the
//   command is not installed), for callers that read failures themselves (src/rules);
// - runCommand: resolves on exit code 0, rejects with a CommandError that says why otherwise.
// A CommandRunner can be prefixed (`ip netns exec NAME`) so the same code runs inside a namespace.
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

export interface CommandResult {
  readonly code: number;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Set when the command could not be started at all (ENOENT → code 127, else 126). */
  readonly spawnError?: Error;
}

export interface ExecOptions {
  readonly input?: string;
  /** Kill the command (SIGKILL) after this long. Default 30 s. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** Runs argv[0] with the rest as arguments and reports how it ended; never rejects. */
export function execCommand(argv: readonly string[], options: ExecOptions = {}): Promise<CommandResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) return Promise.resolve({ code: 126, signal: null, stdout: '', stderr: 'empty command line', spawnError: new Error('empty argv') });
  return new Promise((resolve) => {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: options.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let spawnError: NodeJS.ErrnoException | undefined;
    let timedOut = false;
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {}); // EPIPE when the command exits without reading
    child.once('error', (e: NodeJS.ErrnoException) => (spawnError = e));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8') + (timedOut ? `\n(killed after ${timeoutMs} ms)` : '');
      if (spawnError !== undefined) {
        resolve({ code: spawnError.code === 'ENOENT' ? 127 : 126, signal: null, stdout: '', stderr: `${cmd}: ${spawnError.message}`, spawnError });
        return;
      }
      resolve({ code: code ?? 128, signal, stdout: Buffer.concat(out).toString('utf8'), stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: CommandResult,
  ) {
    const { code, signal, stderr, spawnError } = result;
    const how = spawnError !== undefined ? `could not run (${spawnError.message})` : signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = stderr.trim().split('\n').slice(-3).join(' | ');
    super(`\`${argv.join(' ')}\` ${how}${tail === '' || spawnError !== undefined ? '' : `: ${tail}`}`, spawnError === undefined ? undefined : { cause: spawnError });
    this.name = 'CommandError';
  }

  get exitCode(): number {
    return this.result.code;
  }

  get stdout(): string {
    return this.result.stdout;
  }

  get stderr(): string {
    return this.result.stderr;
  }
}

/** Resolves with the output on exit code 0; rejects with a CommandError otherwise. */
export async function runCommand(argv: readonly string[], options: ExecOptions = {}): Promise<{ stdout: string; stderr: string }> {
  const res = await execCommand(argv, options);
  if (res.code !== 0 || res.spawnError !== undefined) throw new CommandError(argv, res);
  return { stdout: res.stdout, stderr: res.stderr };
}

/** Runs commands somewhere: here, or behind a prefix such as `ip netns exec NAME`. */
export interface CommandRunner {
  run(cmd: string, args: readonly string[], stdin?: string): Promise<CommandResult>;
}

export const localRunner: CommandRunner = {
  run: (cmd, args, stdin) => execCommand([cmd, ...args], stdin === undefined ? {} : { input: stdin }),
};

/** Runs every command behind a prefix, e.g. `['ip', 'netns', 'exec', 'pf-x']`. */
export function prefixedRunner(prefix: readonly string[], base: CommandRunner = localRunner): CommandRunner {
  const [head, ...rest] = prefix;
  if (head === undefined) return base;
  return { run: (cmd, args, stdin) => base.run(head, [...rest, cmd, ...args], stdin) };
}

/** Whether `cmd` is an executable file in one of PATH's directories (no process is started). */
export function commandOnPath(cmd: string, path = process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin'): boolean {
  return path.split(':').some((dir) => {
    try {
      accessSync(`${dir === '' ? '.' : dir}/${cmd}`, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
