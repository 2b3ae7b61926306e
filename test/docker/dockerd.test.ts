// Issue 11, acceptance 1 and 2: a real dockerd (Debian docker.io 20.10) with
// "userland-proxy-path" set to bin/portferry-docker-proxy.js starts it for `docker run -p`, HTTP
// and UDP flow through it, `docker stop` makes the proxies exit and frees the ports, a taken port
// makes `docker run` fail with portferry's message, and a config rule enabling PROXY v2 delivers
// the client's address to the backend in the container. dockerd lives in its own network and mount
// namespaces (./dockerd-world.ts); clients only talk to that namespace's loopback.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { buildProxyHeader } from '../../src/proxy/proxy-header.js';
import { skipUnless } from '../helpers/env.js';
import { repoRoot, until } from '../helpers/net.js';
import { DOCKER, DockerWorld } from './dockerd-world.js';
import { proxyBin } from './harness.js';

const client = path.join(repoRoot, 'test/fixtures/docker/client.mjs');
const IMAGE = 'pfbb:test';
const HTTP_PORT = 18080;
const UDP_PORT = 15353;
const PP_PORT = 18081;
const TAKEN_PORT = 18082;
const BOTH_PORT = 18083;
const UDP_ECHO = 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(("0.0.0.0",53))\nwhile True:\n  d,a=s.recvfrom(65535)\n  s.sendto(b"echo:"+d,a)\n';

t.setTimeout(240_000);

