// Acceptance 1 of the CNI issue: the plugin's iptables and nftables backends, driven as libcni
// drives a chained plugin after the real Debian bridge plugin. Traffic from a client namespace,
// from the host's own address and from 127.0.0.1; a hostIP mapping answers only there; CHECK
// passes; the nat tables after ADD and after DEL equal what the real /usr/lib/cni/portmap leaves
// for the same stdin in a twin namespace; DEL leaves nothing and can be repeated, also without
// prevResult; nftables: the same traffic, and DEL leaves no table.
import t, { type Test } from 'tap';
import { skipUnless } from '../helpers/env.js';
import { exchange, inNetns, startEcho } from '../helpers/exchange.js';
import { inNs, makeNs, natDump } from '../rules/ns.js';
import { dnatChainName } from '../../src/rules/model.js';
import { CNI_DIR, IFNAME, NETWORK, PORTFERRY_CNI, chainedConf, cniWorld, runPlugin, type CniWorld } from './world.js';

const gate = skipUnless({ root: true, tools: ['ip', 'iptables', 'ip6tables', 'nft', 'conntrack', `${CNI_DIR}/bridge`, `${CNI_DIR}/portmap`] });

const CID = 'c0ffee5eed01';

function mappings(w: CniWorld): Record<string, unknown>[] {
  return [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
    { hostPort: 5300, containerPort: 53, protocol: 'udp' },
    { hostPort: 8081, containerPort: 80, protocol: 'tcp', hostIP: w.hostClient4 },
  ];
}

async function traffic(t: Test, w: CniWorld): Promise<void> {
  const client = inNetns(w.client);
  const host = inNetns(w.host);
  t.equal(await exchange(client, 'tcp', w.hostClient4, 8080), 'hello-tcp', 'client → host:8080/tcp');
  t.equal(await exchange(client, 'udp', w.hostClient4, 5300), 'hello-udp', 'client → host:5300/udp');
  t.equal(await exchange(host, 'tcp', w.hostClient4, 8080), 'hello-tcp', 'host\'s own address → 8080/tcp');
  t.equal(await exchange(host, 'udp', w.hostClient4, 5300), 'hello-udp', 'host\'s own address → 5300/udp');
  t.equal(await exchange(host, 'tcp', '127.0.0.1', 8080), 'hello-tcp', 'host 127.0.0.1:8080/tcp');
  t.equal(await exchange(host, 'udp', '127.0.0.1', 5300), 'hello-udp', 'host 127.0.0.1:5300/udp');
  t.equal(await exchange(client, 'tcp', w.hostClient4, 8081), 'hello-tcp', `hostIP mapping answers at ${w.hostClient4}:8081`);
  t.equal(await exchange(client, 'tcp', w.bridge4, 8081), 'failed: ECONNREFUSED', 'and not at the host\'s other address');
  t.equal(await exchange(host, 'tcp', '127.0.0.1', 8081), 'failed: ECONNREFUSED', 'nor at 127.0.0.1');
}

t.test('iptables backend: traffic, CHECK, the same tables as portmap after ADD and DEL', gate, async (t) => {
  const w = await cniWorld(t);
  await startEcho(t.teardown.bind(t), inNetns(w.sandbox));
  const twin = makeNs(t, 'twin');
  const call = { containerID: CID, netns: w.netnsPath, ifname: IFNAME };
  const ours = chainedConf(w, 'portferry', { backend: 'iptables' }, mappings(w));
  const theirs = chainedConf(w, 'portmap', {}, mappings(w));

  t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'failed: ECONNREFUSED', 'before ADD: nothing on 8080');
  const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...call }, ours, w.host);
  t.equal(add.code, 0, add.stdout + add.stderr);
  t.same(add.json, { ...w.prevResult, cniVersion: '1.0.0' }, 'ADD prints prevResult unchanged');
  const oracle = await runPlugin(`${CNI_DIR}/portmap`, { command: 'ADD', ...call }, theirs, twin);
  t.equal(oracle.code, 0, `portmap ADD in the twin: ${oracle.stdout} ${oracle.stderr}`);
  t.equal(await natDump(w.host, 4), await natDump(twin, 4), 'iptables-save -t nat after ADD: identical to portmap');
  t.equal(await natDump(w.host, 6), await natDump(twin, 6), 'ip6tables-save -t nat after ADD: identical to portmap');
  const localnet = await inNs(w.host, 'sysctl', ['-n', 'net.ipv4.conf.cni-pf0.route_localnet']);
  t.equal(localnet.stdout.trim(), '1', 'route_localnet on the bridge (the host side toward the container)');

  await traffic(t, w);

  const check = await runPlugin(PORTFERRY_CNI, { command: 'CHECK', ...call }, ours, w.host);
  t.equal(check.code, 0, `CHECK passes: ${check.stdout}`);
  t.equal(check.stdout, '', 'and prints nothing');

  // DEL as libcni sends it when it has no cached result: no prevResult.
  const del = await runPlugin(PORTFERRY_CNI, { command: 'DEL', containerID: CID, ifname: IFNAME }, chainedConf(null, 'portferry', { backend: 'iptables' }, mappings(w)), w.host);
  t.equal(del.code, 0, del.stdout + del.stderr);
  const oracleDel = await runPlugin(`${CNI_DIR}/portmap`, { command: 'DEL', ...call }, theirs, twin);
  t.equal(oracleDel.code, 0, oracleDel.stdout);
  const after4 = await natDump(w.host, 4);
  t.equal(after4, await natDump(twin, 4), 'iptables-save -t nat after DEL: identical to portmap');
  t.equal(await natDump(w.host, 6), await natDump(twin, 6), 'ip6tables-save -t nat after DEL: identical to portmap');
  t.notMatch(after4 + (await natDump(w.host, 6)), dnatChainName(NETWORK, CID), 'nothing of the container is left');
  t.notMatch(after4, /dnat name/, 'no entry rule is left');
  t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'failed: ECONNREFUSED', 'after DEL: 8080 closed');

  const again = await runPlugin(PORTFERRY_CNI, { command: 'DEL', ...call }, ours, w.host);
  t.equal(again.code, 0, 'DEL twice succeeds');
  const failedCheck = await runPlugin(PORTFERRY_CNI, { command: 'CHECK', ...call }, ours, w.host);
  t.equal(failedCheck.code, 1, 'CHECK after DEL fails');
  t.match(failedCheck.json, { code: 102, msg: /PF_RULES_CHECK/ }, 'with our code for missing rules');
});

