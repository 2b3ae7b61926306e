// Rootless for real: nobody owns a user+net namespace with a server on its own 127.0.0.1:80; a
// process that is also nobody, in the host namespace, dials into it through the namespace dialer
// (nsenter --user --net --preserve-credentials) and gets TCP and UDP through.
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createTopology } from '../../src/netns/topology.js';
import { skipUnless } from '../helpers/env.js';
import { exited, fixture, nodeArgv, nsServer } from './util.js';

t.test('an unprivileged process dials into a rootless namespace it owns (TCP and UDP)', skipUnless({ root: true, tools: ['ip', 'nsenter', 'unshare', 'setpriv'] }), async (t) => {
  const topo = await createTopology({ mode: 'rootless' });
  t.teardown(() => topo.destroy());
  const token = randomBytes(6).toString('hex');
  const tcp = await nsServer(t.teardown, topo, 'ctr', { proto: 'tcp', host: '127.0.0.1', port: 80, token });
  const udp = await nsServer(t.teardown, topo, 'ctr', { proto: 'udp', host: '127.0.0.1', port: 53 });

  const [cmd, args] = nodeArgv(fixture('rootless-dial.mjs'), topo.paths.ctr as string, topo.userns as string, String(tcp.port), String(udp.port), token);
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const { code } = await exited(child);
  const result = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { uid?: number; payload?: string; tcp?: string[]; udp?: string; error?: string };
  t.equal(code, 0, `the dialing process succeeded ${result.error ?? ''}`);
  t.equal(result.uid, 65534, 'it ran as nobody');
  t.same(result.tcp, [0, 1, 2].map(() => `${token}\n${result.payload}`), 'three TCP connections: greeting and echo each');
  t.equal(result.udp, token, 'a UDP datagram echoed');
});
