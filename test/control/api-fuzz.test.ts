// Issue 20, bug 1 and its audit: thousands of generated requests, written as raw bytes on the
// unix socket (so malformed request lines, headers and framing reach the server, which an HTTP
// client would refuse to send), at a running `portferry run --api S -p … --metrics …`. No
// request may end the process or answer 5xx; every refusal the API makes carries a catalogue
// code; afterwards the daemon still forwards, answers GET /v1/info and still has its mapping.
// A smaller share goes to the /metrics endpoint. Seeded: a failure prints the seed and the
// requests that failed (PF_FUZZ_SEED=N reruns one sequence).
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ApiClient } from '../../src/control/client.js';
import { CATALOGUE } from '../../src/errors.js';
import { echoRoundTrip, echoServer, freePort, runCli } from '../helpers/net.js';

const API_REQUESTS = 3000;
const METRICS_REQUESTS = 300;
const CONCURRENCY = 16;
/** The whole fuzz stops sending after this long (the count sent is asserted and printed). */
const BUDGET_MS = 150_000;

/** mulberry32: a small seeded generator, so a failing sequence can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const seed = Number(process.env['PF_FUZZ_SEED'] ?? Math.floor(Math.random() * 2 ** 31));
const rnd = prng(seed);
const int = (n: number): number => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
const chance = (p: number): boolean => rnd() < p;

const METHODS = ['GET', 'GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'M-SEARCH', 'PROPFIND', 'SOURCE', 'get', 'Get', '', 'G ET', 'GE\x00T', 'GÉT', 'X'.repeat(300)];
const PATHS = [
  '/', '//', '///', '////v1/info', '/v1', '/v1/', '/v1/info', '/v1/info/', '/v1//info', '/v1/info//', '/v1/ports', '/v1/ports/', '/v1/ports/999999', '/v1/ports/abc',
  '/v1/mappings', '/v1/mappings/', '/v1/mappings?owner=', '/v1/mappings?owner=%zz', '/v1/mappings?owner=%', '/v1/mappings?owner=a&owner=b', '/v1/mappings/0',
  '/v1/mappings/999999999999999999999', '/v1/mappings/-3', '/v1/mappings/1e3', '/v1/mappings/0x10', '/v1/mappings/%39', '/v1/owners', '/v1/owners/', '/v1/owners/%', '/v1/owners/%zz',
  '/v1/owners/%C0%AF', '/v1/owners/%E2%82', '/v1/owners/%ED%A0%80', '/v1/owners/ctr%00a', '/v1/owners/a%2Fb', `/v1/owners/${'x'.repeat(600)}`, '/v1/owners/ü', '/v1/stats', '/v1/stats?x',
  '/v1/../v1/info', '/v1/%2e%2e/info', '/v1/./info', '/%', '/%zz', '/%%', '*', 'http://x/v1/info', 'http://[::1/v1/info', 'http:///', 'https://a:b@c:99999/', 'http://x:99999999/v1/info',
  'v1/info', '?', '#', '/v1/info#frag', '/v1/info?a=%', '/\\\\x', '/\\v1\\info', '/ü/ñ', '/\u2028', '/😀', '/\uFFFD', '/%F0%9F%98', `/${'a/'.repeat(3000)}`, `/v1/info?${'q'.repeat(20_000)}`,
  '/v1/info ', ' /v1/info', '/v1/in fo', '/v1/info\t', '/v1/\x01info', '/v1/\x7finfo', '\x00', '/proc/self/environ', '/../../../../etc/passwd',
];
const CHARS = ['%', '%%', '%z', '%0', '%00', '%2F', '/', '//', '?', '#', '\\', '.', '..', ' ', '\t', '\r', '\n', '\x00', '\x01', '\x1f', '\x7f', 'é', 'ü', '\u2028', '😀', '\uFFFF', '@', ':', '[', ']', '"', "'", '<', '>', '{', '}', '|', '^', '`', '&', '=', '+', ';', ','];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/0.9', 'HTTP/2.0', 'HTTP/1.2', 'HTTP/1.1x', 'http/1.1', 'HTTP/11', 'HTTP/', '', 'HTTP/1.1 extra'];
const JUNK_BODIES = [
  '', '{', '}', '[]', '[', 'null', 'true', '0', '-0', '1e400', '"x"', '{}', '{"mappings":[]}', '{"mappings":null}', '{"mappings":[1,2]}', '{"mappings":[null]}', '{"mappings":[[]]}',
  '{"mappings":[{"hostPort":"a"}]}', '{"mappings":[{"hostPort":-1,"containerPort":70000}]}', '{"owner":5,"mappings":[{}]}', '{"owner":"","mappings":[{}]}', '{"proto":"sctp"}', '{"proto":"tcp","parentPort":"x"}',
  '{"proto":"tcp","parentPort":0,"childPort":0}', '{"__proto__":{"mappings":[{}]}}', '{"mappings":[{"__proto__":{"hostPort":1}}]}', '{"constructor":{"prototype":{"x":1}}}', '{"mappings":{"length":1,"0":{}}}',
  '{"a":1,"a":2}', '{"mappings":[{"name":"\\ud800"}]}', '\uFEFF{}', '{"x":"\u0000"}', `${'['.repeat(4000)}${']'.repeat(4000)}`, `{"mappings":[${'{},'.repeat(5000)}{}]}`, `{"owner":"${'o'.repeat(10_000)}","mappings":[{}]}`,
];
const HEADER_LINES = [
  'Host: x', 'Host:', 'Host: a\r\nHost: b', 'Content-Type: application/json', 'Content-Type: text/plain; charset=utf-16', 'Content-Type: ' + 'x'.repeat(200), 'Accept: */*', 'Connection: keep-alive',
  'Connection: Upgrade\r\nUpgrade: websocket', 'Upgrade: h2c', 'Expect: 100-continue', 'Expect: bogus', 'Transfer-Encoding: gzip', 'Transfer-Encoding: chunked, chunked', 'Transfer-Encoding: identity',
  'Content-Length: -1', 'Content-Length: abc', 'Content-Length: 1, 2', 'Content-Length: 99999999999999999999', 'Content-Length: 0\r\nContent-Length: 5', 'X-No-Colon', ' Leading-Space: x', 'Bad Name: x', 'X-Fold: a\r\n b',
  'X-Nul: a\x00b', 'X-Ctl: \x01\x7f', 'X-Utf8: ünï', `X-Long: ${'l'.repeat(20_000)}`, 'X-Empty:', ':', 'Cookie: ' + 'c=1; '.repeat(200), 'Authorization: Basic ' + 'A'.repeat(100), 'TE: trailers',
  'Trailer: X-T', 'Proxy-Connection: keep-alive', 'X-Forwarded-For: 1.2.3.4', 'Content-Encoding: gzip', 'Range: bytes=0-1',
];

