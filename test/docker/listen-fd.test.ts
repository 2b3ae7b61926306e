// portferry-docker-proxy under dockerd's contract, without dockerd (issue 11, acceptance 3 and 4):
// a fake dockerd (test/fixtures/docker/fake-dockerd.py) gives it a real status pipe on fd 3 and,
// for -use-listen-fd, a socket it made itself on fd 4; traffic goes over loopback only.
import t from 'tap';
import dgram from 'node:dgram';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildProxyHeader } from '../../src/proxy/proxy-header.js';
import { skipUnless } from '../helpers/env.js';
import { connect, echoRoundTrip, echoServer, freePort, randomPayload, readAll, sha256 } from '../helpers/net.js';
import { PYTHON, runProxy } from './harness.js';

const needs = skipUnless({ tools: [PYTHON] });

async function portIsFree(proto: 'tcp' | 'udp', ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (proto === 'tcp') {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen({ host: ip, port, exclusive: true }, () => s.close(() => resolve(true)));
    } else {
      const s = dgram.createSocket(net.isIPv6(ip) ? 'udp6' : 'udp4');
      s.once('error', () => resolve(false));
      s.bind({ address: ip, port, exclusive: true }, () => s.close(() => resolve(true)));
    }
  });
}

async function udpEcho(teardown: (fn: () => unknown) => void, ip = '127.0.0.1'): Promise<number> {
  const s = dgram.createSocket(net.isIPv6(ip) ? 'udp6' : 'udp4');
  s.on('message', (msg, rinfo) => s.send(Buffer.concat([Buffer.from('echo:'), msg]), rinfo.port, rinfo.address));
  await new Promise<void>((resolve) => s.bind(0, ip, () => resolve()));
  teardown(() => s.close());
  return s.address().port;
}

function udpAsk(ip: string, port: number, msg: string): Promise<{ reply: string; from: string }> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(net.isIPv6(ip) ? 'udp6' : 'udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error(`no UDP reply from ${ip}:${port} within 5 s`));
    }, 5000);
    s.once('message', (m, rinfo) => {
      clearTimeout(timer);
      s.close();
      resolve({ reply: m.toString(), from: `${rinfo.address}:${rinfo.port}` });
    });
    s.send(msg, port, ip);
  });
}

const argv = (proto: string, hostIP: string, hostPort: string | number, containerIP: string, containerPort: number, ...extra: string[]): string[] => [
  '-proto', proto, '-host-ip', hostIP, '-host-port', String(hostPort), '-container-ip', containerIP, '-container-port', String(containerPort), ...extra,
];

for (const ip of ['127.0.0.1', '::1']) {
  t.test(`-use-listen-fd tcp ${ip}: adopts fd 4, reports 0, relays, exits 0 on SIGINT, releases the port`, needs, async (t) => {
    const backend = await echoServer(t.teardown, ip);
    // The Go-flag spellings dockerd and people use, mixed.
    const proxy = await runProxy(t.teardown, ['--proto', 'tcp', `-host-ip=${ip}`, '-host-port', '{port}', '-container-ip', ip, `--container-port=${backend.port}`, '-use-listen-fd'], { listen: { proto: 'tcp', ip } });
    t.equal(proxy.status, '0\n', 'status pipe says 0\\n');
    const payload = randomPayload(1024 * 1024);
    const r = await echoRoundTrip(proxy.port, payload, ip);
    t.equal(sha256(r.received), sha256(payload), '1 MiB echoed through the adopted socket');
    t.equal(r.ended, 'eof');
    t.same(await proxy.stop(), { exit: 0, signal: null }, 'SIGINT → exit 0');
    t.ok(await portIsFree('tcp', ip, proxy.port), 'the port is free afterwards');
  });
}

