// Acceptance 2 of the CNI issue: the plugin's userspace backend against the real daemon
// (`portferry run --api SOCKET` in the host namespace), after the real Debian bridge plugin.
// ADD → traffic; the daemon lists the mappings under the attachment's owner; a retried ADD keeps
// them (same ids); an ADD on a port another container holds is 105 (PF_CONFLICT); CHECK; PROXY v2 read by a backend in the container; dialInNetns reaches a
// server only the container's own loopback has; DEL closes the ports, twice; GC keeps the valid
// attachments and this network's only; STATUS 0 with the daemon up and 50 without; ADD without
// the daemon is "try again later" (11).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ApiClient } from '../../src/control/client.js';
import { skipUnless } from '../helpers/env.js';
import { exchange, inNetns, startEcho } from '../helpers/exchange.js';
import { runCli } from '../helpers/net.js';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { CNI_DIR, IFNAME, PORTFERRY_CNI, chainedConf, cniWorld, runPlugin, type CniWorld } from './world.js';

const gate = skipUnless({ root: true, tools: ['ip', `${CNI_DIR}/bridge`] });

// Reads a PROXY v2 header (TCP over IPv4) and answers with the source it carries, then echoes.
const PROXY_V2_READER = `
const sig = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
require('node:net').createServer((s) => {
  s.on('error', () => {});
  let buf = Buffer.alloc(0);
  s.on('data', function first(d) {
    buf = Buffer.concat([buf, d]);
    if (buf.length < 16) return;
    if (!buf.subarray(0, 12).equals(sig) || buf[13] !== 0x11) { s.end('no-v2-header'); return; }
    const len = buf.readUInt16BE(14);
    if (buf.length < 16 + len) return;
    s.off('data', first);
    const src = [...buf.subarray(16, 20)].join('.') + ':' + buf.readUInt16BE(24);
    s.end('src=' + src);
  });
}).listen(81, '::', () => console.log('ready'));`;

async function startInNs(t: Test, ns: string, script: string): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill();
      await once(child, 'exit');
    }
  });
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  if (!String(line).includes('ready')) throw new Error(`server in ${ns} said ${String(line)}`);
}

function startDaemon(t: Test, w: CniWorld, sock: string): ReturnType<typeof runCli> {
  return runCli(t.teardown.bind(t), ['run', '--api', sock, '--log-level', 'info'], {}, inNetns(w.host));
}