/** Characters a strict HTTP parser lets through in a request target: a mutation with these reaches the routes. */
const URL_CHARS = ['%', '%%', '%z', '%0', '%00', '%2F', '%2e', '/', '//', '?', '#', '.', '..', '@', ':', '[', ']', '&', '=', '+', ';', ',', '~', '!', '$', "'", '(', ')', '*', 'a', '0', '9'];
const WELL_FORMED_METHODS = ['GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'];
/** The header lines that are valid HTTP (what survives the parser). */
const GOOD_HEADERS = ['Accept: */*', 'Content-Type: application/json', 'Content-Type: text/plain; charset=utf-16', 'Connection: keep-alive', 'Connection: Upgrade\r\nUpgrade: websocket', 'Upgrade: h2c', 'Expect: 100-continue', 'Expect: bogus', 'X-Utf8: ünï', 'TE: trailers', 'Cookie: a=b', 'Range: bytes=0-1', 'Content-Encoding: gzip'];

function mutateWith(s: string, chars: readonly string[]): string {
  let out = s;
  const edits = 1 + int(3);
  for (let i = 0; i < edits; i++) {
    const at = int(out.length + 1);
    switch (int(4)) {
      case 0: out = out.slice(0, at) + pick(chars) + out.slice(at); break;
      case 1: out = out.slice(0, at) + out.slice(at + 1 + int(4)); break;
      case 2: out = out.slice(0, at) + pick(chars).repeat(1 + int(50)) + out.slice(at); break;
      default: out = out.slice(0, at) + (chars === CHARS ? String.fromCharCode(int(256)) : pick(chars)) + out.slice(at); break;
    }
  }
  return out;
}

const mutate = (s: string): string => mutateWith(s, CHARS);