t.test('nftables backend: traffic, CHECK, DEL leaves no table', gate, async (t) => {
  const w = await cniWorld(t);
  await startEcho(t.teardown.bind(t), inNetns(w.sandbox));
  const call = { containerID: CID, netns: w.netnsPath, ifname: IFNAME };
  const ours = chainedConf(w, 'portferry', { backend: 'nftables' }, mappings(w));

  const add = await runPlugin(PORTFERRY_CNI, { command: 'ADD', ...call }, ours, w.host);
  t.equal(add.code, 0, add.stdout + add.stderr);
  t.same(add.json, { ...w.prevResult, cniVersion: '1.0.0' }, 'ADD prints prevResult unchanged');
  t.match((await inNs(w.host, 'nft', ['list', 'tables'])).stdout, /table ip cni_hostport/, 'the table is there');
  t.equal((await inNs(w.host, 'iptables-save', ['-t', 'nat'])).stdout.includes('CNI-'), false, 'and no iptables rule');

  await traffic(t, w);

  const check = await runPlugin(PORTFERRY_CNI, { command: 'CHECK', ...call }, ours, w.host);
  t.equal(check.code, 0, `CHECK passes: ${check.stdout}`);

  const del = await runPlugin(PORTFERRY_CNI, { command: 'DEL', ...call }, ours, w.host);
  t.equal(del.code, 0, del.stdout + del.stderr);
  t.notMatch((await inNs(w.host, 'nft', ['list', 'tables'])).stdout, /cni_hostport/, 'DEL leaves no table (either family)');
  t.equal(await exchange(inNetns(w.client), 'tcp', w.hostClient4, 8080), 'failed: ECONNREFUSED', 'after DEL: 8080 closed');
  t.equal((await runPlugin(PORTFERRY_CNI, { command: 'DEL', ...call }, ours, w.host)).code, 0, 'DEL twice succeeds');
});


t.test('GC (iptables): removes this network\'s containers that are not valid attachments, nothing else', gate, async (t) => {
  const host = makeNs(t, 'gc');
  const add = async (network: string, id: string, i: number): Promise<void> => {
    const conf = JSON.stringify({
      cniVersion: '1.1.0',
      name: network,
      type: 'portferry',
      backend: 'iptables',
      runtimeConfig: { portMappings: [{ hostPort: 8000 + i, containerPort: 80, protocol: 'tcp' }] },
      prevResult: { cniVersion: '1.1.0', interfaces: [{ name: IFNAME, sandbox: '/run/netns/none' }], ips: [{ interface: 0, address: `10.199.7.${i + 2}/24` }] },
    });
    const r = await runPlugin(PORTFERRY_CNI, { command: 'ADD', containerID: id, netns: '/run/netns/none', ifname: IFNAME }, conf, host);
    t.equal(r.code, 0, `ADD ${network}/${id}: ${r.stdout}`);
  };
  await add(NETWORK, 'keep1', 0);
  await add(NETWORK, 'stale1', 1);
  await add(NETWORK, 'stale2', 2);
  await add('othernet', 'stale1', 3);
  const gc = await runPlugin(
    PORTFERRY_CNI,
    { command: 'GC' },
    JSON.stringify({ cniVersion: '1.1.0', name: NETWORK, type: 'portferry', backend: 'iptables', 'cni.dev/valid-attachments': [{ containerID: 'keep1', ifname: IFNAME }] }),
    host,
  );
  t.equal(gc.code, 0, gc.stdout + gc.stderr);
  t.equal(gc.stdout, '', 'GC prints nothing on stdout');
  const dump = await natDump(host, 4);
  t.match(dump, dnatChainName(NETWORK, 'keep1'), 'the valid attachment stays');
  t.notMatch(dump, dnatChainName(NETWORK, 'stale1'), 'stale1 of this network is gone');
  t.notMatch(dump, dnatChainName(NETWORK, 'stale2'), 'stale2 is gone');
  t.notMatch(dump, /id: \\"stale2\\"/, 'with its entry rule');
  t.match(dump, dnatChainName('othernet', 'stale1'), 'the same container ID on another network stays');
});