t.test('-use-listen-fd udp: adopts the bound socket, replies reach the client from the published port', needs, async (t) => {
  const backend = await udpEcho(t.teardown);
  const proxy = await runProxy(t.teardown, argv('udp', '127.0.0.1', '{port}', '127.0.0.1', backend, '-use-listen-fd=true'), { listen: { proto: 'udp', ip: '127.0.0.1' } });
  t.equal(proxy.status, '0\n');
  t.same(await udpAsk('127.0.0.1', proxy.port, 'ping'), { reply: 'echo:ping', from: `127.0.0.1:${proxy.port}` });
  t.same(await udpAsk('127.0.0.1', proxy.port, 'again'), { reply: 'echo:again', from: `127.0.0.1:${proxy.port}` });
  t.same(await proxy.stop(), { exit: 0, signal: null });
  t.ok(await portIsFree('udp', '127.0.0.1', proxy.port));
});

t.test('SIGINT with a connection open: bounded drain, exit 0', needs, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pfdock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true, maxRetries: 5 }));
  writeFileSync(path.join(dir, 'c.yaml'), 'drainTimeout: 300ms\nlog: { file: ' + path.join(dir, 'log') + ', level: info }\n');
  const backend = await echoServer(t.teardown);
  const proxy = await runProxy(t.teardown, argv('tcp', '127.0.0.1', '{port}', '127.0.0.1', backend.port, '-use-listen-fd'), { listen: { proto: 'tcp', ip: '127.0.0.1' }, env: { PORTFERRY_DOCKER_CONFIG: path.join(dir, 'c.yaml') } });
  t.equal(proxy.status, '0\n');
  const s = await connect(proxy.port);
  const got = readAll(s);
  const echoed = new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
  s.write('held open');
  t.equal(await echoed, 'held open', 'the connection is relaying');
  t.same(await proxy.stop(), { exit: 0, signal: null }, 'exits although the client never closes');
  const r = await got;
  // Reaching here is the check: readAll resolves only once the drain has closed the connection.
  t.pass(`the held connection was closed by the drain (${r.ended})`);
  s.destroy();
});

t.test('without -use-listen-fd it binds the host address itself; a taken port → 1\\n PF_BIND_ADDRINUSE', needs, async (t) => {
  const backend = await echoServer(t.teardown);
  const port = await freePort();
  const ok = await runProxy(t.teardown, argv('tcp', '127.0.0.1', port, '127.0.0.1', backend.port));
  t.equal(ok.status, '0\n');
  const r = await echoRoundTrip(port, Buffer.from('hello'));
  t.equal(r.received.toString(), 'hello');
  const taken = await runProxy(t.teardown, argv('tcp', '127.0.0.1', port, '127.0.0.1', backend.port));
  t.match(taken.status, new RegExp(`^1\\nPF_BIND_ADDRINUSE: cannot bind tcp 127\\.0\\.0\\.1:${port} .*already in use \\(hint: `));
  t.not((await taken.exited()).exit, 0, 'non-zero exit');
  t.same(await ok.stop(), { exit: 0, signal: null });
});

t.test('-use-listen-fd problems → 1\\n PF_LISTEN_FD, non-zero exit', needs, async (t) => {
  const cases: { name: string; args: string[]; listen?: { proto: 'tcp' | 'udp'; ip: string }; want: RegExp }[] = [
    { name: 'no socket on fd 4', args: argv('tcp', '127.0.0.1', 1234, '127.0.0.1', 80, '-use-listen-fd'), want: /^1\nPF_LISTEN_FD: -use-listen-fd was given but fd 4 is (not open|a pipe, not a socket)/ },
    { name: 'a UDP socket for -proto tcp', args: argv('tcp', '127.0.0.1', '{port}', '127.0.0.1', 80, '-use-listen-fd'), listen: { proto: 'udp', ip: '127.0.0.1' }, want: /^1\nPF_LISTEN_FD: cannot use the tcp socket on fd 4/ },
    { name: 'a TCP socket for -proto udp', args: argv('udp', '127.0.0.1', '{port}', '127.0.0.1', 80, '-use-listen-fd'), listen: { proto: 'tcp', ip: '127.0.0.1' }, want: /^1\nPF_LISTEN_FD: cannot use the udp socket on fd 4/ },
    { name: 'a socket on another port', args: argv('tcp', '127.0.0.1', 1, '127.0.0.1', 80, '-use-listen-fd'), listen: { proto: 'tcp', ip: '127.0.0.1' }, want: /^1\nPF_LISTEN_FD: the socket on fd 4 is bound to 127\.0\.0\.1:\d+, not to 127\.0\.0\.1:1/ },
  ];
  for (const c of cases) {
    const p = await runProxy(t.teardown, c.args, c.listen === undefined ? {} : { listen: c.listen });
    t.match(p.status, c.want, c.name);
    t.equal((await p.exited()).exit, 1, `${c.name}: exit 1`);
  }
});

