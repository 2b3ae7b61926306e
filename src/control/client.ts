// The runtime API's client: HTTP/1.1 over the daemon's unix socket (docs/api.md). Used by
// `portferry ports` and the CNI plugin's userspace backend; loads nothing but node:http and the
// node:fs calls that check the socket's directory.
import fs from 'node:fs';
import http from 'node:http';
import { dirname, resolve as resolvePath } from 'node:path';
import { CATALOGUE, PortferryError, errnoCode, type ErrorCode } from '../errors.js';

/** Where `portferry run --api` listens when no path is given, and where clients look. */
export function defaultApiSocket(env: NodeJS.ProcessEnv = process.env): string {
  if (process.getuid?.() === 0) return '/run/portferry/api.sock';
  // The XDG spec says to ignore a relative $XDG_RUNTIME_DIR.
  const xdg = env['XDG_RUNTIME_DIR'];
  if (xdg !== undefined && xdg.startsWith('/')) return `${xdg}/portferry/api.sock`;
  return `/tmp/portferry-${process.getuid?.() ?? 'user'}/api.sock`;
}

/**
 * Throws PF_API_SOCKET_UNSAFE when the directory of an API socket could hold someone else's
 * socket: it (or a symbolic link on its way) belongs to a user other than `uid` and root, or
 * group or others may write to it (the sticky bit does not help: whoever creates the socket
 * first owns the rendezvous). The daemon checks before it binds, every client before it
 * connects, so neither serves nor talks to a socket another user put there. A directory that
 * does not exist passes: the daemon creates it 0700, a client then fails to connect.
 */
export function checkSocketDir(socketDir: string, uid: number | undefined = process.geteuid?.()): void {
  if (uid === undefined) return; // no uids on this platform
  const dir = resolvePath(socketDir); // `.` for a relative --api path: name the real directory
  let link: fs.Stats;
  try {
    link = fs.lstatSync(dir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw new PortferryError('PF_API_SOCKET', `cannot inspect the API socket's directory ${dir}: ${errnoCode(err) ?? String(err)}`, { cause: err });
  }
  const unsafe = (why: string, hint: string): PortferryError => new PortferryError('PF_API_SOCKET_UNSAFE', `the API socket's directory ${dir} ${why}; another user could put their own socket there, so portferry will not use it`, { hint, details: { dir } });
  const owners = uid === 0 ? 'root' : `you (uid ${uid}) or root`;
  // Never advise changing a shared directory such as /tmp: point at a private one instead.
  const elsewhere = `pass --api a path in a directory of its own, e.g. --api ${dir === '/' ? '' : dir}/portferry-${uid}/api.sock (portferry creates a missing one with mode 0700)${uid === 0 ? '' : ', or set $XDG_RUNTIME_DIR'}`;
  if (link.isSymbolicLink() && link.uid !== uid && link.uid !== 0) throw unsafe(`is a symbolic link owned by uid ${link.uid}, not by ${owners}`, `Do not use it: ${elsewhere}; or have root remove the link.`);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    throw new PortferryError('PF_API_SOCKET', `cannot inspect the API socket's directory ${dir}: ${errnoCode(err) ?? String(err)}`, { cause: err });
  }
  if (!st.isDirectory()) throw new PortferryError('PF_API_SOCKET', `the API socket's directory ${dir} is not a directory`, { hint: 'Give --api a path inside a directory.' });
  if (st.uid !== uid && st.uid !== 0) throw unsafe(`belongs to uid ${st.uid}, not to ${owners}`, `Do not use it: ${elsewhere}. If it is portferry's default directory, have root remove it (\`rm -r ${dir}\`), so that portferry creates it again with mode 0700.`);
  if ((st.mode & 0o022) !== 0) {
    const who = (st.mode & 0o020) !== 0 && (st.mode & 0o002) !== 0 ? 'its group and every user' : (st.mode & 0o002) !== 0 ? 'every user' : 'its group';
    const mode = `mode ${(st.mode & 0o7777).toString(8)}`;
    // A directory of the user's own can be made private; a shared one (root's, like /tmp) must not be.
    throw unsafe(`can be written by ${who} (${mode})`, st.uid === uid && uid !== 0 ? `Make it private (\`chmod 700 ${dir}\`) if only you use it, or ${elsewhere}.` : `Do not change a shared directory: ${elsewhere}.`);
  }
}

