// Acceptance 6: a UDP mapping on the unspecified address answers each client from the address the
// client targeted. In a throwaway network namespace with several addresses on its loopback interface (no dummy module needed),
// the forwarder (built code, test/fixtures/udp/forwarder.mjs) and a client (client.mjs) run inside
// it. A naive wildcard echo server in the same place answers from the wrong address: the control
// proves the setup can tell the difference.
import t from 'tap';
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { skipUnless } from '../helpers/env.js';
import { makeNamespace, ping, pollUntil, root, run, startForwarder } from '../fixtures/udp/netns.js';

t.test('built code is present and not older than the source', async (t) => {
  const built = statSync(path.join(root, 'dist/proxy/udp.js'), { throwIfNoEntry: false });
  t.ok(built, 'dist/proxy/udp.js exists (run `npm run build`)');
  const src = statSync(path.join(root, 'src/proxy/udp.ts'));
  t.ok(built !== undefined && built.mtimeMs >= src.mtimeMs, 'dist/proxy/udp.js is newer than src/proxy/udp.ts (run `npm run build`)');
});

t.test('0.0.0.0: each client is answered from the IPv4 address it targeted', skipUnless({ root: true, tools: ['ip'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '0.0.0.0');
  const bound = fwd.addresses.map((a) => a.ip);
  t.same([...bound].sort(), ['10.201.0.1', '10.201.0.2', '127.0.0.1'], `a socket per local address and no wildcard socket: ${bound.join(' ')}`);

  const control = await ping(ns, '127.0.0.1', 'control', ['10.201.0.1', '10.201.0.2']);
  t.ok(
    control.every((r) => r.ok && r.from !== r.target),
    `control: a plain wildcard socket answers from the wrong address here (${control.map((r) => `${r.target}<-${r.from}`).join(', ')})`,
  );

  const results = await ping(ns, '127.0.0.1', fwd.port, ['10.201.0.1', '10.201.0.2', '127.0.0.1']);
  for (const r of results) {
    t.ok(r.ok, `${r.target}: answered`);
    t.equal(r.from, r.target, `${r.target}: the reply comes from the address the client targeted`);
    t.equal(r.fromPort, fwd.port, `${r.target}: and from the mapped port`);
  }

  // An address added after the listener started: the re-scan binds it (until then it is not served).
  await run('ip', ['-n', ns, 'addr', 'add', '10.201.0.3/24', 'dev', 'lo']);
  const [late] = await pollUntil('a reply from 10.201.0.3', () => ping(ns, '127.0.0.1', fwd.port, ['10.201.0.3']), (v) => v[0]?.from === '10.201.0.3');
  t.equal(late?.from, '10.201.0.3', 'an address added later is answered from itself after the re-scan');

  await run('ip', ['-n', ns, 'addr', 'del', '10.201.0.3/24', 'dev', 'lo']);
  const after = await pollUntil('the socket of 10.201.0.3 to close', async () => JSON.parse(await fwd.command('addresses')) as string[], (v) => !v.includes('10.201.0.3'));
  t.notOk(after.includes('10.201.0.3'), 'the socket of a removed address is closed');
  // One flow per client socket (client ip:port), whichever host address it targets.
  const stats = JSON.parse(await fwd.command('stats')) as { flowsCreated: number; drops: Record<string, number> };
  t.ok(stats.flowsCreated >= 2, `a flow per client process (${stats.flowsCreated})`);
  t.same(stats.drops, {}, 'nothing dropped');
});

t.test('::: each client is answered from the IPv6 address it targeted', skipUnless({ root: true, tools: ['ip'] }), async (t) => {
  const ns = await makeNamespace(t);
  const fwd = await startForwarder(t, ns, '::');
  const bound = fwd.addresses.map((a) => a.ip);
  t.ok(['fd55::1', 'fd55::2', '::1'].every((ip) => bound.includes(ip)) && !bound.includes('::'), `a socket per local address and no wildcard socket: ${bound.join(' ')}`);

  const control = await ping(ns, '::1', 'control', ['fd55::1', 'fd55::2']);
  t.ok(
    control.every((r) => r.ok && r.from !== r.target),
    `control: a plain wildcard socket answers from the wrong address here (${control.map((r) => `${r.target}<-${r.from}`).join(', ')})`,
  );

  const results = await ping(ns, '::1', fwd.port, ['fd55::1', 'fd55::2', '::1']);
  for (const r of results) {
    t.ok(r.ok, `${r.target}: answered`);
    t.equal(r.from, r.target, `${r.target}: the reply comes from the address the client targeted`);
    t.equal(r.fromPort, fwd.port);
  }
});

// Issue 14 item 4: with the per-address sockets bound with SO_REUSEADDR, an unprivileged user could
// bind 127.0.0.1:PORT with SO_REUSEADDR too and receive every datagram meant for the container.
const ATTACKER = `
  const dgram = require('node:dgram');
  const [port, ...ips] = process.argv.slice(1);
  const result = {}; const sockets = []; let received = 0;
  (async () => {
    for (const ip of ips) {
      const s = dgram.createSocket({ type: ip.includes(':') ? 'udp6' : 'udp4', reuseAddr: true, ipv6Only: ip.includes(':') });
      result[ip] = await new Promise((resolve) => {
        s.once('error', (e) => resolve(e.code));
        s.bind(Number(port), ip, () => { s.on('message', () => received++); sockets.push(s); resolve('bound'); });
      });
    }
    console.log(JSON.stringify(result));
    process.stdin.resume();
    process.stdin.on('end', () => { console.log(JSON.stringify({ received })); process.exit(0); });
  })();`;

for (const [family, host, targets] of [
  ['IPv4', '0.0.0.0', ['127.0.0.1', '10.201.0.1']],
  ['IPv6', '::', ['::1', 'fd55::1']],
] as const) {
  t.test(`${family}: another user cannot take over the port: its SO_REUSEADDR binds fail, the container gets the traffic`, skipUnless({ root: true, tools: ['ip', 'setpriv'] }), async (t) => {
    const ns = await makeNamespace(t);
    const fwd = await startForwarder(t, ns, host);
    const attacker = spawn('ip', ['netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', ATTACKER, String(fwd.port), ...targets, host], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    t.teardown(() => {
      if (attacker.pid !== undefined && attacker.exitCode === null && attacker.signalCode === null) process.kill(attacker.pid, 'SIGKILL');
    });
    const lines = readline.createInterface({ input: attacker.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
    const binds = JSON.parse(String((await lines.next()).value)) as Record<string, string>;
    t.same(binds, Object.fromEntries([...targets, host].map((ip) => [ip, 'EADDRINUSE'])), `nobody's binds of the port fail (${JSON.stringify(binds)})`);
    const results = await ping(ns, targets[0], fwd.port, [...targets]);
    for (const r of results) t.ok(r.ok && r.from === r.target, `${r.target}: the container answered, from the address the client targeted (${r.from})`);
    attacker.stdin?.end();
    const { received } = JSON.parse(String((await lines.next()).value)) as { received: number };
    t.equal(received, 0, 'the other user received nothing');
  });
}
