// The iptables and nftables backends of the plugin: what portmap does, through src/rules.
// ADD installs, CHECK verifies, DEL removes (with or without prevResult), STATUS says whether the
// tools are there. GC (portmap has none): iptables removes the chains of this network's containers
// that are not valid attachments (the entry rules' comments name network and container); nftables
// does nothing, as its rules carry only the container ID and another network's could not be told apart.
import { commandOnPath } from '../exec.js';
import { PortferryError } from '../errors.js';
import { applyRules, backendProblems, checkRules, collectRules, deleteRules, BACKENDS } from '../rules/apply.js';
import { fromCniPortMappings, parseContainerCidr, type PortmapInput } from '../rules/model.js';
import type { CniCall } from './call.js';
import { sandboxAddresses, validAttachments } from './protocol.js';

function backendOf(call: CniCall): 'iptables' | 'nftables' {
  return call.plugin.backend === 'nftables' ? 'nftables' : 'iptables';
}

function inputOf(call: CniCall, prevResult: Readonly<Record<string, unknown>>): PortmapInput {
  const nets = sandboxAddresses(prevResult, call.env.ifname).map((a) => parseContainerCidr(a.cidr, 'prevResult.ips'));
  const input = fromCniPortMappings({
    network: call.conf.name,
    containerID: call.env.containerID,
    containerNets: nets,
    portMappings: call.plugin.portMappings,
    options: call.plugin.portmap,
  });
  const problems = backendProblems(input, backendOf(call));
  if (problems.length > 0) {
    throw new PortferryError('PF_CONFIG_INVALID', `the ${backendOf(call)} backend cannot take this configuration: ${problems.map((p) => p.message).join('; ')}`, { problems });
  }
  return input;
}

function needPrevResult(call: CniCall): Readonly<Record<string, unknown>> {
  if (call.conf.prevResult === null) {
    throw new PortferryError('PF_CNI_CONFIG', `${call.env.command} needs prevResult: portferry is a chained plugin (put it after the bridge/ptp plugin in the conflist)`);
  }
  return call.conf.prevResult;
}

export async function add(call: CniCall): Promise<void> {
  const prev = needPrevResult(call);
  if (call.plugin.portMappings.length === 0) return;
  const res = await applyRules(inputOf(call, prev), backendOf(call));
  for (const w of res.warnings) call.warn(w);
}

export async function check(call: CniCall): Promise<void> {
  const prev = needPrevResult(call);
  if (call.plugin.portMappings.length === 0) return;
  const res = await checkRules(inputOf(call, prev), backendOf(call));
  if (!res.ok) {
    throw new PortferryError('PF_RULES_CHECK', `${res.missing.length} ${backendOf(call)} rule(s) of container ${call.env.containerID} are missing: ${res.missing.slice(0, 3).join('; ')}${res.missing.length > 3 ? '; …' : ''}`, {
      details: { missing: res.missing },
    });
  }
}

export async function del(call: CniCall): Promise<void> {
  // As portmap: a DEL without port mappings has nothing to undo.
  if (call.plugin.portMappings.length === 0) return;
  await deleteRules({ network: call.conf.name, containerID: call.env.containerID }, backendOf(call));
}

export async function status(call: CniCall): Promise<void> {
  const backend = BACKENDS[backendOf(call)];
  const absent = backend.tools.filter((t) => !commandOnPath(t));
  if (absent.length > 0) {
    throw new PortferryError('PF_RULES_TOOL_MISSING', `the ${backend.name} backend needs ${absent.join(', ')}, which ${absent.length > 1 ? 'are' : 'is'} not on PATH`, {
      hint: `Install it: \`apt-get install -y ${backend.name}\`.`,
    });
  }
}

export async function gc(call: CniCall): Promise<void> {
  const keep = new Set(validAttachments(call.conf).map((a) => a.containerID));
  const removed = await collectRules(call.conf.name, keep, backendOf(call));
  if (removed.length > 0) call.warn(`GC removed the ${backendOf(call)} rules of ${removed.join(', ')}`);
}