export interface ApiResponse {
  readonly status: number;
  readonly body: unknown;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** One request. Rejects with PF_API_UNREACHABLE when nothing answers on the socket. */
export function apiRequest(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    try {
      checkSocketDir(dirname(socketPath));
    } catch (err) {
      return reject(err);
    }
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      {
        socketPath,
        agent: false,
        method,
        path,
        headers: { Host: 'portferry', ...(payload !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}) },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text === '' ? null : JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
          // The answer may come before all of a refused body was written: stop writing now, or the
          // rest would fail with EPIPE on a socket nobody listens to any more.
          req.destroy();
        });
      },
    );
    req.on('timeout', () => req.destroy(new PortferryError('PF_API_UNREACHABLE', `the daemon at ${socketPath} did not answer ${method} ${path} within ${timeoutMs / 1000} s`, { details: { socket: socketPath } })));
    req.on('error', (err) => {
      if (err instanceof PortferryError) return reject(err);
      const code = errnoCode(err);
      reject(
        new PortferryError('PF_API_UNREACHABLE', `cannot reach the portferry daemon at ${socketPath}: ${code ?? err.message}`, {
          cause: err,
          details: { socket: socketPath },
          ...(code === 'EACCES' ? { hint: `The socket is mode 0600: run as the user that started the daemon (or root).` } : {}),
        }),
      );
    });
    req.end(payload);
  });
}

/** A PortferryError from an error body `{code, message, hint, problems}` (any non-2xx). */
export function errorFromBody(status: number, body: unknown, what: string): PortferryError {
  const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  const code = typeof b['code'] === 'string' && b['code'] in CATALOGUE ? (b['code'] as ErrorCode) : 'PF_API_REQUEST';
  const message = typeof b['summary'] === 'string' ? b['summary'] : typeof b['message'] === 'string' ? b['message'] : `${what} failed with HTTP ${status}${typeof body === 'string' && body !== '' ? `: ${body}` : ''}`;
  const problems = Array.isArray(b['problems']) ? b['problems'].map((p: unknown) => errorFromBody(status, p, what)) : [];
  return new PortferryError(code, message, { ...(typeof b['hint'] === 'string' ? { hint: b['hint'] } : {}), problems, details: { status } });
}

export interface MappingStatus {
  readonly id: number;
  readonly name: string;
  readonly owner: string | null;
  readonly origin: 'cli' | 'api' | 'state';
  readonly mapping: Record<string, unknown>;
  readonly listeners: readonly { readonly protocol: string; readonly host: string; readonly container: string }[];
}

export interface MappingStats {
  readonly id: number;
  readonly name: string;
  readonly owner: string | null;
  readonly protocol: string;
  readonly listeners: readonly { readonly host: string; readonly container: string; readonly stats: Record<string, unknown> }[];
}

/** Typed calls of the native API; every non-2xx answer becomes a thrown PortferryError. */
export class ApiClient {
  constructor(readonly socketPath: string = defaultApiSocket()) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const res = await apiRequest(this.socketPath, method, path, body);
    if (res.status < 200 || res.status > 299) throw errorFromBody(res.status, res.body, `${method} ${path}`);
    return res.body;
  }

  info(): Promise<Record<string, unknown>> {
    return this.call('GET', '/v1/info') as Promise<Record<string, unknown>>;
  }

  async listMappings(owner?: string): Promise<MappingStatus[]> {
    const q = owner === undefined ? '' : `?owner=${encodeURIComponent(owner)}`;
    return ((await this.call('GET', `/v1/mappings${q}`)) as { mappings: MappingStatus[] }).mappings;
  }

  async addMappings(mappings: readonly Record<string, unknown>[], owner?: string): Promise<MappingStatus[]> {
    return ((await this.call('POST', '/v1/mappings', { ...(owner !== undefined ? { owner } : {}), mappings })) as { mappings: MappingStatus[] }).mappings;
  }

  /** Makes the owner's mappings exactly these (idempotent; unchanged ones keep their ids). */
  async replaceOwner(owner: string, mappings: readonly Record<string, unknown>[]): Promise<MappingStatus[]> {
    return ((await this.call('PUT', `/v1/owners/${encodeURIComponent(owner)}`, { mappings })) as { mappings: MappingStatus[] }).mappings;
  }

  async removeMapping(id: number): Promise<number[]> {
    return ((await this.call('DELETE', `/v1/mappings/${id}`)) as { removed: number[] }).removed;
  }

  async removeOwner(owner: string): Promise<number[]> {
    return ((await this.call('DELETE', `/v1/owners/${encodeURIComponent(owner)}`)) as { removed: number[] }).removed;
  }

  async owners(): Promise<{ owner: string; ids: number[] }[]> {
    return ((await this.call('GET', '/v1/owners')) as { owners: { owner: string; ids: number[] }[] }).owners;
  }

  async stats(): Promise<MappingStats[]> {
    return ((await this.call('GET', '/v1/stats')) as { mappings: MappingStats[] }).mappings;
  }
}
