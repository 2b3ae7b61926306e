// The world the CNI tests run in, driven as libcni drives plugins: a host and a client namespace
// (src/netns/topology.ts), a sandbox namespace for the container, and the real Debian `bridge`
// plugin (host-local IPAM, state in a temporary directory) joining the sandbox to the host, so
// prevResult is exactly what the bridge plugin returns. Everything is removed in teardown.
//
//   client 10.199.2.2 ── 10.199.2.1 [host] cni-pf0 10.199.3.1 ── eth0 10.199.3.x [sandbox]
//                                          fd70:6672:0:3::1       fd70:6672:0:3::x
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { execCommand } from '../../src/exec.js';
import { createTopology, type Topology } from '../../src/netns/topology.js';
import { repoRoot } from '../helpers/net.js';
import { makeNs } from '../rules/ns.js';

export const CNI_DIR = '/usr/lib/cni';
export const PORTFERRY_CNI = path.join(repoRoot, 'bin/portferry-cni.js');
export const NETWORK = 'pfcni';
export const IFNAME = 'eth0';

export interface PluginRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed (null when empty or not JSON). */
  readonly json: Record<string, unknown> | null;
}

export interface CallEnv {
  readonly command: string;
  readonly containerID?: string;
  readonly netns?: string;
  readonly ifname?: string;
  /** Variables to drop from the environment (to test their absence). */
  readonly without?: readonly string[];
  /** PATH for the plugin (default: ours). */
  readonly path?: string;
}

/** Runs a plugin binary as libcni does (CNI_ env, config on stdin, cwd /), optionally inside a namespace. */
export async function runPlugin(plugin: string, call: CallEnv, stdin: string, ns?: string): Promise<PluginRun> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CNI_COMMAND: call.command,
    CNI_PATH: CNI_DIR,
    ...(call.containerID !== undefined ? { CNI_CONTAINERID: call.containerID } : {}),
    ...(call.netns !== undefined ? { CNI_NETNS: call.netns } : {}),
    ...(call.ifname !== undefined ? { CNI_IFNAME: call.ifname } : {}),
    ...(call.path !== undefined ? { PATH: call.path } : {}),
  };
  delete env['NODE_OPTIONS']; // tap's hook: run the plugin as a runtime would
  for (const k of call.without ?? []) delete env[k];
  const argv = plugin.endsWith('.js') ? [process.execPath, plugin] : [plugin];
  const full = ns === undefined ? argv : ['ip', 'netns', 'exec', ns, ...argv];
  const r = await execCommand(['/usr/bin/env', '-C', '/', ...full], { input: stdin, env, timeoutMs: 60_000 });
  let json: Record<string, unknown> | null = null;
  try {
    json = r.stdout.trim() === '' ? null : (JSON.parse(r.stdout) as Record<string, unknown>);
  } catch {
    json = null;
  }
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, json };
}

export interface CniWorld {
  readonly topo: Topology;
  readonly host: string;
  readonly client: string;
  readonly sandbox: string;
  readonly netnsPath: string;
  /** The bridge plugin's ADD result: prevResult for the chained plugin. */
  readonly prevResult: Record<string, unknown>;
  /** The container's addresses from that result. */
  readonly ctr4: string;
  readonly ctr6: string;
  /** The host's address toward the client, and its gateway address on the bridge. */
  readonly hostClient4: string;
  readonly bridge4: string;
}

/** Builds the world; every piece is removed in t's teardown. */
export async function cniWorld(t: Test, cniVersion = '1.0.0'): Promise<CniWorld> {
  const topo = await createTopology({ client: true, mode: 'root' });
  t.teardown(() => topo.destroy());
  const host = topo.names.host as string;
  const client = topo.names.client as string;
  const sandbox = makeNs(t, 'sbx');
  const netnsPath = `/run/netns/${sandbox}`;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'pf-ipam-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const bridgeConf = {
    cniVersion,
    name: NETWORK,
    type: 'bridge',
    bridge: 'cni-pf0',
    isGateway: true,
    ipMasq: false,
    ipam: {
      type: 'host-local',
      dataDir,
      ranges: [[{ subnet: '10.199.3.0/24' }], [{ subnet: 'fd70:6672:0:3::/64' }]],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
    },
  };
  const added = await runPlugin(`${CNI_DIR}/bridge`, { command: 'ADD', containerID: 'sandbox', netns: netnsPath, ifname: IFNAME }, JSON.stringify(bridgeConf), host);
  if (added.code !== 0 || added.json === null) throw new Error(`bridge ADD failed (${added.code}): ${added.stdout} ${added.stderr}`);
  const ips = (added.json['ips'] as { address: string }[]).map((i) => i.address.split('/')[0] ?? '');
  return {
    topo,
    host,
    client,
    sandbox,
    netnsPath,
    prevResult: added.json,
    ctr4: ips.find((i) => !i.includes(':')) ?? '',
    ctr6: ips.find((i) => i.includes(':')) ?? '',
    hostClient4: topo.addrs.hostClient4,
    bridge4: '10.199.3.1',
  };
}

/** The chained plugin's stdin: this network, a type, keys, the port mappings, and prevResult. */
export function chainedConf(w: CniWorld | null, type: string, keys: Record<string, unknown>, portMappings: readonly Record<string, unknown>[], cniVersion = '1.0.0'): string {
  return JSON.stringify({
    cniVersion,
    name: NETWORK,
    type,
    ...keys,
    runtimeConfig: { portMappings },
    ...(w === null ? {} : { prevResult: w.prevResult }),
  });
}