t.test('dockerd drives portferry-docker-proxy', skipUnless({ root: true, tools: ['dockerd', 'containerd', 'runc', DOCKER, 'unshare', 'nsenter', 'ss', '/bin/busybox', '/usr/bin/python3'] }), async (t) => {
  const world = new DockerWorld();
  t.teardown(() => world.teardown());
  const config = path.join(world.dir, 'docker-proxy.yaml');
  writeFileSync(config, `rules:\n  - match: { hostPort: ${PP_PORT}, protocol: tcp }\n    proxyProtocol: v2\nlog: { file: ${world.proxyLog}, level: info }\n`);
  await world.start(proxyBin, config);
  await world.importImage(IMAGE, { 'www/index.html': 'hello from the container\n', 'dump.sh': '#!/bin/sh\nexec od -An -tx1 -v\n' });

  const nodeClient = async (...args: string[]): Promise<Record<string, unknown>> => {
    const r = await world.inNetns('env', ['-u', 'NODE_OPTIONS', process.execPath, client, ...args]);
    const line = r.stdout.trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      return { error: `no JSON from the client (exit ${r.code}): ${r.stdout} ${r.stderr}` };
    }
  };
  const dockerOk = async (args: string[]): Promise<string> => {
    const r = await world.docker(args);
    if (r.code !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.code}): ${r.stderr}\ndockerd: ${world.log('dockerd')}`);
    return r.stdout.trim();
  };

  await t.test('docker run -p 127.0.0.1:P:80 and -p 127.0.0.1:U:53/udp: dockerd starts the proxy, HTTP and UDP flow', async (t) => {
    await dockerOk(['run', '-d', '--name', 'web', '-p', `127.0.0.1:${HTTP_PORT}:80`, IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']);
    await dockerOk(['run', '-d', '--name', 'dns', '-v', '/usr:/usr:ro', '-p', `127.0.0.1:${UDP_PORT}:53/udp`, IMAGE, 'python3', '-c', UDP_ECHO]);
    const web = world.dockerdChildren(proxyBin, '-host-port', String(HTTP_PORT));
    const dns = world.dockerdChildren(proxyBin, '-host-port', String(UDP_PORT));
    t.equal(web.length, 1, 'one portferry-docker-proxy for the tcp port, a child of dockerd');
    t.equal(dns.length, 1, 'one for the udp port');
    t.same(await nodeClient('http', '127.0.0.1', String(HTTP_PORT)), { status: 200, body: 'hello from the container\n' }, 'HTTP through the proxy');
    t.same(await nodeClient('udp', '127.0.0.1', String(UDP_PORT), 'ping'), { reply: 'echo:ping', from: `127.0.0.1:${UDP_PORT}` }, 'UDP through the proxy, reply from the published port');

    await dockerOk(['stop', '-t', '1', 'web', 'dns']);
    const pids = [...web, ...dns];
    await until(() => pids.every((pid) => world.dockerdChildren(proxyBin).every((p) => p !== pid)), 20_000, 'the proxies to exit');
    t.pass('docker stop: both proxy processes exited');
    const listening = await world.inNetns('ss', ['-Hlntu', `( sport = :${HTTP_PORT} or sport = :${UDP_PORT} )`]);
    t.equal(listening.stdout.trim(), '', 'both ports are free in the namespace');
    const log = readLog(world.proxyLog);
    for (const pid of pids) t.ok(log.some((r) => r['pid'] === pid && r['msg'] === 'stopped'), `proxy ${pid} logged "stopped" (it drained and exited by itself)`);
  });

  await t.test('-p P:80 without a host IP: one proxy per family, IPv6 clients reach the IPv4 container', async (t) => {
    await dockerOk(['run', '-d', '--name', 'both', '-p', `${BOTH_PORT}:80`, IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']);
    const procs = world.dockerdChildren(proxyBin, '-host-port', String(BOTH_PORT));
    const hostIPs = procs.map((pid) => world.argvOf(pid)).map((argv) => argv[argv.indexOf('-host-ip') + 1]).sort();
    t.same(hostIPs, ['0.0.0.0', '::'], 'dockerd started two portferry-docker-proxy processes: 0.0.0.0 and ::');
    t.same(await nodeClient('http', '127.0.0.1', String(BOTH_PORT)), { status: 200, body: 'hello from the container\n' }, 'over IPv4');
    t.same(await nodeClient('http', '::1', String(BOTH_PORT)), { status: 200, body: 'hello from the container\n' }, 'over IPv6, to the container\'s IPv4 address');
    await dockerOk(['rm', '-f', 'both']);
  });

  await t.test('a host port already taken: docker run fails showing portferry\'s message', async (t) => {
    const holder = world.spawnInNetns('env', ['-u', 'NODE_OPTIONS', process.execPath, client, 'hold', '127.0.0.1', String(TAKEN_PORT)]);
    await new Promise<void>((resolve) => readline.createInterface({ input: holder.stdout! }).once('line', () => resolve()));
    const r = await world.docker(['run', '-d', '--name', 'busy', '-p', `127.0.0.1:${TAKEN_PORT}:80`, IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']);
    t.not(r.code, 0, 'docker run fails');
    t.match(r.stderr, /userland proxy: PF_BIND_ADDRINUSE: cannot bind tcp 127\.0\.0\.1:18082 .*already in use/i, 'docker shows the coded message');
    t.match(r.stderr, /hint: Stop whatever holds the port/);
    holder.kill('SIGKILL');
  });

  await t.test('PROXY v2 from the config: the backend in the container receives the client address', async (t) => {
    await dockerOk(['run', '-d', '--name', 'pp', '-p', `127.0.0.1:${PP_PORT}:81`, IMAGE, 'nc', '-ll', '-p', '81', '-e', '/dump.sh']);
    let reply: Record<string, unknown> = {};
    // The container's nc may need a moment to listen: a connection it refused ends empty.
    await until(async () => {
      reply = await nodeClient('dump', '127.0.0.1', String(PP_PORT), 'hello');
      return typeof reply['hex'] === 'string' && reply['hex'] !== '';
    }, 15_000, `the dump backend to answer (last: ${JSON.stringify(reply)})`);
    const got = Buffer.from(String(reply['hex']).replace(/\s+/g, ''), 'hex');
    const header = buildProxyHeader({ version: 'v2', transport: 'stream', source: { ip: '127.0.0.1', port: Number(reply['localPort']) }, destination: { ip: '127.0.0.1', port: PP_PORT } });
    t.same(got.subarray(0, header.length), header, "the container got a v2 header naming the client's address and port, first");
    t.equal(got.subarray(header.length).toString(), 'hello', 'then the payload');
  });
});

function readLog(file: string): Record<string, unknown>[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').flatMap((line) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}
