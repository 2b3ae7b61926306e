// Runs an external command (ip, nsenter, unshare, setpriv …) with a bound on its run time, and
// rejects with everything a person needs to see why it failed.
import { spawn } from 'node:child_process';

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly signal: NodeJS.Signals | null,
    readonly stdout: string,
    readonly stderr: string,
    cause?: unknown,
  ) {
    const how = cause !== undefined ? `could not run (${(cause as Error).message})` : signal !== null ? `was killed by ${signal}` : `exited with code ${exitCode}`;
    const tail = stderr.trim().split('\n').slice(-3).join(' | ');
    super(`\`${argv.join(' ')}\` ${how}${tail === '' ? '' : `: ${tail}`}`, cause === undefined ? undefined : { cause });
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  readonly input?: string;
  /** Kill the command (SIGKILL) after this long. Default 30 s. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** Runs argv[0] with the rest as arguments; resolves on exit code 0, rejects with CommandError otherwise. */
export function runCommand(argv: readonly string[], options: RunOptions = {}): Promise<{ stdout: string; stderr: string }> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) return Promise.reject(new Error('runCommand: empty argv'));
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: options.env ?? process.env });
    let stdout = '';
    let stderr = '';
    let failed: unknown;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${options.timeoutMs ?? 30_000} ms)`;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 30_000);
    child.once('error', (err) => (failed = err));
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (failed === undefined && code === 0) resolve({ stdout, stderr });
      else reject(new CommandError(argv, code, signal, stdout, stderr, failed));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
  });
}
