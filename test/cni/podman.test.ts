// Acceptance 4 of the CNI issue: a real runtime drives the plugin. Rootful podman (Debian 12's,
// CNI network backend) in a network namespace of our own and a private mount namespace
// (test/fixtures/cni/podman.sh says how nothing reaches the host), a conflist chaining `bridge` →
// `portferry`, `podman run -p 8080:80` of an offline busybox-static image, once per backend:
// HTTP answers on 127.0.0.1 and the bridge gateway, `podman rm` closes the port and leaves no
// rule, table or owner behind.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { execCommand } from '../../src/exec.js';
import { skipUnless } from '../helpers/env.js';
import { repoRoot } from '../helpers/net.js';
import { nsName } from '../helpers/netns.js';

const SCRIPT = path.join(repoRoot, 'test/fixtures/cni/podman.sh');
const gate = skipUnless({ root: true, tools: ['podman', 'runc', 'conmon', 'busybox', 'nsenter', 'unshare', 'ip', 'iptables', 'nft', '/usr/lib/cni/bridge'] });

async function podmanRun(t: Test, backend: string): Promise<Record<string, string>> {
  const work = mkdtempSync(path.join(tmpdir(), 'pf-podman-'));
  const ns = nsName('podman');
  await execCommand(['ip', 'netns', 'add', ns]);
  t.teardown(async () => {
    // Whatever still runs in our namespace (conmon, the container, the daemon) was started here.
    const pids = (await execCommand(['ip', 'netns', 'pids', ns])).stdout.split('\n').filter((p) => p !== '');
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
    await execCommand(['ip', 'netns', 'del', ns]);
    rmSync(work, { recursive: true, force: true });
  });
  const env = { ...process.env };
  delete env['NODE_OPTIONS'];
  const r = await execCommand(['nsenter', `--net=/run/netns/${ns}`, 'unshare', '-m', '--propagation', 'private', SCRIPT, work, backend, repoRoot], { env, timeoutMs: 240_000 });
  const results: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^RESULT (\w+)=(.*)$/.exec(line);
    if (m !== null) results[m[1] as string] = m[2] as string;
  }
  if (results['done'] !== '1') t.fail(`podman.sh ${backend} did not finish (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  return results;
}

for (const backend of ['iptables', 'nftables', 'userspace', 'userspace-netns']) {
  t.test(`podman run -p through the ${backend} backend`, gate, async (t) => {
    const r = await podmanRun(t, backend);
    t.equal(r['get_localhost'], 'hello-podman', 'GET 127.0.0.1:8080 reaches the container');
    t.equal(r['get_gateway'], 'hello-podman', 'GET <bridge gateway>:8080 reaches the container');
    t.equal(r['after_rm'], 'ERR ECONNREFUSED', 'after podman rm: the port is closed');
    t.equal(r['dn_chains'], '0', 'no CNI-DN chain left');
    t.equal(r['nft_tables'], '0', 'no cni_hostport table left');
    if (backend.startsWith('userspace')) {
      t.match(r['owners'], /^\["[0-9a-f]{64}\/eth0"\]$/, 'the daemon served it under <container ID>/eth0');
      t.equal(r['owners_after'], '[]', 'and holds nothing after podman rm');
    }
  });
}
