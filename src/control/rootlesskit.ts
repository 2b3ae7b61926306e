// rootlesskit's port API (pkg/port, API 1.1.1) translated onto portferry mappings, so that
// `rootlessctl add-ports/list-ports/remove-ports` work unchanged. Parent = the host, child = the
// container; with `run --netns PATH` the child is that namespace and childIP defaults to
// 127.0.0.1 inside it, as in rootlesskit; without it a childIP is required.
import net from 'node:net';
import type { Mapping } from '../api.js';
import { PortferryError } from '../errors.js';
import type { Entry } from '../forwarder/forwarder.js';

export interface PortSpec {
  readonly proto: string;
  readonly parentIP?: string;
  readonly parentPort: number;
  readonly childIP?: string;
  readonly childPort: number;
}

export const PROTOS = ['tcp', 'tcp4', 'tcp6', 'udp', 'udp4', 'udp6'] as const;
const SPEC_KEYS = ['proto', 'parentIP', 'parentPort', 'childIP', 'childPort'];

function bad(message: string, hint?: string): PortferryError {
  return new PortferryError('PF_CONFIG_INVALID', message, { ...(hint !== undefined ? { hint } : {}), problems: [new PortferryError('PF_CONFIG_VALUE', message, hint !== undefined ? { hint } : {})] });
}

/**
 * A rootlesskit PortSpec → a mapping object of the YAML schema (validated afterwards by the one
 * validator). Throws a coded error for what the schema cannot say (sctp, a family mismatch).
 */
export function portSpecToObject(body: unknown, childNetns: string | null): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('the body must be a JSON PortSpec {"proto","parentIP","parentPort","childIP","childPort"}');
  const spec = body as Record<string, unknown>;
  const unknown = Object.keys(spec).filter((k) => !SPEC_KEYS.includes(k));
  if (unknown.length > 0) throw bad(`unknown PortSpec key${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `"${k}"`).join(', ')}; allowed: ${SPEC_KEYS.join(', ')}`);
  const proto = typeof spec['proto'] === 'string' ? spec['proto'].toLowerCase() : '';
  if (proto.startsWith('sctp')) throw bad(`proto "${proto}" is not supported: Node.js has no SCTP sockets`, 'Publish the port as tcp or udp, or use rootlesskit\'s own port driver for SCTP.');
  if (!(PROTOS as readonly string[]).includes(proto)) throw bad(`proto ${JSON.stringify(spec['proto'])} is not one of ${PROTOS.join(', ')}`);
  const family = proto.endsWith('4') ? 4 : proto.endsWith('6') ? 6 : 0;
  const parentIP = typeof spec['parentIP'] === 'string' && spec['parentIP'] !== '' ? spec['parentIP'] : null;
  if (parentIP !== null && family !== 0 && net.isIP(parentIP) !== 0 && net.isIP(parentIP) !== family) throw bad(`parentIP ${parentIP} is not an IPv${family} address, but proto is ${proto}`);
  let childIP = typeof spec['childIP'] === 'string' && spec['childIP'] !== '' ? spec['childIP'] : null;
  if (childIP === null) {
    if (childNetns === null) throw bad('childIP is required: this portferry was started without --netns, so there is no child namespace to default to', 'Give childIP (the container\'s address), or start portferry with --netns PATH to dial 127.0.0.1 inside that namespace.');
    childIP = family === 6 ? '::1' : '127.0.0.1';
  }
  return {
    protocol: proto.slice(0, 3),
    ...(parentIP !== null ? { hostIP: parentIP } : family === 4 ? { hostIP: '0.0.0.0' } : family === 6 ? { hostIP: '::' } : {}),
    hostPort: spec['parentPort'],
    containerIP: childIP,
    containerPort: spec['childPort'],
    ...(childNetns !== null ? { netns: childNetns } : {}),
  };
}

/** One PortStatus per port of a mapping (rootlesskit knows no ranges); extra fields beside spec. */
export function entryToPortStatus(e: Entry): Record<string, unknown>[] {
  const m: Mapping = e.mapping;
  const out: Record<string, unknown>[] = [];
  const suffix = m.hostIP === null ? '' : net.isIPv6(m.hostIP) ? '6' : '4';
  for (let i = 0; i <= m.hostPortEnd - m.hostPort; i++) {
    out.push({
      id: e.id,
      spec: {
        proto: `${m.protocol}${m.hostIP === null || (m.hostIP !== '0.0.0.0' && m.hostIP !== '::') ? '' : suffix}`,
        ...(m.hostIP !== null ? { parentIP: m.hostIP } : {}),
        parentPort: m.hostPort + i,
        childIP: m.containerIP,
        childPort: m.containerPort + i,
      },
      name: m.name,
      owner: e.owner,
    });
  }
  return out;
}
