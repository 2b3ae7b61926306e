// The runtime API: HTTP/1.1 on a unix socket (0600, in a 0700 directory). rootlesskit's
// /v1/info and /v1/ports (so rootlessctl works unchanged) and portferry's native /v1/mappings,
// /v1/owners and /v1/stats, which speak the YAML mapping schema through the one validator.
// docs/api.md describes every route. Bad input gets a 4xx with the coded error; it changes
// nothing and the server keeps serving.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { formatHostPort } from '../addr.js';
import { expandBindings, mappingToObject, mappingsFromObjects } from '../config/index.js';
import { PortferryError, errnoCode, isPortferryError, type ErrorCode } from '../errors.js';
import type { Entry, Forwarder } from '../forwarder/forwarder.js';
import type { Logger } from '../log.js';
import { PROTOS, entryToPortStatus, portSpecToObject } from './rootlesskit.js';

export const MAX_BODY_BYTES = 1024 * 1024;

export interface ApiServerOptions {
  readonly socketPath: string;
  readonly forwarder: Forwarder;
  readonly logger: Logger;
  /** `run --netns`: the child namespace of the rootlesskit routes. */
  readonly childNetns: string | null;
  readonly version: string;
  readonly stateFile: string | null;
}

export interface ApiServer {
  readonly socketPath: string;
  close(): Promise<void>;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  PF_API_NOT_FOUND: 404,
  PF_CONFLICT: 409,
  PF_BIND_ADDRINUSE: 409,
  PF_SHUTTING_DOWN: 503,
  PF_WORKER: 500,
  PF_NETNS_HELPER: 500,
  PF_STATE_WRITE: 507,
};

function statusOf(err: PortferryError): number {
  const own = STATUS[err.code];
  if (own !== undefined) return own;
  if (err.code === 'PF_CONFIG_INVALID' && err.problems.some((p) => p.code === 'PF_CONFLICT')) return 409;
  return 400;
}

class HttpError extends PortferryError {}

function requestError(message: string, code: ErrorCode = 'PF_API_REQUEST'): HttpError {
  return new HttpError(code, message);
}

