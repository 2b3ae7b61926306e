// Bind failures of the UDP listener become PF_BIND_* errors that name the address and the mapping
// (src/proxy/bind-error.ts, shared with the TCP listener).
import t from 'tap';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PortferryError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { bindError } from '../../src/proxy/bind-error.js';
import { DirectDialer } from '../../src/proxy/dialer.js';
import { UdpListener } from '../../src/proxy/udp.js';
import { testBinding } from '../helpers/mapping.js';
import { skipUnless } from '../helpers/env.js';
import { closeQuietly, udpSocket } from '../fixtures/udp/helpers.js';
import { scratchNetns } from '../helpers/netns.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function listenerOn(t: { teardown(fn: () => unknown): void }, hostIP: string, hostPort: number): UdpListener {
  const l = new UdpListener(testBinding({ protocol: 'udp', name: 'dns', source: '-p 5353:10.88.0.2:53/udp', hostIP, hostPort, containerPort: 9 }), {
    dialer: new DirectDialer(),
    logger: silentLogger(),
  });
  t.teardown(() => l.destroy());
  return l;
}

async function bindFailure(l: UdpListener): Promise<PortferryError> {
  try {
    await l.listen();
  } catch (err) {
    if (err instanceof PortferryError) return err;
    throw err;
  }
  throw new Error('listen() succeeded where it should have failed');
}

t.test('address in use: PF_BIND_ADDRINUSE names the address and the mapping', async (t) => {
  const holder = await udpSocket(t);
  const port = holder.address().port;
  const err = await bindFailure(listenerOn(t, '127.0.0.1', port));
  t.equal(err.code, 'PF_BIND_ADDRINUSE');
  t.match(err.message, `udp 127.0.0.1:${port}`);
  t.match(err.message, 'mapping "dns" (-p 5353:10.88.0.2:53/udp)');
  t.match(err.hint, String(port), 'the hint shows how to find the holder of the port');
});

t.test('unspecified host IP: a port held with SO_REUSEADDR on one address is still reported in use', async (t) => {
  const holder = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((r) => holder.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => closeQuietly(holder));
  const port = holder.address().port;
  const l = listenerOn(t, '0.0.0.0', port);
  const err = await bindFailure(l);
  t.equal(err.code, 'PF_BIND_ADDRINUSE', 'the exclusive probe catches a holder that would otherwise share the port');
  t.match(err.message, `0.0.0.0:${port}`);
  t.same(l.boundAddresses(), [], 'nothing stays bound');
});

t.test('an address that is not local: PF_BIND_ADDRNOTAVAIL', async (t) => {
  for (const ip of ['203.0.113.9', '2001:db8::9']) {
    const err = await bindFailure(listenerOn(t, ip, 0));
    t.equal(err.code, 'PF_BIND_ADDRNOTAVAIL', ip);
    t.match(err.message, ip);
  }
});

t.test('a privileged port as an unprivileged user: PF_BIND_EACCES names the sysctl and its value', skipUnless({ root: true, tools: ['setpriv', 'ip', 'sysctl'] }), async (t) => {
  // In a namespace of our own the sysctl has a known value, whatever the host's is.
  const start = 1024;
  const ns = scratchNetns(t.teardown, 'eacces', { 'net.ipv4.ip_unprivileged_port_start': String(start) });
  const script = `
    import { UdpListener } from ${JSON.stringify(path.join(root, 'dist/proxy/udp.js'))};
    import { DirectDialer } from ${JSON.stringify(path.join(root, 'dist/proxy/dialer.js'))};
    import { silentLogger } from ${JSON.stringify(path.join(root, 'dist/log.js'))};
    const mapping = { name: 'low', source: '-p 1:10.0.0.2:1/udp', protocol: 'udp', udpIdleTimeoutMs: 1000, udpMaxFlows: 1, proxyProtocol: null };
    const l = new UdpListener({ mapping, host: { ip: '127.0.0.1', port: 1 }, container: { ip: '127.0.0.1', port: 9 } }, { dialer: new DirectDialer(), logger: silentLogger() });
    try { await l.listen(); console.log(JSON.stringify({ ok: true })); l.destroy(); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, hint: e.hint })); }`;
  const { stdout } = await promisify(execFile)('ip', ['netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', script], { timeout: 20_000 });
  const got = JSON.parse(stdout) as { code?: string; message?: string; hint?: string };
  t.equal(got.code, 'PF_BIND_EACCES');
  t.match(got.message ?? '', `net.ipv4.ip_unprivileged_port_start is ${start}`);
  t.match(got.hint ?? '', `${start} or above`);
});

t.test('bindError maps errno codes', async (t) => {
  const b = testBinding({ protocol: 'udp', name: 'm', hostPort: 53 });
  const err = (code: string): Error => Object.assign(new Error(code), { code });
  t.equal(bindError(err('EPERM'), b).code, 'PF_BIND_EACCES', 'EPERM (rootless) as EACCES');
  t.equal(bindError(err('EMFILE'), b).code, 'PF_BIND_FAILED');
  t.match(bindError(err('EMFILE'), b).message, 'EMFILE');
  t.equal(bindError(new Error('no code'), b).code, 'PF_BIND_FAILED');
  const tcp = bindError(err('EADDRINUSE'), testBinding({ protocol: 'tcp', hostPort: 80 }));
  t.match(tcp.message, 'tcp 127.0.0.1:80');
  t.same(tcp.details['errno'], 'EADDRINUSE');
});

t.test('listen() after destroy() rejects; close() before listen() resolves', async (t) => {
  const l = listenerOn(t, '127.0.0.1', 0);
  await l.close(1000);
  const err = await bindFailure(l);
  t.equal(err.code, 'PF_BIND_FAILED');
  t.equal(l.address(), null);
});

t.test('destroy() while listen() is binding: listen rejects and nothing stays bound', async (t) => {
  const l = listenerOn(t, '127.0.0.1', 0);
  const listening = l.listen();
  l.destroy();
  const err = await listening.then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof PortferryError && err.code === 'PF_BIND_FAILED', 'listen() rejected with PF_BIND_FAILED');
  t.same(l.boundAddresses(), []);
});
