// The userspace backend: the mappings are served by the `portferry run --api` daemon, which keeps
// the client's address (PROXY protocol) and can dial inside the container's namespace. Each
// attachment is one owner, `CNI_CONTAINERID/CNI_IFNAME`; its mappings are named
// `cni:<network>:<owner>:<proto>/<hostPort>[@hostIP]` so that GC touches only this network's.
//   ADD    PUT /v1/owners/{owner} (idempotent: a retried ADD keeps what is there)
//   DEL    DELETE /v1/owners/{owner} (a daemon that never heard of it answers with nothing removed)
//   CHECK  GET /v1/mappings?owner=… and compare with what ADD would register
//   GC     every owner of this network not in cni.dev/valid-attachments is removed
//   STATUS GET /v1/info
import { ApiClient, defaultApiSocket, type MappingStatus } from '../control/client.js';
import { PortferryError } from '../errors.js';
import { fromCniPortMappings, parseContainerCidr, type ContainerNet } from '../rules/model.js';
import type { CniCall } from './call.js';
import { sandboxAddresses, validAttachments } from './protocol.js';

function client(call: CniCall): ApiClient {
  return new ApiClient(call.plugin.api ?? defaultApiSocket());
}

function ownerOf(containerID: string, ifname: string): string {
  return `${containerID}/${ifname}`;
}

function namePrefix(network: string): string {
  return `cni:${network}:`;
}

type MappingObject = Record<string, string | number>;

/**
 * The daemon's mapping objects for this attachment. Target: the sandbox interface's address of
 * the host IP's family (IPv4 first when the host IP is unspecified; the other family when the
 * container has only that one: userspace forwarding crosses families). With dialInNetns the
 * daemon dials from inside CNI_NETNS, to that address or, without one, to loopback.
 */
function mappingObjects(call: CniCall): MappingObject[] {
  const prev = call.conf.prevResult;
  if (prev === null) {
    throw new PortferryError('PF_CNI_CONFIG', `${call.env.command} needs prevResult: portferry is a chained plugin (put it after the bridge/ptp plugin in the conflist)`);
  }
  const addrs = sandboxAddresses(prev, call.env.ifname);
  if (addrs.length === 0 && !call.plugin.dialInNetns && call.plugin.portMappings.length > 0) {
    throw new PortferryError('PF_CNI_CONFIG', `prevResult has no address of the sandbox interface ${call.env.ifname}, so there is nothing to forward to`, {
      hint: 'Chain portferry after a plugin that gives the container an address (bridge, ptp), or set "dialInNetns": true to dial 127.0.0.1 inside the container.',
    });
  }
  const nets: ContainerNet[] = addrs.length > 0 ? addrs.map((a) => parseContainerCidr(a.cidr, 'prevResult.ips')) : [parseContainerCidr('127.0.0.1', 'loopback')];
  // The rules model validates the entries (ports, protocol, host IP) the same way for every backend.
  const entries = fromCniPortMappings({
    network: call.conf.name,
    containerID: call.env.containerID,
    containerNets: nets.slice(0, 1),
    portMappings: call.plugin.portMappings,
  }).targets[0]?.entries ?? [];
  const owner = ownerOf(call.env.containerID, call.env.ifname);
  return entries.map((e) => {
    const hostFamily = e.hostIP === '' ? null : e.hostIP.includes(':') ? 6 : 4;
    const net = nets.find((n) => n.family === hostFamily) ?? nets.find((n) => n.family === 4) ?? nets[0];
    const obj: MappingObject = {
      name: `${namePrefix(call.conf.name)}${owner}:${e.protocol}/${e.hostPort}${e.hostIP === '' ? '' : `@${e.hostIP}`}`,
      protocol: e.protocol,
      hostPort: e.hostPort,
      containerIP: net?.ip ?? '127.0.0.1',
      containerPort: e.containerPort,
    };
    if (e.hostIP !== '') obj['hostIP'] = e.hostIP;
    if (call.plugin.dialInNetns) obj['netns'] = call.env.netns;
    if (call.plugin.proxyProtocol !== null) obj['proxyProtocol'] = call.plugin.proxyProtocol;
    return obj;
  });
}

export async function add(call: CniCall): Promise<void> {
  const wanted = mappingObjects(call);
  if (wanted.length === 0) return;
  await client(call).replaceOwner(ownerOf(call.env.containerID, call.env.ifname), wanted);
}

export async function del(call: CniCall): Promise<void> {
  try {
    await client(call).removeOwner(ownerOf(call.env.containerID, call.env.ifname));
  } catch (e) {
    // DEL is best effort: a daemon that is down serves nothing of this container; GC cleans up
    // whatever a restarted daemon brings back from its state file.
    if (e instanceof PortferryError && e.code === 'PF_API_UNREACHABLE') {
      call.warn(`${e.message}; nothing to remove there`);
      return;
    }
    throw e;
  }
}

function sameMapping(want: MappingObject, have: MappingStatus): boolean {
  const m = have.mapping;
  return Object.entries(want).every(([k, v]) => k === 'name' || m[k] === v || String(m[k]) === String(v));
}

export async function check(call: CniCall): Promise<void> {
  const wanted = mappingObjects(call);
  if (wanted.length === 0) return;
  const owner = ownerOf(call.env.containerID, call.env.ifname);
  const have = await client(call).listMappings(owner);
  const problems: string[] = [];
  for (const w of wanted) {
    const found = have.find((h) => h.name === w['name']);
    if (found === undefined) problems.push(`${String(w['name'])} is not registered`);
    else if (!sameMapping(w, found)) problems.push(`${String(w['name'])} differs: the daemon has ${JSON.stringify(found.mapping)}`);
    else if (found.listeners.length === 0) problems.push(`${String(w['name'])} has no listener`);
  }
  if (problems.length > 0) {
    throw new PortferryError('PF_CNI_CHECK', `owner ${owner}: ${problems.join('; ')}`, { details: { problems } });
  }
}

export async function gc(call: CniCall): Promise<void> {
  const keep = new Set(validAttachments(call.conf).map((a) => ownerOf(a.containerID, a.ifname)));
  const api = client(call);
  const prefix = namePrefix(call.conf.name);
  const stale = new Set<string>();
  for (const m of await api.listMappings()) {
    if (m.owner !== null && m.name.startsWith(prefix) && !keep.has(m.owner)) stale.add(m.owner);
  }
  const failures: string[] = [];
  for (const owner of stale) {
    try {
      await api.removeOwner(owner);
    } catch (e) {
      failures.push(`${owner}: ${(e as Error).message}`);
    }
  }
  if (failures.length > 0) throw new PortferryError('PF_API_REQUEST', `GC removed ${stale.size - failures.length} of ${stale.size} stale owners; failed: ${failures.join('; ')}`);
}

export async function status(call: CniCall): Promise<void> {
  await client(call).info();
}