function status(e: Entry): Record<string, unknown> {
  return {
    id: e.id,
    name: e.mapping.name,
    owner: e.owner,
    origin: e.origin,
    mapping: mappingToObject(e.mapping),
    listeners: expandBindings(e.mapping).map((b) => ({ protocol: e.mapping.protocol, host: formatHostPort(b.host.ip, b.host.port), container: formatHostPort(b.container.ip, b.container.port) })),
  };
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY_BYTES) return reject(requestError(`the request body has ${declared} bytes; at most ${MAX_BODY_BYTES} are accepted`));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(requestError(`the request body is over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('error', reject);
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve(undefined);
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(requestError(`the request body is not JSON: ${(err as Error).message}`));
      }
    });
  });
}

function mappingsOf(body: unknown, place: string): { mappings: unknown; owner: string | null } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw requestError(`${place}: the body must be a JSON object {"owner"?: string, "mappings": [...]}`);
  const b = body as Record<string, unknown>;
  const extra = Object.keys(b).filter((k) => k !== 'owner' && k !== 'mappings');
  if (extra.length > 0) throw requestError(`${place}: unknown key${extra.length > 1 ? 's' : ''} ${extra.map((k) => `"${k}"`).join(', ')}; allowed: owner, mappings`);
  if (b['owner'] !== undefined && (typeof b['owner'] !== 'string' || b['owner'] === '' || b['owner'].length > 512)) throw requestError(`${place}: owner must be a non-empty string of at most 512 characters`);
  if (!Array.isArray(b['mappings']) || b['mappings'].length === 0) throw requestError(`${place}: "mappings" must be a non-empty list of mapping objects (the YAML schema)`);
  return { mappings: b['mappings'], owner: (b['owner'] as string | undefined) ?? null };
}

function idOf(text: string): number {
  const id = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(id) || id < 1) throw requestError(`"${text}" is not a mapping id (a whole number from 1)`, 'PF_API_NOT_FOUND');
  return id;
}

async function route(req: http.IncomingMessage, url: URL, o: ApiServerOptions): Promise<[number, unknown]> {
  const f = o.forwarder;
  const method = req.method ?? 'GET';
  const p = url.pathname.replace(/\/+$/, '');
  const seg = p.split('/').slice(1);
  const is = (m: string, ...parts: string[]): boolean => method === m && seg.length === parts.length && parts.every((x, i) => x === '*' || x === seg[i]);

  if (is('GET', 'v1', 'info')) {
    const pid = /^\/proc\/(\d+)\/ns\/net$/.exec(o.childNetns ?? '')?.[1];
    return [200, {
      apiVersion: '1.1.1',
      version: o.version,
      stateDir: o.stateFile === null ? '' : path.dirname(o.stateFile),
      childPID: pid === undefined ? 0 : Number(pid),
      portDriver: { driver: 'portferry', protos: [...PROTOS], disallowLoopbackChildIP: false },
      portferry: { version: o.version, pid: process.pid, mappings: f.list().length, childNetns: o.childNetns },
    }];
  }
  if (is('GET', 'v1', 'ports')) return [200, f.list().flatMap(entryToPortStatus)];
  if (is('POST', 'v1', 'ports')) {
    const obj = portSpecToObject(await readBody(req), o.childNetns);
    const [entry] = await f.add(mappingsFromObjects([obj], 'POST /v1/ports'), { origin: 'api' });
    return [201, (entryToPortStatus(entry as Entry)[0] ?? {})];
  }
  if (is('DELETE', 'v1', 'ports', '*')) {
    await f.remove(idOf(seg[2] ?? ''));
    return [200, {}];
  }
  if (is('GET', 'v1', 'mappings')) {
    const owner = url.searchParams.get('owner');
    return [200, { mappings: f.list(owner ?? undefined).map(status) }];
  }
  if (is('POST', 'v1', 'mappings')) {
    const { mappings, owner } = mappingsOf(await readBody(req), 'POST /v1/mappings');
    const added = await f.add(mappingsFromObjects(mappings, 'POST /v1/mappings'), { owner, origin: 'api' });
    return [201, { mappings: added.map(status) }];
  }
  if (is('GET', 'v1', 'mappings', '*')) {
    const e = f.get(idOf(seg[2] ?? ''));
    if (e === undefined) throw requestError(`no mapping has id ${seg[2] ?? ''}`, 'PF_API_NOT_FOUND');
    return [200, status(e)];
  }
  if (is('DELETE', 'v1', 'mappings', '*')) return [200, { removed: await f.remove(idOf(seg[2] ?? '')) }];
  if (is('DELETE', 'v1', 'mappings')) {
    const owner = url.searchParams.get('owner');
    if (owner === null || owner === '') throw requestError('DELETE /v1/mappings needs ?owner=OWNER (or DELETE /v1/mappings/ID)');
    return [200, { removed: await f.removeOwner(owner) }];
  }
  if (is('GET', 'v1', 'owners')) {
    const owners = new Map<string, number[]>();
    for (const e of f.list()) if (e.owner !== null) owners.set(e.owner, [...(owners.get(e.owner) ?? []), e.id]);
    return [200, { owners: [...owners].map(([owner, ids]) => ({ owner, ids })) }];
  }
  if (is('PUT', 'v1', 'owners', '*')) {
    const owner = decodeURIComponent(seg[2] ?? '');
    const body = await readBody(req);
    const { mappings } = mappingsOf(typeof body === 'object' && body !== null && !Array.isArray(body) ? { ...body, owner } : body, `PUT /v1/owners/${owner}`);
    const entries = await f.replaceOwner(owner, mappingsFromObjects(mappings, `PUT /v1/owners/${owner}`));
    return [200, { mappings: entries.map(status) }];
  }
  if (is('DELETE', 'v1', 'owners', '*')) return [200, { removed: await f.removeOwner(decodeURIComponent(seg[2] ?? '')) }];
  if (is('GET', 'v1', 'stats')) {
    const rows = await f.stats();
    return [200, {
      mappings: f.list().map((e) => ({
        id: e.id,
        name: e.mapping.name,
        owner: e.owner,
        protocol: e.mapping.protocol,
        listeners: rows.filter((r) => r.id === e.id).map((r) => ({ host: formatHostPort(r.host.ip, r.host.port), container: formatHostPort(r.container.ip, r.container.port), stats: r.stats })),
      })),
    }];
  }
  const known = ['/v1/info', '/v1/ports', '/v1/mappings', '/v1/owners', '/v1/stats'].some((k) => p === k || p.startsWith(`${k}/`));
  throw new HttpError('PF_API_REQUEST', known ? `${method} is not allowed on ${p}` : `no route ${method} ${p}; see docs/api.md`, { details: { status: known ? 405 : 404 } });
}

/** Prepares the socket's directory (0700) and removes a stale socket; refuses a live one. */
async function prepareSocket(socketPath: string): Promise<void> {
  if (Buffer.byteLength(socketPath) > 107) throw new PortferryError('PF_API_SOCKET', `the API socket path ${socketPath} is longer than the 107 bytes a unix socket path may have`, { hint: 'Choose a shorter --api path.' });
  const dir = path.dirname(socketPath);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = fs.statSync(dir);
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      throw new PortferryError('PF_API_SOCKET', `the API socket's directory ${dir} is writable by other users (mode ${(st.mode & 0o7777).toString(8)})`, { hint: `Use a directory only you can write to, e.g. \`chmod 700 ${dir}\`, or another --api path.` });
    }
  } catch (err) {
    if (isPortferryError(err)) throw err;
    throw new PortferryError('PF_API_SOCKET', `cannot create the API socket's directory ${dir}: ${errnoCode(err) ?? String(err)}`, { cause: err });
  }
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new PortferryError('PF_API_SOCKET', `${socketPath} exists and is not a socket; portferry will not replace it`, { hint: 'Remove it yourself if it is not needed, or choose another --api path.' });
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new PortferryError('PF_API_SOCKET', `another process already serves the API socket ${socketPath}`, { hint: 'Stop that portferry first (GET /v1/info on the socket shows its pid), or give this one another --api path.' });
  fs.unlinkSync(socketPath);
}