t.test('userspace backend against the real daemon', gate, async (t) => {
  const w = await cniWorld(t);
  await startEcho(t.teardown.bind(t), inNetns(w.sandbox));
  await startInNs(t, w.sandbox, PROXY_V2_READER);
  const dir = mkdtempSync(path.join(tmpdir(), 'pf-cni-api-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'api.sock');
  const daemon = startDaemon(t, w, sock);
  await daemon.ready;
  const api = new ApiClient(sock);

  const keys = { backend: 'userspace', api: sock };
  const A = { containerID: 'ctra01', netns: w.netnsPath, ifname: IFNAME };
  const confA = chainedConf(w, 'portferry', keys, [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
    { hostPort: 5300, containerPort: 53, protocol: 'udp' },
  ]);

  await t.test('ADD: traffic flows, the owner is listed, a retry keeps the mappings', async (t) => {
    const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...A }, confA, w.host);
    t.equal(add.code, 0, add.stdout + add.stderr);
    t.same(add.json, { ...w.prevResult, cniVersion: '1.0.0' }, 'ADD prints prevResult unchanged');
    t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'hello-tcp', 'client → host:8080/tcp');
    t.equal(await exchange(inNetns(w.client), 'udp', w.hostClient4, 5300), 'hello-udp', 'client → host:5300/udp');
    t.equal(await exchange(inNetns(w.host), 'tcp', '127.0.0.1', 8080), 'hello-tcp', 'host 127.0.0.1:8080/tcp');
    t.equal(await exchange(inNetns(w.host), 'tcp', '::1', 8080), 'hello-tcp', 'host [::1]:8080/tcp (the kernel cannot do this one)');
    const listed = await api.listMappings('ctra01/eth0');
    t.equal(listed.length, 2, 'two mappings under owner ctra01/eth0');
    t.same(listed.map((m) => m.mapping['containerIP']), [w.ctr4, w.ctr4], 'aimed at the container\'s IPv4 address from prevResult');
    t.ok((await api.owners()).some((o) => o.owner === 'ctra01/eth0'), 'GET /v1/owners has it');
    const again = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...A }, confA, w.host);
    t.equal(again.code, 0, 'a retried ADD succeeds');
    t.same((await api.listMappings('ctra01/eth0')).map((m) => m.id), listed.map((m) => m.id), 'and keeps the same mappings (same ids)');
    const check = await runPlugin(PORTFERRY_CNI, { command: 'CHECK', ...A }, confA, w.host);
    t.equal(check.code, 0, `CHECK passes: ${check.stdout}`);
  });

  await t.test('issue 20 (7c): an ADD that collides with another container\'s port is 105 PF_CONFLICT, not 7', async (t) => {
    const D = { containerID: 'ctrd04', netns: w.netnsPath, ifname: IFNAME };
    const conf = chainedConf(w, 'portferry', keys, [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }]);
    const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...D }, conf, w.host);
    t.equal(add.code, 1, 'the colliding ADD fails');
    t.match(add.json, { cniVersion: '1.0.0', code: 105, msg: /PF_CONFIG_INVALID/, details: /PF_CONFLICT: .*tcp .*8080/ }, 'CNI code 105 (PF_CONFLICT), the conflict in details');
    t.same(await api.listMappings('ctrd04/eth0'), [], 'nothing registered for the loser');
    t.equal((await api.listMappings('ctra01/eth0')).length, 2, 'the holder keeps its mappings');
    t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'hello-tcp', 'and 8080 still reaches it');
  });

  await t.test('proxyProtocol v2: the backend reads the client\'s address', async (t) => {
    const B = { containerID: 'ctrb02', netns: w.netnsPath, ifname: IFNAME };
    const conf = chainedConf(w, 'portferry', { ...keys, proxyProtocol: 'v2' }, [{ hostPort: 8081, containerPort: 81, protocol: 'tcp' }]);
    const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...B }, conf, w.host);
    t.equal(add.code, 0, add.stdout + add.stderr);
    const got = await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8081);
    t.match(got, new RegExp(`^src=${w.topo.addrs.client4.replace(/\./g, '\\.')}:\\d+$`), `the header names the client ${w.topo.addrs.client4}`);
  });

  await t.test('dialInNetns: reached through the container\'s namespace', async (t) => {
    // A server only the container's loopback has; prevResult without addresses, so the daemon
    // dials 127.0.0.1 inside CNI_NETNS.
    await startEcho(t.teardown.bind(t), inNetns(w.sandbox), 90, 91);
    const C = { containerID: 'ctrc03', netns: w.netnsPath, ifname: IFNAME };
    const noAddr = { ...w, prevResult: { ...w.prevResult, ips: [] } };
    const conf = chainedConf(noAddr, 'portferry', { ...keys, dialInNetns: true }, [{ hostPort: 8082, containerPort: 90, protocol: 'tcp' }]);
    const without = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...C }, chainedConf(noAddr, 'portferry', keys, [{ hostPort: 8082, containerPort: 90, protocol: 'tcp' }]), w.host);
    t.match(without.json, { code: 7, msg: /no address of the sandbox interface eth0/ }, 'without dialInNetns and without an address: invalid config');
    const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...C }, conf, w.host);
    t.equal(add.code, 0, add.stdout + add.stderr);
    const [m] = await api.listMappings('ctrc03/eth0');
    t.match(m?.mapping, { netns: w.netnsPath, containerIP: '127.0.0.1' }, 'netns = CNI_NETNS');
    t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8082), 'hello-tcp', 'client → host:8082 → 127.0.0.1:90 inside the container');
  });

  await t.test('GC keeps the valid attachments and other owners, removes the rest', async (t) => {
    await api.addMappings([{ name: 'not-cni', protocol: 'tcp', hostPort: 8099, containerIP: w.ctr4, containerPort: 80 }], 'someone-else');
    const gcConf = JSON.stringify({ cniVersion: '1.1.0', name: 'pfcni', type: 'portferry', ...keys, 'cni.dev/valid-attachments': [{ containerID: 'ctra01', ifname: IFNAME }] });
    const gc = await runPlugin(PORTFERRY_CNI, { command: 'GC' }, gcConf, w.host);
    t.equal(gc.code, 0, gc.stdout + gc.stderr);
    t.equal(gc.stdout, '', 'GC prints nothing');
    const owners = (await api.owners()).map((o) => o.owner).sort();
    t.same(owners, ['ctra01/eth0', 'someone-else'], 'ctrb02 and ctrc03 removed; the valid one and a non-CNI owner stay');
    t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8082), 'failed: ECONNREFUSED', 'a removed owner\'s port is closed');
    const old = await runPlugin(PORTFERRY_CNI, { command: 'GC' }, gcConf.replace('"1.1.0"', '"1.0.0"'), w.host);
    t.match(old.json, { code: 1, msg: /does not allow GC/ }, 'GC needs a 1.1.0 config');
  });

  await t.test('DEL closes the ports; DEL twice', async (t) => {
    const del = await runPlugin(PORTFERRY_CNI, { command: 'DEL', containerID: 'ctra01', ifname: IFNAME }, chainedConf(null, 'portferry', keys, []), w.host);
    t.equal(del.code, 0, del.stdout + del.stderr);
    t.same(await api.listMappings('ctra01/eth0'), [], 'the owner has nothing left');
    t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'failed: ECONNREFUSED', 'after DEL: 8080 closed');
    const check = await runPlugin(PORTFERRY_CNI, { command: 'CHECK', ...A }, confA, w.host);
    t.match(check.json, { code: 104, msg: /PF_CNI_CHECK: owner ctra01\/eth0/ }, 'CHECK after DEL fails with our code');
    const again = await runPlugin(PORTFERRY_CNI, { command: 'DEL', ...A }, confA, w.host);
    t.equal(again.code, 0, 'DEL twice succeeds');
    const never = await runPlugin(PORTFERRY_CNI, { command: 'DEL', containerID: 'never-added', ifname: IFNAME }, confA, w.host);
    t.equal(never.code, 0, 'DEL of an attachment the daemon never heard of succeeds');
  });

  await t.test('STATUS: 0 with the daemon, 50 without; ADD without it: try again later', async (t) => {
    const statusConf = JSON.stringify({ cniVersion: '1.1.0', name: 'pfcni', type: 'portferry', ...keys });
    const up = await runPlugin(PORTFERRY_CNI, { command: 'STATUS' }, statusConf, w.host);
    t.equal(up.code, 0, up.stdout);
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    const down = await runPlugin(PORTFERRY_CNI, { command: 'STATUS' }, statusConf, w.host);
    t.equal(down.code, 1);
    t.match(down.json, { cniVersion: '1.1.0', code: 50, msg: /PF_API_UNREACHABLE/ }, 'STATUS: 50, plugin not available');
    const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...A }, confA, w.host);
    t.match(add.json, { code: 11, msg: /PF_API_UNREACHABLE/ }, 'ADD: 11, try again later');
    const del = await runPlugin(PORTFERRY_CNI, { command: 'DEL', ...A }, confA, w.host);
    t.equal(del.code, 0, 'DEL is best effort: succeeds with the daemon down');
    t.match(del.stderr, /warning: cannot reach the portferry daemon/);
  });
});
