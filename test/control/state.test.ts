// The --state file: round trip through the config schema, coded errors that leave the file as it
// was, atomic saves that survive SIGKILL at any moment, and leftover temp files.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { mappingToObject, mappingsFromObjects } from '../../src/config/index.js';
import { loadState, saveState, type State } from '../../src/control/state.js';
import { nodeArgv, repoRoot } from '../helpers/net.js';

function scratchDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'pf-state-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const objects = [
  { name: 'web', hostIP: '127.0.0.1', hostPort: '20000-20099', containerIP: '10.88.0.2', containerPort: '30000-30099', proxyProtocol: 'v2', proxyProtocolTLVs: ['uniqueId'] },
  { protocol: 'udp', hostIP: '::1', hostPort: 5353, containerIP: '127.0.0.1', containerPort: 53, netns: '/run/netns/ctr1', udpIdleTimeout: '90s' },
];
const mappings = mappingsFromObjects(objects, 'test');
const sample: State = {
  version: 1,
  nextId: 8,
  entries: [
    { id: 3, owner: 'container-a', mapping: mappingToObject(mappings[0]!) },
    { id: 7, owner: null, mapping: mappingToObject(mappings[1]!) },
  ],
};

/** The file's bytes and mtime, to show that a failed load changed nothing. */
function snapshot(file: string): { bytes: Buffer; mtimeMs: number; mode: number } {
  const s = statSync(file);
  return { bytes: readFileSync(file), mtimeMs: s.mtimeMs, mode: s.mode };
}

t.test('round trip: save then load gives the same state and the same validated mappings; 0600, no temp file left', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  await saveState(file, sample);
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600');
  t.same(readdirSync(dir), ['state.json'], 'only the state file: the temp file was renamed');
  const text = readFileSync(file, 'utf8');
  t.ok(text.endsWith('}\n'), 'JSON with a final newline');
  const loaded = await loadState(file);
  t.ok(loaded);
  t.same(loaded?.state, sample, 'same ids, owners, nextId, mapping objects');
  t.same(loaded?.mappings.map((m) => ({ ...m, source: '' })), mappings.map((m) => ({ ...m, source: '' })), 'the mappings validate to what was saved (all but where they came from)');
  t.equal(loaded?.mappings[0]?.name, 'web');
  t.equal(loaded?.mappings[0]?.hostPortEnd, 20099);
  t.equal(loaded?.mappings[1]?.udpIdleTimeoutMs, 90_000);
  t.match(loaded?.mappings[1]?.source ?? '', file, 'a restored mapping names the state file as its source');
  // Saving over an existing file of another mode: the new one is 0600 too, and has the new content.
  chmodSync(file, 0o644);
  await saveState(file, { version: 1, nextId: 9, entries: [] });
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.same((await loadState(file))?.state, { version: 1, nextId: 9, entries: [] });
});

t.test('a file that does not exist is null, and loading creates nothing', async (t) => {
  const dir = scratchDir(t);
  t.equal(await loadState(path.join(dir, 'state.json')), null);
  t.same(readdirSync(dir), []);
});

t.test('a truncated or empty file is PF_STATE_PARSE naming the file; its bytes stay as they were', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  await saveState(file, sample);
  const full = readFileSync(file);
  for (const [what, bytes] of [
    ['truncated', full.subarray(0, Math.floor(full.length / 2))],
    ['empty', Buffer.alloc(0)],
    ['not JSON', Buffer.from('version: 1\n')],
  ] as const) {
    writeFileSync(file, bytes);
    const before = snapshot(file);
    await t.rejects(loadState(file), { code: 'PF_STATE_PARSE', message: new RegExp(`state file ${file} is not valid JSON .*left the file as it is`), hint: new RegExp(`mv ${file} ${file}\\.bad`) }, what);
    t.same(snapshot(file), before, `${what}: the file is unchanged`);
    t.same(readdirSync(dir), ['state.json'], `${what}: nothing else was created`);
  }
});