export async function startApiServer(o: ApiServerOptions): Promise<ApiServer> {
  await prepareSocket(o.socketPath);
  const server = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000 }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://portferry');
    route(req, url, o).then(
      ([code, body]) => send(res, code, body),
      (err: unknown) => {
        const e = isPortferryError(err) ? err : new PortferryError('PF_WORKER', `internal error: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        const code = typeof e.details['status'] === 'number' ? e.details['status'] : statusOf(e);
        if (code >= 500) o.logger.error({ err: e.toJSON(), method: req.method, url: req.url }, 'API request failed');
        else o.logger.debug({ code: e.code, method: req.method, url: req.url }, 'API request refused');
        // `message` is the whole human text (rootlessctl prints only it); `summary` the one line.
        send(res, code, { ...e.toJSON(), summary: e.message, message: e.format() });
        if (!req.complete) req.resume();
      },
    );
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new PortferryError('PF_API_SOCKET', `cannot listen on the API socket ${o.socketPath}: ${errnoCode(err) ?? err.message}`, { cause: err })));
    server.listen(o.socketPath, () => resolve());
  });
  fs.chmodSync(o.socketPath, 0o600);
  return {
    socketPath: o.socketPath,
    async close(): Promise<void> {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      try {
        fs.unlinkSync(o.socketPath);
      } catch {
        // already gone
      }
    },
  };
}

function send(res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
