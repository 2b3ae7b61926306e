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
import { checkSocketDir } from './client.js';
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

/** For a message: a request's text, quoted, control characters escaped, cut to 200 characters. */
function quote(text: string): string {
  return JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text);
}

/**
 * The URL of a request target. An origin-form target (`/v1/info?x`) is parsed as a path of a
 * fixed origin, never relative to one: `new URL('//', base)` reads `//` as a host and throws.
 * Anything unparsable is a coded 400, never an exception out of the request handler.
 */
function targetOf(raw: string | undefined): URL {
  const text = raw ?? '/';
  try {
    return text.startsWith('/') ? new URL(`http://portferry${text}`) : new URL(text);
  } catch {
    throw requestError(`the request target ${quote(text)} is not a path such as /v1/info`);
  }
}

/** A path segment, percent-decoded; a malformed escape (`%zz`, a cut UTF-8 sequence) is a coded 400. */
function segment(text: string | undefined, p: string): string {
  try {
    return decodeURIComponent(text ?? '');
  } catch {
    throw requestError(`${quote(text ?? '')} in ${quote(p)} is not valid percent-encoding (write % as %25, and encode UTF-8 byte by byte)`);
  }
}

const tooLarge = (message: string): HttpError => new HttpError('PF_API_REQUEST', message, { details: { status: 413 } });

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
    if (declared > MAX_BODY_BYTES) return reject(tooLarge(`the request body has ${declared} bytes; at most ${MAX_BODY_BYTES} are accepted`));
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        // Answer 413 rather than reset: the rest is read and dropped while the answer goes out,
        // and the connection closes after it (send() sees the body was not read to its end).
        req.off('data', onData);
        chunks.length = 0;
        reject(tooLarge(`the request body is over ${MAX_BODY_BYTES} bytes (a chunked body is counted as it arrives)`));
        return;
      }
      chunks.push(c);
    };
    req.on('data', onData);
    // The client closed before its body was whole: its fault, not an internal one.
    req.on('error', (err) => reject(requestError(`the request body did not arrive whole (${errnoCode(err) ?? err.message}): the client closed the connection before sending all of it`)));
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

async function route(req: http.IncomingMessage, o: ApiServerOptions): Promise<[number, unknown]> {
  // HTTP/1.1 requires Host (RFC 9112 §3.2); on a unix socket its value means nothing.
  if (req.headers.host === undefined && req.httpVersion === '1.1') throw requestError('the request has no Host header (HTTP/1.1 requires one; any value will do, e.g. `Host: portferry`)');
  const url = targetOf(req.url);
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
    const owner = segment(seg[2], p);
    const body = await readBody(req);
    const { mappings } = mappingsOf(typeof body === 'object' && body !== null && !Array.isArray(body) ? { ...body, owner } : body, `PUT /v1/owners/${owner}`);
    const entries = await f.replaceOwner(owner, mappingsFromObjects(mappings, `PUT /v1/owners/${owner}`));
    return [200, { mappings: entries.map(status) }];
  }
  if (is('DELETE', 'v1', 'owners', '*')) return [200, { removed: await f.removeOwner(segment(seg[2], p)) }];
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
  throw new HttpError('PF_API_REQUEST', known ? `${method} is not allowed on ${p}` : `no route ${method} ${quote(url.pathname)}; see docs/api.md`, { details: { status: known ? 405 : 404 } });
}

/** The longest path a unix socket can be bound to (sun_path, 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * Prepares the socket's directory (created 0700; an existing one must be ours or root's and
 * writable by nobody else) and removes a stale socket; refuses a live one.
 */
async function prepareSocket(socketPath: string): Promise<void> {
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) throw new PortferryError('PF_API_SOCKET', `the API socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket path may have`, { hint: 'Choose a shorter --api path.' });
  const dir = path.dirname(socketPath);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new PortferryError('PF_API_SOCKET', `cannot create the API socket's directory ${dir}: ${errnoCode(err) ?? String(err)}`, { cause: err });
  }
  checkSocketDir(dir);
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
  try {
    fs.unlinkSync(socketPath);
  } catch (err) {
    throw new PortferryError('PF_API_SOCKET', `cannot remove the stale API socket ${socketPath}: ${errnoCode(err) ?? String(err)}`, { cause: err, hint: 'Remove it yourself (as its owner or root), or choose another --api path.' });
  }
}

/**
 * Binds the server so that the socket is never connectable by anyone else, not even for a
 * moment. bind() creates the socket file with the process umask (0777 & ~umask) and listen()
 * makes it connectable before any chmod can run, so the socket is bound inside a fresh private
 * directory (mkdtemp: 0700, ours, next to the final path so a link stays on one file system),
 * made 0600 there and only then linked to its final name. A restrictive process.umask() around
 * listen() would do too, but the umask is process-wide (a worker thread creating a directory at
 * that moment would get it without search permission) and process.umask() throws in worker
 * threads. link() rather than rename() so that a socket another daemon put there meanwhile is
 * never replaced.
 */