function target(): string {
  const base = pick(PATHS);
  if (chance(0.03)) return `/${'o'.repeat(8_000 + int(100_000))}`; // overlong: over the header limit
  return chance(0.5) ? mutate(base) : base;
}

/** A DELETE never names a real id: the fuzz must not remove the mapping it checks afterwards. */
function safe(method: string, path: string): string {
  return method === 'DELETE' && /mappings|ports/i.test(path) ? path.replace(/\d+/g, '999999') : path;
}

function body(): Buffer {
  if (chance(0.15)) return Buffer.from(Array.from({ length: int(3000) }, () => int(256)));
  const text = pick(JUNK_BODIES);
  return Buffer.from(chance(0.3) ? mutate(text) : text, chance(0.05) ? 'utf16le' : 'utf8');
}

function chunked(b: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0; at < b.length; ) {
    const n = Math.min(b.length - at, 1 + int(700));
    const size = chance(0.08) ? pick(['zz', '-1', 'ffffffffffffffffff', '', ' 5', '5;ext=' + 'e'.repeat(3000), '0x5']) : n.toString(16);
    parts.push(Buffer.from(`${size}\r\n`), b.subarray(at, at + n), Buffer.from(chance(0.05) ? '\n' : '\r\n'));
    at += n;
  }
  parts.push(Buffer.from(chance(0.1) ? '0\r\nX-Trailer: t\r\n\r\n' : chance(0.05) ? '0\r\n' : '0\r\n\r\n'));
  return Buffer.concat(parts);
}

/** A request the HTTP parser accepts, so that it reaches the routes: odd targets and bodies, valid framing. */
function wellFormed(): { bytes: Buffer; head: boolean } {
  const method = pick(WELL_FORMED_METHODS);
  const base = pick(PATHS.filter((p) => /^[!-~]+$/.test(p)));
  const path = safe(method, chance(0.6) ? mutateWith(base, URL_CHARS) : base);
  const headers = ['Host: portferry', ...Array.from({ length: int(3) }, () => pick(GOOD_HEADERS))];
  const b = chance(0.7) ? Buffer.from(chance(0.3) ? mutateWith(pick(JUNK_BODIES), URL_CHARS) : pick(JUNK_BODIES)) : Buffer.alloc(0);
  let payload = b;
  if (chance(0.7)) headers.push(`Content-Length: ${b.length}`);
  else {
    headers.push('Transfer-Encoding: chunked');
    payload = Buffer.concat([Buffer.from(b.length > 0 ? `${b.length.toString(16)}\r\n` : ''), b, Buffer.from(b.length > 0 ? '\r\n0\r\n\r\n' : '0\r\n\r\n')]);
  }
  if (chance(0.5)) headers.push('Connection: close');
  return { bytes: Buffer.concat([Buffer.from(`${method} ${path} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n`, 'utf8'), payload]), head: method === 'HEAD' };
}

/** One request: a request line, headers and a body, each possibly broken. */
function request(): { bytes: Buffer; head: boolean } {
  if (chance(0.4)) return wellFormed();
  const method = chance(0.1) ? mutate(pick(METHODS)) : pick(METHODS);
  const line = `${method} ${safe(method, target())} ${chance(0.7) ? 'HTTP/1.1' : pick(VERSIONS)}`;
  const headers: string[] = chance(0.9) ? ['Host: portferry'] : [];
  for (let i = int(4); i > 0; i--) headers.push(chance(0.15) ? mutate(pick(HEADER_LINES)) : pick(HEADER_LINES));
  if (chance(0.03)) for (let i = 0; i < 3000; i++) headers.push(`X-H${i}: v`);
  const b = chance(0.6) ? body() : Buffer.alloc(0);
  const framing = int(6);
  let payload = b;
  if (framing === 0 || framing === 1) headers.push(`Content-Length: ${b.length}`);
  else if (framing === 2) headers.push(`Content-Length: ${Math.max(0, b.length - 1 - int(20))}`); // short: the rest is the next "request"
  else if (framing === 3) headers.push(`Content-Length: ${b.length + 1 + int(1000)}`); // long: the body never completes
  else if (framing === 4) {
    headers.push('Transfer-Encoding: chunked');
    payload = chunked(b);
  }
  if (chance(0.3)) headers.push('Connection: close');
  const eol = chance(0.05) ? '\n' : '\r\n';
  // Non-ASCII as UTF-8 (what a client would send) or one byte per character (any byte at all).
  return { bytes: Buffer.concat([Buffer.from(`${line}${eol}${headers.join(eol)}${eol}${eol}`, chance(0.5) ? 'utf8' : 'latin1'), payload]), head: method === 'HEAD' };
}

