// The `run --state FILE`: the mappings added at runtime, with their ids and owners, so a restart
// brings them back. JSON, one object per mapping in the YAML schema (mappingToObject), validated on
// load by the same code as a config file (mappingsFromObjects). Loading never changes the file and
// never starts empty on a file it cannot use; saving is atomic (temp file in the same directory,
// fsync, rename, fsync of the directory), so a crash leaves the old or the new file, never half.
// Only regular files of at most MAX_STATE_BYTES are read (a FIFO or /dev/zero is refused before a
// byte is read, as for -c). One daemon per file: lockState() (see there).
import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync, unlinkSync } from 'node:fs';
import { open, readdir, readlink, rename, stat, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Mapping } from '../api.js';
import { mappingsFromObjects } from '../config/index.js';
import { readRegularFile } from '../config/read.js';
import { PortferryError, errnoCode, isPortferryError } from '../errors.js';

export interface StateEntry {
  readonly id: number;
  readonly owner: string | null;
  /** A mapping in the YAML schema, every option spelt out (mappingToObject). */
  readonly mapping: Record<string, unknown>;
}

export interface State {
  readonly version: 1;
  /** The next id to hand out; ids are never reused, also across restarts. */
  readonly nextId: number;
  readonly entries: readonly StateEntry[];
}

export interface LoadedState {
  readonly state: State;
  /** The entries' mappings, validated, in the entries' order. */
  readonly mappings: readonly Mapping[];
}

/**
 * The largest state file read: 4096 listeners (MAX_LISTENERS) as single-port mappings with every
 * option spelt out and 512-character owners make about 6 MiB; 16 MiB leaves room and bounds memory.
 */
export const MAX_STATE_BYTES = 16 * 1024 * 1024;

/** Temp files are `.NAME.tmp-PID-RANDOM` beside the file: hidden, and never read as the state. */
const tempPrefix = (file: string): string => `.${path.basename(file)}.tmp-`;

async function checkDirectory(file: string): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  let isDir = false;
  try {
    isDir = (await stat(dir)).isDirectory();
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT' && errnoCode(err) !== 'ENOTDIR') {
      throw new PortferryError('PF_STATE_DIR', `state file ${file}: cannot use its directory ${dir}: ${errnoCode(err) ?? String(err)}`, { cause: err, details: { file, directory: dir } });
    }
  }
  if (!isDir) {
    throw new PortferryError('PF_STATE_DIR', `state file ${file}: its directory ${dir} does not exist or is not a directory`, {
      details: { file, directory: dir },
      hint: `Create it (\`mkdir -p -m 0700 ${dir}\`) or give --state a path in an existing directory.`,
    });
  }
}

/** Checks the shape of a parsed state file; returns what is wrong, or the state. */
function checkShape(data: unknown): State | string {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return 'it is not a JSON object';
  const o = data as Record<string, unknown>;
  const unknownKeys = Object.keys(o).filter((k) => !['version', 'nextId', 'entries'].includes(k));
  if (o['version'] !== 1) return `"version" is ${JSON.stringify(o['version'])}; this portferry reads version 1`;
  if (unknownKeys.length > 0) return `unknown key(s) ${unknownKeys.map((k) => `"${k}"`).join(', ')}; allowed: version, nextId, entries`;
  const nextId = o['nextId'];
  if (!Number.isSafeInteger(nextId) || (nextId as number) < 1) return `"nextId" is ${JSON.stringify(nextId)}, not a whole number of 1 or more`;
  if (!Array.isArray(o['entries'])) return '"entries" is not a list';
  const seen = new Set<number>();
  const entries: StateEntry[] = [];
  for (const [i, e] of (o['entries'] as unknown[]).entries()) {
    if (typeof e !== 'object' || e === null || Array.isArray(e)) return `entries[${i}] is not an object`;
    const r = e as Record<string, unknown>;
    const extra = Object.keys(r).filter((k) => !['id', 'owner', 'mapping'].includes(k));
    if (extra.length > 0) return `entries[${i}] has unknown key(s) ${extra.map((k) => `"${k}"`).join(', ')}; allowed: id, owner, mapping`;
    const id = r['id'];
    if (!Number.isSafeInteger(id) || (id as number) < 1) return `entries[${i}].id is ${JSON.stringify(id)}, not a whole number of 1 or more`;
    if ((id as number) >= (nextId as number)) return `entries[${i}].id ${String(id)} is not below nextId ${String(nextId)}`;
    if (seen.has(id as number)) return `entries[${i}].id ${String(id)} appears twice`;
    seen.add(id as number);
    const owner = r['owner'] ?? null;
    if (owner !== null && typeof owner !== 'string') return `entries[${i}].owner is not a string or null`;
    const mapping = r['mapping'];
    if (typeof mapping !== 'object' || mapping === null || Array.isArray(mapping)) return `entries[${i}].mapping is not an object`;
    entries.push({ id: id as number, owner, mapping: mapping as Record<string, unknown> });
  }
  return { version: 1, nextId: nextId as number, entries };
}