t.test('every bad argv → 1\\n<coded message> on fd 3, exit 1, nothing bound', needs, async (t) => {
  const port = await freePort();
  const good = argv('tcp', '127.0.0.1', port, '127.0.0.1', 80);
  const cases: { name: string; args: string[]; want: RegExp }[] = [
    { name: 'missing flag', args: good.slice(0, 8), want: /^1\nPF_USAGE: missing -container-port/ },
    { name: 'flag without its value', args: [...good.slice(0, 8), '-container-port'], want: /^1\nPF_USAGE: flag needs an argument: -container-port/ },
    { name: 'bad host port', args: argv('tcp', '127.0.0.1', 70000, '127.0.0.1', 80), want: /^1\nPF_PORT_INVALID: -host-port "70000" is not a port from 1 to 65535/ },
    { name: 'bad container port', args: argv('tcp', '127.0.0.1', port, '127.0.0.1', 80).map((a) => (a === '80' ? 'http' : a)), want: /^1\nPF_PORT_INVALID: -container-port "http"/ },
    { name: 'bad host IP', args: argv('tcp', '127.0.0.256', port, '127.0.0.1', 80), want: /^1\nPF_IP_INVALID: -host-ip "127\.0\.0\.256" is not an IPv4 or IPv6 address/ },
    { name: 'bad container IP', args: argv('tcp', '127.0.0.1', port, 'container', 80), want: /^1\nPF_IP_INVALID: -container-ip "container"/ },
    { name: 'unspecified container IP', args: argv('tcp', '127.0.0.1', port, '0.0.0.0', 80), want: /^1\nPF_IP_INVALID: -container-ip 0\.0\.0\.0 is not an address one can connect to/ },
    { name: 'sctp', args: argv('sctp', '127.0.0.1', port, '127.0.0.1', 80), want: /^1\nPF_PROTOCOL_INVALID: -proto sctp: portferry forwards tcp and udp only \(Node\.js has no SCTP sockets\) \(hint: / },
    { name: 'unknown protocol', args: argv('icmp', '127.0.0.1', port, '127.0.0.1', 80), want: /^1\nPF_PROTOCOL_INVALID: -proto "icmp": use tcp or udp/ },
    { name: 'unknown flag', args: [...good, '-frobnicate', 'yes'], want: /^1\nPF_USAGE: flag provided but not defined: -frobnicate/ },
    { name: 'bad boolean', args: [...good, '-use-listen-fd=maybe'], want: /^1\nPF_USAGE: invalid boolean value "maybe" for -use-listen-fd/ },
    { name: 'bad flag syntax', args: [...good, '---proto', 'tcp'], want: /^1\nPF_USAGE: bad flag syntax: ---proto/ },
    { name: 'argument after the flags', args: [...good, 'extra'], want: /^1\nPF_USAGE: unexpected argument after the flags: "extra"/ },
    { name: 'several problems at once', args: argv('sctp', 'x', 0, '127.0.0.1', 80), want: /^1\nPF_USAGE: the arguments have 3 problems; nothing was started: PF_PROTOCOL_INVALID: .*; PF_IP_INVALID: .*; PF_PORT_INVALID: / },
  ];
  const results = await Promise.all(cases.map(async (c) => ({ c, p: await runProxy(t.teardown, c.args) })));
  for (const { c, p } of results) {
    t.match(p.status, c.want, c.name);
    t.notMatch(p.status ?? '', /\n$/, `${c.name}: one line after 1\\n, no trailing newline`);
    t.equal((await p.exited()).exit, 1, `${c.name}: exit 1`);
  }
  t.ok(await portIsFree('tcp', '127.0.0.1', port), 'the host port of the good arguments was never taken');
});

t.test('the config file: PROXY v2 on the matching rule only; an invalid file → 1\\n naming the problem', needs, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pfdock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true, maxRetries: 5 }));
  const backend = await echoServer(t.teardown);
  const file = path.join(dir, 'docker-proxy.yaml');
  writeFileSync(file, `rules:\n  - match: { containerPort: ${backend.port}, protocol: tcp, hostIP: 127.0.0.0/8 }\n    proxyProtocol: v2\nlog: { file: ${dir}/log }\n`);
  const env = { PORTFERRY_DOCKER_CONFIG: file };
  const proxy = await runProxy(t.teardown, argv('tcp', '127.0.0.1', '{port}', '127.0.0.1', backend.port, '-use-listen-fd'), { listen: { proto: 'tcp', ip: '127.0.0.1' }, env });
  t.equal(proxy.status, '0\n');
  const s = await connect(proxy.port);
  const clientPort = s.localPort!;
  const got = readAll(s);
  s.end('payload');
  const { data } = await got;
  const header = buildProxyHeader({ version: 'v2', transport: 'stream', source: { ip: '127.0.0.1', port: clientPort }, destination: { ip: '127.0.0.1', port: proxy.port } });
  t.same(data.subarray(0, header.length), header, 'the backend got the v2 header with the client address first');
  t.equal(data.subarray(header.length).toString(), 'payload');
  t.same(await proxy.stop(), { exit: 0, signal: null });

  const other = await runProxy(t.teardown, argv('tcp', '::1', '{port}', '127.0.0.1', backend.port, '-use-listen-fd'), { listen: { proto: 'tcp', ip: '::1' }, env });
  t.equal((await echoRoundTrip(other.port, Buffer.from('plain'), '::1')).received.toString(), 'plain', 'host IP ::1 is outside the rule: no header');
  await other.stop();

  writeFileSync(file, `rules:\n  - match: { hostPort: 8080 }\n    proxyProtocol: v3\n    udpIdleTimeout: soon\n  - match: { containerIP: 10.0.0.0/33 }\nlog: { file: ${dir}/log }\n`);
  const bad = await runProxy(t.teardown, argv('tcp', '127.0.0.1', '{port}', '127.0.0.1', backend.port, '-use-listen-fd'), { listen: { proto: 'tcp', ip: '127.0.0.1' }, env });
  t.match(bad.status, /^1\nPF_CONFIG_INVALID: the configuration has 3 problems; nothing was started: /);
  t.match(bad.status, /rules\[0\]\.udpIdleTimeout/);
  t.match(bad.status, /rules\[0\]\.proxyProtocol: proxyProtocol must be v1 or v2/);
  t.match(bad.status, /rules\[1\]\.match\.containerIP: "10\.0\.0\.0\/33" is not an IP address or a CIDR/);
  t.equal((await bad.exited()).exit, 1);

  const missing = await runProxy(t.teardown, argv('tcp', '127.0.0.1', 1234, '127.0.0.1', 80), { env: { PORTFERRY_DOCKER_CONFIG: path.join(dir, 'nope.yaml') } });
  t.match(missing.status, /^1\nPF_CONFIG_READ: cannot read config file .*nope\.yaml: ENOENT \(named by PORTFERRY_DOCKER_CONFIG\)/);
});