/** What one connection carries: garbage, one request, or several pipelined. */
function exchangeBytes(): { bytes: Buffer; head: boolean } {
  const kind = rnd();
  if (kind < 0.08) return { bytes: Buffer.from(Array.from({ length: int(4000) }, () => int(256))), head: false };
  if (kind < 0.12) return { bytes: Buffer.concat([Buffer.from('GET /v1/info HTTP/1.1\r\n'), Buffer.from(Array.from({ length: int(500) }, () => int(256)))]), head: false };
  if (kind < 0.25) {
    const reqs = Array.from({ length: 2 + int(4) }, request);
    return { bytes: Buffer.concat(reqs.map((r) => r.bytes)), head: reqs.some((r) => r.head) };
  }
  return request();
}

interface Response {
  readonly status: number;
  readonly body: string;
}

/**
 * The responses in what came back, in order: framed by Content-Length, chunked, or by the close.
 * 1xx, 204 and 304 have no body. An exchange with a HEAD request stops after its first answer:
 * whether that one has a body (a refusal before the method was known) or not (HEAD) is not
 * visible from the bytes.
 */
function responses(data: Buffer, head: boolean): Response[] {
  const out: Response[] = [];
  let at = 0;
  while (at < data.length) {
    const text = data.subarray(at).toString('latin1');
    const m = /^HTTP\/1\.1 (\d{3}) [^\r\n]*\r\n/.exec(text);
    const end = text.indexOf('\r\n\r\n');
    if (m === null || end < 0) {
      out.push({ status: -1, body: text.slice(0, 200) }); // not an HTTP response: a fault
      break;
    }
    const status = Number(m[1]);
    const headers = text.slice(0, end + 2);
    const rest = data.subarray(at + end + 4);
    if (status < 200 || status === 204 || status === 304) {
      out.push({ status, body: '' });
      at += end + 4;
      continue;
    }
    if (head) {
      out.push({ status, body: '' });
      break;
    }
    const length = /\r\ncontent-length: *(\d+)\r\n/i.exec(headers)?.[1];
    if (length !== undefined) {
      out.push({ status, body: rest.subarray(0, Number(length)).toString('utf8') });
      at += end + 4 + Number(length);
    } else if (/\r\ntransfer-encoding: *chunked\r\n/i.test(headers)) {
      const parts: Buffer[] = [];
      let used = 0;
      for (;;) {
        const line = rest.subarray(used).toString('latin1');
        const size = /^([0-9a-f]+)\r\n/i.exec(line);
        if (size === null) break;
        const n = parseInt(size[1] as string, 16);
        used += size[0].length;
        parts.push(rest.subarray(used, used + n));
        used += n + 2;
        if (n === 0) break;
      }
      out.push({ status, body: Buffer.concat(parts).toString('utf8') });
      at += end + 4 + used;
    } else {
      out.push({ status, body: rest.toString('utf8') }); // delimited by the close
      break;
    }
  }
  return out;
}

/** Writes the bytes (sometimes in pieces), then reads until the server closes or falls quiet; half-closes, then gives up. Bounded. */
function exchange(connect: () => net.Socket, bytes: Buffer): Promise<{ data: Buffer; connected: boolean }> {
  return new Promise((resolve) => {
    const c = connect();
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout;
    let ended = false;
    let connected = false;
    const finish = (): void => {
      clearTimeout(timer);
      c.destroy();
      resolve({ data: Buffer.concat(chunks), connected });
    };
    const quiet = (ms: number): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (ended) return finish();
        ended = true;
        c.end();
        quiet(300);
      }, ms);
    };
    c.on('data', (d: Buffer) => {
      chunks.push(d);
      quiet(100);
    });
    c.on('error', () => {});
    c.on('close', finish);
    c.once('connect', () => {
      connected = true;
      if (chance(0.2)) {
        // Piecewise: a request cut at random points still parses (or fails) the same way.
        let at = 0;
        const next = (): void => {
          if (c.destroyed) return;
          const n = 1 + int(Math.max(1, bytes.length / 3));
          c.write(bytes.subarray(at, at + n));
          at += n;
          if (at < bytes.length) setImmediate(next);
        };
        next();
      } else c.write(bytes);
    });
    quiet(400);
  });
}

