// Is a path a network namespace? The same test the CNI `ns` package makes (statfs magic: nsfs, or
// proc on kernels before 3.19 where /proc/PID/ns/* lived on procfs), plus one step further where
// the kernel lets us: a /proc/PID/ns/* link names its type (`net:[4026531840]`), so a user
// namespace or mount namespace file is refused too. A bind-mounted file (/run/netns/NAME) does not
// name its type; nsfs magic is all we can check there without an ioctl (NS_GET_NSTYPE), and a
// wrong kind of namespace then fails when the helper enters it (PF_NETNS_HELPER).
import { promises as fs } from 'node:fs';
import { PortferryError, errnoCode } from '../errors.js';

/** statfs f_type of nsfs (linux/magic.h NSFS_MAGIC). */
export const NSFS_MAGIC = 0x6e736673;
/** statfs f_type of procfs (linux/magic.h PROC_SUPER_MAGIC), for kernels older than 3.19. */
export const PROC_SUPER_MAGIC = 0x9fa0;

function invalid(path: string, reason: string, cause?: unknown): PortferryError {
  return new PortferryError('PF_NETNS_INVALID', `netns ${JSON.stringify(path)} ${reason}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { netns: path, reason },
  });
}

/**
 * Resolves when `path` is a network namespace file; rejects with PF_NETNS_INVALID (naming the path
 * and why) when it is missing, unreadable or something else.
 */
export async function validateNetnsPath(path: string): Promise<void> {
  if (typeof path !== 'string' || path === '') throw invalid(String(path), 'is empty: give a path');
  let type: number;
  try {
    type = Number((await fs.statfs(path)).type);
  } catch (err) {
    const code = errnoCode(err) ?? 'unknown';
    const reason = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' || code === 'EPERM' ? `cannot be read (${code})` : `cannot be inspected (${code})`;
    throw invalid(path, reason, err);
  }
  if (type !== NSFS_MAGIC && type !== PROC_SUPER_MAGIC) {
    throw invalid(path, `is not a namespace file (filesystem magic 0x${type.toString(16)}, expected nsfs 0x${NSFS_MAGIC.toString(16)})`);
  }
  // /proc/PID/ns/* magic links say what they are; bind mounts do not (readlink fails: EINVAL).
  let link: string | undefined;
  try {
    link = await fs.readlink(path);
  } catch {
    link = undefined;
  }
  const kind = link === undefined ? undefined : /^([a-z_]+):\[\d+\]$/.exec(link)?.[1];
  if (kind !== undefined && kind !== 'net') throw invalid(path, `is a ${kind} namespace, not a network namespace`);
  if (type === PROC_SUPER_MAGIC && kind !== 'net') throw invalid(path, 'is a procfs file but not a /proc/PID/ns/net link');
  const st = await fs.stat(path).catch((err: unknown) => {
    throw invalid(path, `cannot be inspected (${errnoCode(err) ?? 'unknown'})`, err);
  });
  if (st.isDirectory()) throw invalid(path, 'is a directory, not a namespace file');
}
