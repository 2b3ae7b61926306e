// The suite runs under one Node, the one asked for. .ci/run runs it on the machine's Node and on
// each version in .ci/node-versions by putting that Node first in PATH and naming it in
// PORTFERRY_TEST_NODE; a step that silently ran elsewhere (tap's runner, the TypeScript loader, a
// child started through a `#!/usr/bin/env node` line — the daemon, the CNI plugin under podman,
// the docker proxy under dockerd) would make that run prove nothing. Without PORTFERRY_TEST_NODE
// (by hand) the Node running this file is the one every other must match.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { readlinkSync, realpathSync } from 'node:fs';
import { promisify } from 'node:util';
import { inCI } from '../helpers/env.js';
import { cliPath, echoRoundTrip, echoServer, freePort } from '../helpers/net.js';

const requested = process.env['PORTFERRY_TEST_NODE'];
const expected = requested !== undefined && requested !== '' ? (requested.startsWith('v') ? requested : `v${requested}`) : process.version;
const run = promisify(execFile);
/** Children as users start them: without tap's NODE_OPTIONS hooks. */
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS'));

t.test(`this test process (tap's runner started it, the TypeScript loader runs in it) is Node ${expected}`, async (t) => {
  t.equal(process.version, expected, `process.version (process.execPath = ${process.execPath})`);
  // tap's runner starts every test file with its own process.execPath: the parent must be the same binary.
  const parent = readlinkSync(`/proc/${process.ppid}/exe`);
  t.equal(parent, realpathSync(process.execPath), `the parent process (tap's runner, pid ${process.ppid}) runs the same node binary`);
});

t.test('`node` on PATH (what #!/usr/bin/env node starts: the daemon, the CNI plugin, the docker proxy) is the same', async (t) => {
  const { stdout } = await run('node', ['--version'], { env });
  t.equal(stdout.trim(), expected, '`node --version`');
  const viaExecPath = await run(process.execPath, ['-p', 'process.version'], { env });
  t.equal(viaExecPath.stdout.trim(), expected, 'a child started with process.execPath (the netns helper, cluster workers, test peers)');
});

t.test('the daemon started by its #! line reports this Node in its ready line, with every fast path on', async (t) => {
  const echo = await echoServer(t.teardown);
  const port = await freePort();
  const child = spawn(cliPath, ['run', '-p', `127.0.0.1:${port}:127.0.0.1:${echo.port}`], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let err = '';
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      err += c;
      for (const line of err.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (rec['msg'] === 'ready') resolve(rec);
        } catch {
          /* a partial line */
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`portferry exited (${code}) before ready: ${err}`)));
  });
  t.equal(ready['node'], expected, 'the ready line names the Node it runs on');
  // The startup self-test's verdict for this Node: on the supported versions every fast path
  // must be on (by hand on another Node, an off path is reported, not failed).
  const fastPaths = ready['fastPaths'] as Record<string, boolean> | undefined;
  const off = Object.entries(fastPaths ?? {}).filter(([, on]) => !on).map(([name]) => name);
  t.ok(fastPaths !== undefined && Object.keys(fastPaths).length >= 4, `fastPaths in the ready line: ${JSON.stringify(fastPaths)}`);
  if (inCI || off.length === 0) t.same(off, [], `every fast path is on under ${expected}`);
  else t.comment(`fast paths off on ${expected}: ${off.join(', ')}`);
  const payload = Buffer.from('through the daemon');
  const r = await echoRoundTrip(port, payload);
  t.same(r.received, payload, 'it forwards');
  child.kill('SIGTERM');
  await new Promise((res) => (child.exitCode !== null ? res(null) : child.once('exit', res)));
});