interface Finding {
  readonly request: string;
  readonly problem: string;
}

async function fuzz(count: number, connect: () => net.Socket, coded: boolean, deadline: number): Promise<{ sent: number; connected: number; answered: number; statuses: Map<number, number>; findings: Finding[] }> {
  const statuses = new Map<number, number>();
  const findings: Finding[] = [];
  let sent = 0;
  let connected = 0;
  let answered = 0;
  const worker = async (): Promise<void> => {
    while (sent < count && Date.now() < deadline) {
      sent++;
      const { bytes, head } = exchangeBytes();
      const shown = JSON.stringify(bytes.subarray(0, 300).toString('latin1'));
      const got = await exchange(connect, bytes);
      if (got.connected) connected++;
      for (const r of responses(got.data, head)) {
        answered++;
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status < 100 || r.status >= 500) findings.push({ request: shown, problem: `answered ${r.status}: ${r.body.slice(0, 300)}` });
        else if (coded && r.status >= 400 && !head) {
          let code: unknown;
          try {
            code = (JSON.parse(r.body) as { code?: unknown }).code;
          } catch {
            code = undefined;
          }
          if (typeof code !== 'string' || !(code in CATALOGUE)) findings.push({ request: shown, problem: `a ${r.status} without a catalogue code: ${r.body.slice(0, 300)}` });
        }
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return { sent, connected, answered, statuses, findings };
}

function httpGet(port: number, urlPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: urlPath, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    }).on('error', reject);
  });
}

t.test(`the API and /metrics survive ${API_REQUESTS} + ${METRICS_REQUESTS} generated requests (seed ${seed})`, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-fuzz-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'api.sock');
  const echo = await echoServer(t.teardown.bind(t));
  const [port, mport] = [await freePort(), await freePort()];
  const cli = runCli(t.teardown.bind(t), ['run', '--api', sock, '--metrics', `127.0.0.1:${mport}`, '-p', `127.0.0.1:${port}:127.0.0.1:${echo.port}`]);
  await cli.ready;
  const deadline = Date.now() + BUDGET_MS;

  const api = await fuzz(API_REQUESTS, () => net.connect(sock), true, deadline);
  t.comment(`API: ${api.connected} of ${api.sent} connections made, ${api.answered} answers, statuses ${JSON.stringify([...api.statuses].sort((a, b) => a[0] - b[0]))}`);
  t.ok(api.connected >= 1000, `at least 1000 generated connections reached the API (${api.connected} of ${api.sent})`);
  t.same(api.findings.slice(0, 10), [], `no 5xx, no answer that is not HTTP, every API refusal coded (seed ${seed}; ${api.findings.length} findings)`);
  t.equal(cli.child.exitCode, null, 'the daemon is alive after the API fuzz');

  const metrics = await fuzz(METRICS_REQUESTS, () => net.connect(mport, '127.0.0.1'), false, deadline + 30_000);
  t.comment(`/metrics: ${metrics.connected} of ${metrics.sent} connections made, statuses ${JSON.stringify([...metrics.statuses].sort((a, b) => a[0] - b[0]))}`);
  t.same(metrics.findings.slice(0, 10), [], `/metrics: no 5xx and only HTTP answers (seed ${seed})`);

  t.equal(cli.child.exitCode, null, 'the daemon is still alive');
  const client = new ApiClient(sock);
  t.match(await client.info(), { apiVersion: '1.1.1' }, 'GET /v1/info answers');
  t.same((await client.listMappings()).map((m) => m.id), [1], 'the -p mapping is still there, and nothing was added');
  const payload = Buffer.from(`after ${api.sent} requests`);
  t.same((await echoRoundTrip(port, payload)).received, payload, 'the mapping still forwards');
  t.equal(await httpGet(mport, '/metrics'), 200, '/metrics still answers');
  const errors = cli
    .stderr()
    .split('\n')
    .filter((l) => {
      try {
        return ((JSON.parse(l) as { level?: number }).level ?? 0) >= 50;
      } catch {
        return false;
      }
    });
  t.same(errors.slice(0, 5), [], 'nothing was logged at error level');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0, 'and it stops cleanly');
});
