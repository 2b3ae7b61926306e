// Reading a config file named by the user: regular files only, at most MAX_CONFIG_BYTES, read
// once through one descriptor. Opened non-blocking, so a FIFO cannot hang the open; fstat on that
// descriptor then refuses FIFOs, devices (/dev/zero, /dev/urandom), sockets and directories before
// a byte is read, and a file over the limit before it is loaded. Memory stays bounded by the limit.
import { constants, promises as fs } from 'node:fs';
import { PortferryError, errnoCode, type ErrorCode } from '../errors.js';

/** The largest config file read (1 MiB: room for the 4096 mappings MAX_LISTENERS allows, with options; a 1 MiB file parses in about 2 s). Documented in the README. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

function kindOf(st: { isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean; isDirectory(): boolean }): string {
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/** The codes and words a reader reports with: readConfigFile's and the state file's. */
export interface RegularFileErrors {
  /** `config file`, `state file`: how the message names the file. */
  readonly what: string;
  readonly read: ErrorCode;
  readonly notFile: ErrorCode;
  readonly tooLarge: ErrorCode;
  /** Appended to the not-a-file and too-large messages (e.g. what was left as it was). */
  readonly outcome?: string;
  readonly notFileHint?: string;
  readonly tooLargeHint?: string;
}

const CONFIG_ERRORS: RegularFileErrors = { what: 'config file', read: 'PF_CONFIG_READ', notFile: 'PF_CONFIG_NOT_FILE', tooLarge: 'PF_CONFIG_TOO_LARGE' };

/** The text of a config file, or a coded error: PF_CONFIG_READ, PF_CONFIG_NOT_FILE, PF_CONFIG_TOO_LARGE. */
export function readConfigFile(file: string, maxBytes = MAX_CONFIG_BYTES): Promise<string> {
  return readRegularFile(file, maxBytes, CONFIG_ERRORS);
}

/**
 * The text of a regular file of at most maxBytes, or a coded error (`errors`). A read error keeps
 * its errno in `details.errno` (ENOENT: a caller may take a missing file as empty).
 */
export async function readRegularFile(file: string, maxBytes: number, errors: RegularFileErrors): Promise<string> {
  const { what } = errors;
  const tail = errors.outcome !== undefined ? `; ${errors.outcome}` : '';
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    const code = errnoCode(err) ?? String(err);
    throw new PortferryError(errors.read, `cannot read ${what} ${file}: ${code}${tail}`, { cause: err, details: { file, errno: code } });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) {
      throw new PortferryError(errors.notFile, `${what} ${file} is ${kindOf(st)}, not a regular file${tail}`, { details: { file }, ...(errors.notFileHint !== undefined ? { hint: errors.notFileHint } : {}) });
    }
    if (st.size > maxBytes) {
      throw new PortferryError(errors.tooLarge, `${what} ${file} is ${st.size} bytes, more than the maximum of ${maxBytes} bytes (${maxBytes / 1024 / 1024} MiB)${tail}`, { details: { file, size: st.size, maxBytes }, ...(errors.tooLargeHint !== undefined ? { hint: errors.tooLargeHint } : {}) });
    }
    // Read one byte more than fstat said: a file that grew meanwhile is refused, not half-loaded.
    const buf = Buffer.allocUnsafe(st.size + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, length, buf.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buf.length) {
        throw new PortferryError(errors.read, `${what} ${file} grew while it was being read (from ${st.size} bytes)${tail}`, { details: { file }, hint: 'Write the file completely (e.g. to a temporary name, then rename it) before portferry reads it.' });
      }
    }
    return buf.toString('utf8', 0, length);
  } catch (err) {
    if (err instanceof PortferryError) throw err;
    const code = errnoCode(err) ?? String(err);
    throw new PortferryError(errors.read, `cannot read ${what} ${file}: ${code}${tail}`, { cause: err, details: { file, errno: code } });
  } finally {
    await handle.close().catch(() => undefined);
  }
}