t.test('a file of the wrong shape, or with a mapping that does not validate, is PF_STATE_INVALID; unchanged', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  const entry = sample.entries[0]!;
  const cases: [string, unknown, RegExp][] = [
    ['a list', [], /not a JSON object/],
    ['version 2', { ...sample, version: 2 }, /"version" is 2; this portferry reads version 1/],
    ['an unknown key', { ...sample, extra: 1 }, /unknown key\(s\) "extra"/],
    ['nextId 0', { ...sample, nextId: 0 }, /"nextId" is 0/],
    ['an id twice', { ...sample, entries: [entry, { ...entry, mapping: mappingToObject(mappings[1]!) }] }, /entries\[1\]\.id 3 appears twice/],
    ['an id at nextId', { ...sample, nextId: 3 }, /entries\[0\]\.id 3 is not below nextId 3/],
    ['a bad owner', { ...sample, entries: [{ ...entry, owner: 5 }] }, /entries\[0\]\.owner is not a string/],
    ['an unknown entry key', { ...sample, entries: [{ ...entry, when: 'now' }] }, /entries\[0\] has unknown key\(s\) "when"/],
    ['a bad port', { ...sample, entries: [{ ...entry, mapping: { ...entry.mapping, hostPort: 70000 } }] }, /a mapping does not validate/],
  ];
  for (const [what, data, message] of cases) {
    writeFileSync(file, JSON.stringify(data));
    const before = snapshot(file);
    await t.rejects(loadState(file), { code: 'PF_STATE_INVALID', message }, what);
    t.same(snapshot(file), before, `${what}: the file is unchanged`);
  }
  // The validator's own problem names the key, as for a config file.
  writeFileSync(file, JSON.stringify({ ...sample, entries: [{ ...entry, mapping: { ...entry.mapping, hostPort: 70000 } }] }));
  const err = await loadState(file).catch((e: unknown) => e);
  t.match(err, { code: 'PF_STATE_INVALID', problems: [{ code: 'PF_PORT_INVALID', message: /mappings\[0\]\.hostPort/ }] });
  // Two entries on the same host port conflict, exactly as in a config file.
  writeFileSync(file, JSON.stringify({ ...sample, entries: [entry, { ...entry, id: 4, mapping: { ...entry.mapping, name: 'web2' } }] }));
  t.match(await loadState(file).catch((e: unknown) => e), { code: 'PF_STATE_INVALID', problems: [{ code: 'PF_CONFLICT' }] });
});

