// validateNetnsPath: the filesystem magic check the CNI `ns` package makes, plus the type named by
// /proc/PID/ns/* links.
import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { validateNetnsPath } from '../../src/netns/helper.js';
import { createTopology } from '../../src/netns/topology.js';
import { skipUnless } from '../helpers/env.js';

t.test('a network namespace passes: /proc/self/ns/net, /proc/PID/ns/net', async (t) => {
  await t.resolves(validateNetnsPath('/proc/self/ns/net'));
  await t.resolves(validateNetnsPath(`/proc/${process.pid}/ns/net`));
});

t.test('anything else is PF_NETNS_INVALID naming the path and why', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pf-nsfs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'not-a-namespace');
  writeFileSync(file, 'x');
  const cases: [string, RegExp][] = [
    [file, /not a namespace file \(filesystem magic 0x[0-9a-f]+/],
    [path.join(dir, 'missing'), /does not exist/],
    ['/proc/self/ns/user', /is a user namespace, not a network namespace/],
    ['/proc/self/ns/mnt', /is a mnt namespace/],
    ['/proc/self', /procfs file but not a \/proc\/PID\/ns\/net link/],
    ['/proc/self/ns', /procfs file but not/],
    [dir, /not a namespace file/],
    ['', /is empty/],
  ];
  for (const [p, why] of cases) {
    const err = await validateNetnsPath(p).then(
      () => null,
      (e: unknown) => e,
    );
    t.match(err, { code: 'PF_NETNS_INVALID', message: why, details: { netns: p } }, `${JSON.stringify(p)} is refused`);
    t.match(err, { message: JSON.stringify(p) }, 'the message names the path');
  }
});

t.test('a bind-mounted /run/netns/NAME passes', skipUnless({ root: true, tools: ['ip', 'nsenter', 'sysctl'] }), async (t) => {
  const topo = await createTopology({ mode: 'root' });
  t.teardown(() => topo.destroy());
  await t.resolves(validateNetnsPath(topo.paths.ctr as string));
  await t.rejects(validateNetnsPath('/run/netns'), { code: 'PF_NETNS_INVALID' }, 'the directory itself does not');
});
