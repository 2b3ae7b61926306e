// Issue 20, item 7g: `portferry validate --json -c F | head -3` died with an unhandled EPIPE stack
// trace (Node ignores SIGPIPE, so the failed write is an 'error' event nobody handled). Every
// command now ends quietly with 141 (128 + SIGPIPE, what a shell shows for coreutils) when its
// stdout or stderr is closed; `run` keeps forwarding (a daemon must not stop for a log reader).
// The closed pipe is made deterministic: a FIFO whose only reader is closed before the child
// starts, so the child's first write fails with EPIPE however fast or slow it is.
import t, { type Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { cliPath, echoRoundTrip, echoServer, freePort, nodeArgv, until } from '../helpers/net.js';

interface Ended {
  readonly code: number | null;
  readonly signal: string | null;
  /** What the still-open stream received. */
  readonly other: string;
}

function tmp(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-epipe-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The write end of a pipe that nobody reads any more. */
function closedPipe(dir: string): number {
  const fifo = path.join(dir, `fifo-${Math.random().toString(16).slice(2)}`);
  execFileSync('mkfifo', [fifo]);
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writer = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.closeSync(reader);
  return writer;
}

/** Runs the CLI with stdout or stderr closed; the other one is collected. */
function withClosed(t: Test, which: 'stdout' | 'stderr', args: readonly string[]): { child: ReturnType<typeof spawn>; ended: Promise<Ended> } {
  const dir = tmp(t);
  const fd = closedPipe(dir);
  const [cmd, argv] = nodeArgv(cliPath, ...args);
  const child = spawn(cmd, argv, { stdio: ['ignore', which === 'stdout' ? fd : 'pipe', which === 'stderr' ? fd : 'pipe'] });
  fs.closeSync(fd);
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let other = '';
  const open = which === 'stdout' ? child.stderr : child.stdout;
  open?.setEncoding('utf8').on('data', (c: string) => (other += c));
  const ended = (async (): Promise<Ended> => {
    const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
    if (open !== null && !open.closed) await once(open, 'close');
    return { code, signal, other };
  })();
  return { child, ended };
}

const TRACE = /EPIPE|node:events|Unhandled|\n\s+at /;

t.test('every command ends quietly with 141 when its output is closed', async (t) => {
  const dir = tmp(t);
  const big = path.join(dir, 'big.yaml');
  // Enough output that no buffer hides the closed pipe.
  fs.writeFileSync(big, `mappings:\n${Array.from({ length: 300 }, (_, i) => `  - {hostIP: 127.0.0.1, hostPort: ${10000 + i}, containerIP: 127.0.0.1, containerPort: 80}\n`).join('')}`);
  const cases: [string, 'stdout' | 'stderr', string[]][] = [
    ['validate --json -c F, stdout closed', 'stdout', ['validate', '--json', '-c', big]],
    ['validate -c F, stdout closed', 'stdout', ['validate', '-c', big]],
    ['validate of a missing file, stderr closed', 'stderr', ['validate', '-c', path.join(dir, 'missing.yaml')]],
    ['--help', 'stdout', ['--help']],
    ['--version', 'stdout', ['--version']],
    ['run --help', 'stdout', ['run', '--help']],
    ['rules --help', 'stdout', ['rules', '--help']],
    ['bench --help', 'stdout', ['bench', '--help']],
    ['ports --help', 'stdout', ['ports', '--help']],
    ['ports ls without a daemon, stderr closed', 'stderr', ['ports', 'ls', '--api', path.join(dir, 'none.sock')]],
    ['demo --once --no-netns, stdout closed', 'stdout', ['demo', '--once', '--no-netns', '--port', '0']],
  ];
  for (const [name, which, args] of cases) {
    const r = await withClosed(t, which, args).ended;
    t.same({ code: r.code, signal: r.signal }, { code: 141, signal: null }, `${name}: exit 141`);
    t.notMatch(r.other, TRACE, `${name}: no stack trace`);
  }
});

t.test('ports ls against a daemon, stdout closed: 141; run with stderr closed keeps forwarding', async (t) => {
  const dir = tmp(t);
  const echo = await echoServer(t.teardown.bind(t));
  const port = await freePort();
  const sock = path.join(dir, 'api.sock');
  // Logs at debug: the daemon writes to its closed stderr for every connection.
  const daemon = withClosed(t, 'stderr', ['run', '-p', `127.0.0.1:${port}:127.0.0.1:${echo.port}`, '--api', sock, '--log-level', 'debug']);
  const api = new ApiClient(sock);
  await until(() => api.info().then(() => true, () => false), 10_000, 'the daemon to answer');
  for (let i = 0; i < 3; i++) t.equal((await echoRoundTrip(port, Buffer.from(`hello ${i}`))).received.toString(), `hello ${i}`, `connection ${i} relayed`);
  const ls = await withClosed(t, 'stdout', ['ports', 'ls', '--api', sock]).ended;
  t.same({ code: ls.code, signal: ls.signal }, { code: 141, signal: null }, 'ports ls: 141');
  t.notMatch(ls.other, TRACE, 'ports ls: no stack trace');
  t.equal(daemon.child.exitCode, null, 'run is still serving');
  daemon.child.kill('SIGTERM');
  const r = await daemon.ended;
  t.same({ code: r.code, signal: r.signal }, { code: 0, signal: null }, 'and drains and exits 0 on SIGTERM');
});
