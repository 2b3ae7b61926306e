// Config files that used to crash or hang the reader (issue 14 item 6): FIFOs, devices,
// directories and oversized files are refused with coded errors before a byte is parsed; an
// ordinary file that reuses a YAML anchor 150 times loads; a "billion laughs" file does not.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MAX_CONFIG_BYTES, loadMappings, readConfigFile } from '../../src/config/index.js';
import { PortferryError } from '../../src/errors.js';

const dir = mkdtempSync(path.join(tmpdir(), 'pf-config-input-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The error loadMappings rejects with; fails (instead of hanging the suite) when it takes over 10 s. */
async function refusal(file: string): Promise<PortferryError> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`reading ${file} did not finish within 10 s (it hangs)`)), 10_000);
  });
  try {
    await Promise.race([loadMappings({ file }), hung]);
  } catch (err) {
    if (err instanceof PortferryError) return err;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`${file} was accepted`);
}

/** The one problem of a PF_CONFIG_INVALID (anything else is a failure). */
function only(err: PortferryError): PortferryError {
  const [p] = err.problems;
  if (err.code !== 'PF_CONFIG_INVALID' || err.problems.length !== 1 || p === undefined) throw new Error(`expected one problem, got ${err.format()}`);
  return p;
}

t.test('a FIFO with no writer is refused at once (it used to hang forever)', async (t) => {
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const p = only(await refusal(fifo));
  t.equal(p.code, 'PF_CONFIG_NOT_FILE');
  t.match(p.message, new RegExp(`${fifo}.*FIFO`));
  t.match(p.hint, /regular file/);
});

t.test('devices and directories are refused without reading them', async (t) => {
  for (const [file, kind] of [['/dev/zero', 'character device'], ['/dev/urandom', 'character device'], ['/dev/null', 'character device'], [dir, 'directory']] as const) {
    const p = only(await refusal(file));
    t.equal(p.code, 'PF_CONFIG_NOT_FILE', file);
    t.match(p.message, `${file} is a ${kind}, not a regular file`);
  }
});

t.test('a file over the maximum is refused from its size (a sparse 50 MB file: nothing is read)', async (t) => {
  const big = path.join(dir, 'big.yaml');
  closeSync(openSync(big, 'w'));
  truncateSync(big, 50_000_000);
  const p = only(await refusal(big));
  t.equal(p.code, 'PF_CONFIG_TOO_LARGE');
  t.match(p.message, /50000000 bytes, more than the maximum of 1048576 bytes \(1 MiB\)/);
  const edge = path.join(dir, 'edge.yaml');
  writeFileSync(edge, `# ${'x'.repeat(MAX_CONFIG_BYTES - 3)}\n`);
  t.equal((await readConfigFile(edge)).length, MAX_CONFIG_BYTES, 'a file of exactly the maximum is read');
  truncateSync(edge, MAX_CONFIG_BYTES + 1);
  await t.rejects(readConfigFile(edge), { code: 'PF_CONFIG_TOO_LARGE' }, 'one byte more is not');
});

t.test('a missing or unreadable file is PF_CONFIG_READ naming the errno', async (t) => {
  const p = only(await refusal(path.join(dir, 'nope.yaml')));
  t.equal(p.code, 'PF_CONFIG_READ');
  t.match(p.message, /nope\.yaml: ENOENT/);
});

t.test('an ordinary 150-mapping file reusing *ip loads (yaml refused more than 100 aliases)', async (t) => {
  const lines = ['mappings:'];
  for (let i = 0; i < 150; i++) lines.push(`  - {hostIP: 127.0.0.1, hostPort: ${20000 + i}, containerIP: ${i === 0 ? '&ip 10.88.0.2' : '*ip'}, containerPort: 80}`);
  const f = path.join(dir, 'aliases.yaml');
  writeFileSync(f, `${lines.join('\n')}\n`);
  const ms = await loadMappings({ file: f });
  t.equal(ms.length, 150);
  t.ok(ms.every((m) => m.containerIP === '10.88.0.2'));
});

t.test('a "billion laughs" file is PF_CONFIG_PARSE, not a stack trace', async (t) => {
  const out = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  let prev = 'a';
  for (const n of 'bcdefghi') {
    out.push(`${n}: &${n} [${Array(9).fill(`*${prev}`).join(',')}]`);
    prev = n;
  }
  out.push('mappings: []');
  const f = path.join(dir, 'laughs.yaml');
  writeFileSync(f, `${out.join('\n')}\n`);
  const p = only(await refusal(f));
  t.equal(p.code, 'PF_CONFIG_PARSE');
  t.match(p.message, /aliases .* more than 10000/);
  t.match(p.hint, /at most 10000 alias/);
});

t.test('a file of 9000 mappings is refused by the listener budget (PF_LISTENER_LIMIT), before the pairwise conflict check', async (t) => {
  // ~700 KB, 9000 mappings: over MAX_LISTENERS (the old code accepted any number).
  const lines = ['mappings:'];
  for (let i = 0; i < 9000; i++) lines.push(`  - {hostIP: 127.0.0.1, hostPort: ${1 + i}, containerIP: 10.0.0.1, containerPort: 80}`);
  const f = path.join(dir, 'many.yaml');
  writeFileSync(f, `${lines.join('\n')}\n`);
  const p = only(await refusal(f));
  t.equal(p.code, 'PF_LISTENER_LIMIT');
  t.match(p.message, /need 9000 listeners, more than the maximum of 4096/);
});