async function listenPrivately(server: http.Server, socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath);
  let tmp: string;
  try {
    tmp = fs.mkdtempSync(path.join(dir, '.pf'));
  } catch (err) {
    throw new PortferryError('PF_API_SOCKET', `cannot create a private directory in ${dir} to bind the API socket in: ${errnoCode(err) ?? String(err)}`, { cause: err });
  }
  const bound = path.join(tmp, 's');
  try {
    if (Buffer.byteLength(bound) > MAX_SOCKET_PATH) throw new PortferryError('PF_API_SOCKET', `the API socket is first bound at ${bound}, which is longer than the ${MAX_SOCKET_PATH} bytes a unix socket path may have`, { hint: 'Choose a shorter --api path.' });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new PortferryError('PF_API_SOCKET', `cannot listen on the API socket ${socketPath}: ${errnoCode(err) ?? err.message}`, { cause: err })));
      server.listen(bound, () => resolve());
    });
    try {
      fs.chmodSync(bound, 0o600);
      fs.linkSync(bound, socketPath);
    } catch (err) {
      server.close();
      if (errnoCode(err) === 'EEXIST') throw new PortferryError('PF_API_SOCKET', `another process created ${socketPath} while this portferry was starting`, { cause: err, hint: 'Stop the other portferry, or give this one another --api path.' });
      throw new PortferryError('PF_API_SOCKET', `cannot put the API socket at ${socketPath}: ${errnoCode(err) ?? String(err)}`, { cause: err });
    }
  } finally {
    // The socket lives on under its final name; libuv's unlink of `bound` on close finds nothing.
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The status and coded body for a failed request. */
function failure(err: unknown, req: http.IncomingMessage, o: ApiServerOptions): [number, unknown] {
  const e = isPortferryError(err) ? err : new PortferryError('PF_WORKER', `internal error: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  const code = typeof e.details['status'] === 'number' ? e.details['status'] : statusOf(e);
  if (code >= 500) o.logger.error({ err: e.toJSON(), method: req.method, url: req.url }, 'API request failed');
  else o.logger.debug({ code: e.code, method: req.method, url: req.url }, 'API request refused');
  // `message` is the whole human text (rootlessctl prints only it); `summary` the one line.
  return [code, { ...e.toJSON(), summary: e.message, message: e.format() }];
}

async function handle(req: http.IncomingMessage, res: http.ServerResponse, o: ApiServerOptions): Promise<void> {
  let answer: [number, unknown];
  try {
    answer = await route(req, o);
  } catch (err) {
    answer = failure(err, req, o);
  }
  send(res, answer[0], answer[1], !req.complete);
  // A body not read to its end (refused early, or too large) is read and dropped, so that the
  // client, still writing, gets the answer rather than a reset.
  if (!req.complete) req.resume();
}

/** A raw HTTP/1.1 answer with a coded JSON body, for where there is no ServerResponse. */
function rawAnswer(status: number, reason: string, err: PortferryError): string {
  const text = JSON.stringify({ ...err.toJSON(), summary: err.message, message: err.format() });
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`;
}

/** Writes `answer` and closes the socket; a socket that cannot take it is just destroyed. */
function answerRaw(socket: net.Socket, answer: string): void {
  // While an earlier pipelined request on this socket still has its answer pending or under way,
  // a raw answer would come first or land in its middle and be taken as that request's answer.
  const pending = (socket as net.Socket & { _httpMessage?: unknown })._httpMessage;
  if (!socket.writable || (pending !== undefined && pending !== null)) return void socket.destroy();
  socket.end(answer);
  // Bounded: a client that never closes its side does not keep the descriptor.
  setTimeout(() => socket.destroy(), 1000).unref();
}

export async function startApiServer(o: ApiServerOptions): Promise<ApiServer> {
  await prepareSocket(o.socketPath);
  // requireHostHeader: false, so that route() refuses a missing Host with a code (Node's own
  // check answers 400 with an empty body).
  const server = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000, requireHostHeader: false }, (req, res) => {
    // Nothing a request carries may throw out of this callback: that would end the process and
    // every mapping with it (issue 20: `GET //` did). handle() answers every fault it can with a
    // coded status; anything left (a fault in answering itself) costs this connection only.
    handle(req, res, o).catch((err: unknown) => {
      try {
        o.logger.error({ err: err instanceof Error ? err.message : String(err), method: req.method, url: req.url }, 'API request failed while answering');
      } finally {
        res.destroy();
      }
    });
  });
  // What the HTTP parser refuses (a malformed request line or header, headers too large, a
  // timeout) gets the coded answer Node's own handler would give without a code.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return void socket.destroy();
    const [status, reason, what] =
      err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large', 'its headers are too large'] : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout', 'it did not arrive in time'] : [400, 'Bad Request', `it is not valid HTTP/1.1 (${err.code ?? err.message})`];
    answerRaw(socket, rawAnswer(status, reason, requestError(`the request was refused: ${what}`)));
  });
  // An Expect header other than 100-continue: Node would answer 417 with no body.
  server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    send(res, 417, failure(requestError(`the Expect header ${quote(String(req.headers.expect))} is not supported (only 100-continue is)`), req, o)[1], true);
    req.resume();
  });
  // CONNECT (a tunnel request) is not an API call; without this Node drops the connection unanswered.
  server.on('connect', (req: http.IncomingMessage, socket: net.Socket) => {
    socket.on('error', () => {});
    answerRaw(socket, rawAnswer(405, 'Method Not Allowed', requestError(`${req.method ?? 'CONNECT'} is not allowed; see docs/api.md`)));
  });
  await listenPrivately(server, o.socketPath);
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

function send(res: http.ServerResponse, code: number, body: unknown, close: boolean): void {
  // A client that went away gets nothing; writing to its response would be a late error.
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...(close ? { Connection: 'close' } : {}) });
  res.end(text);
}