/** Settles with the promise's outcome, or with 'hung' when it has not settled within ms. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), ms)))]).finally(() => clearTimeout(timer));
}

// Issue 20 bug 7d: `--state` on a FIFO hung the start, on /dev/zero it read until `Invalid string
// length`. Like a -c file: regular files only, at most 16 MiB, checked on the open descriptor
// before a byte is read.
t.test('bug 7d: a FIFO, /dev/zero, a directory or a file over 16 MiB is refused at once with a coded error; nothing is read or changed', async (t) => {
  const dir = scratchDir(t);
  const fifo = path.join(dir, 'fifo.json');
  execFileSync('mkfifo', [fifo]);
  // On the old code a reader is stuck in open(2) on the FIFO: a writer's open lets it go.
  t.teardown(() => {
    try {
      closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // no reader waiting
    }
  });
  const big = path.join(dir, 'big.json');
  writeFileSync(big, '');
  truncateSync(big, 16 * 1024 * 1024 + 1);
  mkdirSync(path.join(dir, 'state.json'));
  const cases: [string, string, string, RegExp][] = [
    ['a FIFO', fifo, 'PF_STATE_NOT_FILE', /is a FIFO \(named pipe\), not a regular file/],
    ['/dev/zero', '/dev/zero', 'PF_STATE_NOT_FILE', /is a character device, not a regular file/],
    ['a directory', path.join(dir, 'state.json'), 'PF_STATE_NOT_FILE', /is a directory, not a regular file/],
    ['a file over 16 MiB', big, 'PF_STATE_TOO_LARGE', /is 16777217 bytes, more than the maximum of 16777216 bytes/],
  ];
  for (const [what, file, code, message] of cases) {
    const got = await within(loadState(file).catch((e: unknown) => e), 5000);
    t.not(got, 'hung', `${what}: answered at once`);
    t.match(got, { code, message, hint: /regular file|--state/ }, `${what}: ${code}`);
    t.match(got, { message: new RegExp(file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')) }, `${what}: the message names the path`);
  }
  t.equal(statSync(big).size, 16 * 1024 * 1024 + 1, 'the big file is unchanged');
  t.ok(statSync(fifo).isFIFO(), 'the FIFO is still there');
  // Nor is a state written that the next start would refuse as too large.
  const file = path.join(dir, 'saved.json');
  await saveState(file, sample);
  const before = snapshot(file);
  const huge: State = { ...sample, entries: [{ ...sample.entries[0]!, owner: 'x'.repeat(16 * 1024 * 1024) }] };
  await t.rejects(saveState(file, huge), { code: 'PF_STATE_TOO_LARGE', message: /nothing was written/ });
  t.same(snapshot(file), before, 'the previous state file is unchanged');
});

t.test('a path that cannot be read is PF_STATE_READ; a missing directory is PF_STATE_DIR for load and save', async (t) => {
  const dir = scratchDir(t);
  writeFileSync(path.join(dir, 'state.json'), '{}', { mode: 0o000 });
  if (process.getuid?.() !== 0) await t.rejects(loadState(path.join(dir, 'state.json')), { code: 'PF_STATE_READ', message: /cannot read state file .*EACCES/ });
  rmSync(path.join(dir, 'state.json'));
  const missingDir = path.join(dir, 'nope', 'deeper');
  const file = path.join(missingDir, 'state.json');
  await t.rejects(loadState(file), { code: 'PF_STATE_DIR', message: new RegExp(`its directory ${missingDir} does not exist`), hint: new RegExp(`mkdir -p -m 0700 ${missingDir}`) });
  await t.rejects(saveState(file, sample), { code: 'PF_STATE_DIR' });
  t.notOk(existsSync(path.join(dir, 'nope')), 'saving did not create the directory');
  writeFileSync(path.join(dir, 'plain'), '');
  await t.rejects(saveState(path.join(dir, 'plain', 'state.json'), sample), { code: 'PF_STATE_DIR' }, 'a file where the directory should be');
});

t.test('saveState refuses a state that loadState would refuse, and keeps the previous file', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  await saveState(file, sample);
  const before = snapshot(file);
  const entry = sample.entries[0]!;
  await t.rejects(saveState(file, { version: 1, nextId: 9, entries: [entry, { ...entry, id: 8, mapping: { ...entry.mapping, name: 'web2' } }] }), { code: 'PF_STATE_INVALID', message: /nothing was written/ });
  t.same(snapshot(file), before);
  t.same(readdirSync(dir), ['state.json']);
});

t.test('saves run in call order: the last one wins', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  await Promise.all(Array.from({ length: 20 }, (_, i) => saveState(file, { version: 1, nextId: i + 1, entries: [] })));
  t.equal((await loadState(file))?.state.nextId, 20);
  t.same(readdirSync(dir), ['state.json']);
});

t.test('a temp file left by a crash is ignored by load and removed by the next save; a live process\'s is kept', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  await saveState(file, sample);
  // The pid of a process that has exited: its temp file is a leftover.
  const dead = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => dead.once('exit', resolve));
  const stale = path.join(dir, `.state.json.tmp-${dead.pid}-0badf00d`);
  const live = path.join(dir, `.state.json.tmp-${process.pid}-00c0ffee`);
  writeFileSync(stale, '{"version": 1, "nextId": 99, "entr');
  writeFileSync(live, '{}');
  t.same((await loadState(file))?.state, sample, 'load reads only the state file');
  t.ok(existsSync(stale), 'load removes nothing');
  await saveState(file, { ...sample, nextId: 10 });
  t.notOk(existsSync(stale), 'the next save removed the dead process\'s temp file');
  t.ok(existsSync(live), 'a live process\'s temp file is kept');
  t.equal((await loadState(file))?.state.nextId, 10);
});

t.test('read while saving, SIGKILL in the middle of saving: the file is always a whole state, old or new', async (t) => {
  const dir = scratchDir(t);
  const file = path.join(dir, 'state.json');
  const saver = path.join(repoRoot, 'test/fixtures/state/saver.mjs');
  const entries = 8;
  const ownerBytes = 256 * 1024; // 2 MiB a save, cheap to validate: a kill at a random moment often lands mid-write
  for (let round = 0; round < 6; round++) {
    const [cmd, argv] = nodeArgv(saver, file, String(entries), String(ownerBytes));
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let saved = 0;
    const exited = new Promise<string | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    // After the first completed save, SIGKILL at a random moment within the next few saves.
    await new Promise<void>((resolve) => {
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        for (const m of chunk.matchAll(/saved (\d+)/g)) saved = Number(m[1]);
        if (saved >= 1) resolve();
      });
      void exited.then(() => resolve());
    });
    // Until a random moment, read the file as it is being replaced: every read is a whole state.
    const until = Date.now() + 10 + Math.random() * 50;
    let reads = 0;
    let partial: unknown = null;
    while (Date.now() < until && partial === null) {
      const r = await loadState(file).catch((e: unknown) => e);
      if (r === null || (typeof r === 'object' && 'code' in r)) partial = r;
      reads++;
    }
    t.equal(partial, null, `round ${round}: ${reads} reads during saves all saw a whole state`);
    child.kill('SIGKILL');
    t.equal(await exited, 'SIGKILL', `round ${round}: the saver was killed while saving`);
    const loaded = await loadState(file).catch((e: unknown) => e);
    t.notMatch(loaded, { code: String }, `round ${round}: killed after ${saved} completed saves, the file loads`);
    const state = (loaded as { state: State } | null)?.state;
    t.ok((state?.nextId ?? 0) >= saved + entries + 1, `it holds save ${saved} or a later one (nextId ${state?.nextId})`);
    t.equal(state?.entries.length, entries, 'every entry is there');
  }
  // Whatever temp file the kills left is removed by the next save.
  await saveState(file, sample);
  t.same(readdirSync(dir), ['state.json'], 'no temp file after the next save');
});