/**
 * Reads and validates the state file. null when it does not exist (its directory must); any other
 * failure throws a PF_STATE_* error naming the file. Never writes anything.
 */
export async function loadState(file: string): Promise<LoadedState | null> {
  await checkDirectory(file);
  const untouched = 'portferry did not start and left the file as it is';
  let text: string;
  try {
    text = await readRegularFile(file, MAX_STATE_BYTES, {
      what: 'state file',
      read: 'PF_STATE_READ',
      notFile: 'PF_STATE_NOT_FILE',
      tooLarge: 'PF_STATE_TOO_LARGE',
      outcome: untouched,
      notFileHint: `Give --state the path of a regular file (or of one that does not exist yet: portferry creates it), not ${file}.`,
      tooLargeHint: `portferry never writes a state file over ${MAX_STATE_BYTES / 1024 / 1024} MiB: check that --state names its state file; to start without the runtime mappings it kept, move it aside (\`mv ${file} ${file}.bad\`).`,
    });
  } catch (err) {
    if (isPortferryError(err) && err.details['errno'] === 'ENOENT') return null;
    throw err;
  }
  let data: unknown;
  try {
    if (text.trim() === '') throw new Error('the file is empty');
    data = JSON.parse(text);
  } catch (err) {
    throw new PortferryError('PF_STATE_PARSE', `state file ${file} is not valid JSON (${(err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ')}); ${untouched}`, {
      cause: err,
      details: { file, bytes: Buffer.byteLength(text) },
      hint: `Restore ${file} from a backup or repair it; to start without the runtime mappings it kept, move it aside (\`mv ${file} ${file}.bad\`) and start again.`,
    });
  }
  return validateState(data, file, untouched);
}

/** The shape check, then every mapping through the config validator (the same as a file's). */
function validateState(data: unknown, file: string, outcome: string): LoadedState {
  const invalid = (why: string, problems: readonly PortferryError[] = [], cause?: unknown): PortferryError =>
    new PortferryError('PF_STATE_INVALID', `state file ${file}: ${why}; ${outcome}`, {
      details: { file },
      problems,
      ...(cause !== undefined ? { cause } : {}),
      hint: `Fix what is named above, or move the file aside (\`mv ${file} ${file}.bad\`) to start without the runtime mappings it kept.`,
    });
  const state = checkShape(data);
  if (typeof state === 'string') throw invalid(state);
  if (state.entries.length === 0) return { state, mappings: [] }; // the validator wants at least one
  try {
    const mappings = mappingsFromObjects(
      state.entries.map((e) => e.mapping),
      file,
    );
    return { state, mappings };
  } catch (err) {
    if (!isPortferryError(err)) throw err;
    // Problems name `mappings[i]`: the mapping of entries[i].
    throw invalid('a mapping does not validate (mappings[i] is entries[i].mapping)', err.problems.length > 0 ? err.problems : [err], err);
  }
}

/** Removes temp files of earlier saves whose process is gone (a crash between write and rename). */
async function removeStaleTemps(file: string): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const prefix = tempPrefix(file);
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    // A live process (this one included) may be saving right now: leave its temp file alone.
    const pid = Number.parseInt(name.slice(prefix.length), 10);
    if (Number.isSafeInteger(pid) && pid > 0 && processAlive(pid)) continue;
    await unlink(path.join(dir, name)).catch(() => {});
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

/** One save at a time per file within this process, in call order. */
const saving = new Map<string, Promise<unknown>>();

