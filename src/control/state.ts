// The `run --state FILE`: the mappings added at runtime, with their ids and owners, so a restart
// brings them back. JSON, one object per mapping in the YAML schema (mappingToObject), validated on
// load by the same code as a config file (mappingsFromObjects). Loading never changes the file and
// never starts empty on a file it cannot use; saving is atomic (temp file in the same directory,
// fsync, rename, fsync of the directory), so a crash leaves the old or the new file, never half.
import { randomBytes } from 'node:crypto';
import { open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Mapping } from '../api.js';
import { mappingsFromObjects } from '../config/index.js';
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
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw new PortferryError('PF_STATE_READ', `cannot read state file ${file}: ${errnoCode(err) ?? String(err)}; ${untouched}`, { cause: err, details: { file } });
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
 * PF_STATE_INVALID for a state loadState would refuse (it is never written: a file that stops the
 * next start is worse than none); on failure the previous file is unchanged, no temp file is left.
 */
export function saveState(file: string, state: State): Promise<void> {
  const key = path.resolve(file);
  const run = (saving.get(key) ?? Promise.resolve()).then(() => {
    validateState(state, file, 'nothing was written');
    return writeAtomically(file, `${JSON.stringify(state, null, 2)}\n`);
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