/**
 * Writes the state atomically, mode 0600. Throws PF_STATE_DIR or PF_STATE_WRITE, or
 * PF_STATE_INVALID or PF_STATE_TOO_LARGE for a state loadState would refuse (it is never written: a file that stops the
 * next start is worse than none); on failure the previous file is unchanged, no temp file is left.
 */
export function saveState(file: string, state: State): Promise<void> {
  const key = path.resolve(file);
  const run = (saving.get(key) ?? Promise.resolve()).then(() => {
    validateState(state, file, 'nothing was written');
    const text = `${JSON.stringify(state, null, 2)}\n`;
    // Long names and netns paths are not limited one by one: the next start must be able to read it.
    const bytes = Buffer.byteLength(text);
    if (bytes > MAX_STATE_BYTES) {
      throw new PortferryError('PF_STATE_TOO_LARGE', `state file ${file}: the state would be ${bytes} bytes, more than the ${MAX_STATE_BYTES} bytes a start reads; nothing was written`, {
        details: { file, size: bytes, maxBytes: MAX_STATE_BYTES },
        hint: 'Use shorter names, owners and netns paths, or fewer mappings.',
      });
    }
    return writeAtomically(file, text);
  });
  const settled = run.catch(() => {});
  saving.set(key, settled);
  void settled.then(() => {
    if (saving.get(key) === settled) saving.delete(key);
  });
  return run;
}

async function writeAtomically(file: string, text: string): Promise<void> {
  await checkDirectory(file);
  const dir = path.dirname(path.resolve(file));
  const temp = path.join(dir, `${tempPrefix(file)}${process.pid}-${randomBytes(4).toString('hex')}`);
  const failed = (step: string, err: unknown): PortferryError =>
    new PortferryError('PF_STATE_WRITE', `cannot write state file ${file} (${step}): ${errnoCode(err) ?? String(err)}; the previous state file is unchanged`, {
      cause: err,
      details: { file, step },
    });
  let step = 'create a temp file';
  try {
    const handle = await open(temp, 'wx', 0o600);
    try {
      step = 'write';
      await handle.writeFile(text);
      step = 'fsync';
      await handle.sync();
    } finally {
      await handle.close();
    }
    step = 'rename';
    await rename(temp, file);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw failed(step, err);
  }
  // The rename is durable once the directory is synced.
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch (err) {
    throw failed('fsync of the directory', err);
  }
  await removeStaleTemps(file);
}

// -- one daemon per state file --
//
// Two daemons on one file each hand out the same ids and each overwrites the other's entries. The
// lock is a symlink `.NAME.lock` beside the file whose target names its holder,
// `PID:STARTTIME:BOOT_ID` (start time from /proc/PID/stat, boot id from the kernel), as Emacs
// locks files. Why this and not the others:
// - symlink(2) creates atomically or fails with EEXIST, like O_EXCL, and the target needs no data
//   block (ext4 and tmpfs keep a short target in the inode): a daemon restarting on a full file
//   system still takes it, where a lock file holding its pid could not be written.
// - A lock left by a holder that was SIGKILLed is detected exactly: the pid must be alive with the
//   same start time in the same boot, so a reused pid (a container's pid 1 after a restart) does
//   not keep it. Node has no flock(2); an abstract unix socket (as the rules lock uses) frees
//   itself, but any local user may bind its name first and block the daemon, and it cannot name
//   the holder's pid. The lock sits in the state file's directory, which its owner controls.
// - Taking over a dead holder's lock moves it aside with rename(2) and puts back whatever live
//   lock that move caught (another daemon that took it over in the meantime), so two starters
//   cannot both win. Every save checks the lock still names this process.
// Limit: a holder in another pid namespace (another container sharing the file) is not visible
// in /proc here and is taken for dead.

/** `PID:STARTTIME:BOOT_ID` of a process (the start time in clock ticks since boot), or null. */
function processIdentity(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: the fields after it start past the last ')'.
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    return start === undefined ? null : `${pid}:${start}:${bootId()}`;
  } catch {
    return null;
  }
}

let bootIdValue: string | undefined;
function bootId(): string {
  if (bootIdValue === undefined) {
    try {
      bootIdValue = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootIdValue = '';
    }
  }
  return bootIdValue;
}

/** Whether the process a lock names still runs (the same process: same pid, start time and boot). */
function holderAlive(holder: string): boolean {
  const pid = Number.parseInt(holder, 10);
  if (!Number.isSafeInteger(pid) || pid < 1 || !/^\d+:\d+:/.test(holder)) return false;
  return processIdentity(pid) === holder;
}

export const stateLockPath = (file: string): string => path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.lock`);

export interface StateLock {
  readonly file: string;
  /** The lock's path, `.NAME.lock` beside the file. */
  readonly path: string;
  /** Throws PF_STATE_LOCKED unless the lock still names this process (then a save may go on). */
  check(): Promise<void>;
  /** Removes the lock if it is still this process's. Synchronous, for process 'exit'. Idempotent. */
  release(): void;
}

function lockedError(file: string, lock: string, holder: string): PortferryError {
  const pid = Number.parseInt(holder, 10);
  if (!Number.isSafeInteger(pid)) {
    return new PortferryError('PF_STATE_LOCKED', `state file ${file} is in use by another process (lock ${lock} -> ${holder})`, { details: { file, lock }, hint: `Stop it first, or give this portferry another --state file.` });
  }
  return new PortferryError('PF_STATE_LOCKED', `state file ${file} is in use by another portferry, pid ${pid} (lock ${lock})`, {
    details: { file, lock, pid },
    hint: `Stop that portferry first (\`kill ${pid}\`), or give this one another --state file.`,
  });
}

/**
 * Takes the state file's lock for this process, or throws PF_STATE_LOCKED naming the file and the
 * pid of the live daemon that holds it (PF_STATE_DIR when the directory is missing). A lock whose
 * holder is gone is taken over.
 */
export async function lockState(file: string): Promise<StateLock> {
  await checkDirectory(file);
  const lock = stateLockPath(file);
  const me = processIdentity(process.pid) ?? `${process.pid}:0:${bootId()}`;
  const cannot = (err: unknown): PortferryError =>
    new PortferryError('PF_STATE_LOCKED', `cannot take the lock ${lock} of state file ${file}: ${errnoCode(err) ?? String(err)}`, {
      cause: err,
      details: { file, lock },
      hint: `portferry keeps a lock (a symlink) beside the state file: check that ${path.dirname(lock)} is writable by the user running it.`,
    });
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await symlink(me, lock);
      return heldLock(file, lock, me);
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw cannot(err);
    }
    let holder: string;
    try {
      holder = await readlink(lock);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') continue; // released meanwhile: try again
      if (errnoCode(err) === 'EINVAL') {
        throw new PortferryError('PF_STATE_LOCKED', `cannot take the lock of state file ${file}: ${lock} exists and is not a symlink (not a portferry lock)`, {
          details: { file, lock },
          hint: `Remove ${lock} if no portferry uses ${file}.`,
        });
      }
      throw cannot(err);
    }
    if (holderAlive(holder)) throw lockedError(file, lock, holder);
    // The holder is gone. Move its lock aside; if the move caught a live lock instead (another
    // starter took over first), put that one back, then look again.
    const aside = `${lock}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await rename(lock, aside);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') continue;
      throw cannot(err);
    }
    const moved = await readlink(aside).catch(() => null);
    if (moved !== null && moved !== holder && holderAlive(moved)) await symlink(moved, lock).catch(() => {});
    await unlink(aside).catch(() => {});
  }
  throw cannot(new Error('the lock kept changing hands'));
}

function heldLock(file: string, lock: string, me: string): StateLock {
  let released = false;
  return {
    file,
    path: lock,
    async check(): Promise<void> {
      if (released) throw new PortferryError('PF_STATE_LOCKED', `the lock of state file ${file} was released; nothing is saved any more`, { details: { file, lock } });
      let holder: string | null;
      try {
        holder = await readlink(lock);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw new PortferryError('PF_STATE_LOCKED', `cannot read the lock ${lock} of state file ${file}: ${errnoCode(err) ?? String(err)}`, { cause: err, details: { file, lock } });
        holder = null;
      }
      if (holder === me) return;
      // Removed by hand: take it again, unless another daemon did.
      if (holder === null) {
        try {
          await symlink(me, lock);
          return;
        } catch {
          holder = await readlink(lock).catch(() => 'unknown');
        }
      }
      throw lockedError(file, lock, holder);
    },
    release(): void {
      if (released) return;
      released = true;
      try {
        if (readlinkSync(lock) === me) unlinkSync(lock);
      } catch {
        // gone already
      }
    },
  };
}
