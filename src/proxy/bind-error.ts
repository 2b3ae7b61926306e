// Turns a failed bind of a host socket (TCP or UDP) into a PortferryError that names the address,
// the protocol and the mapping, and says what to do. Shared by the TCP and UDP listeners.
import { readFileSync } from 'node:fs';
import type { Binding, Endpoint } from '../api.js';
import { CATALOGUE, PortferryError, errnoCode } from '../errors.js';
import { formatEndpoint } from '../addr.js';

const UNPRIVILEGED_PORT_START = '/proc/sys/net/ipv4/ip_unprivileged_port_start';

/** The current value of net.ipv4.ip_unprivileged_port_start, or null when it cannot be read. */
export function unprivilegedPortStart(): number | null {
  try {
    const value = Number.parseInt(readFileSync(UNPRIVILEGED_PORT_START, 'utf8').trim(), 10);
    return Number.isInteger(value) ? value : null;
  } catch {
    return null;
  }
}

/**
 * The coded error for a bind that failed with `err`. `address` is the address actually tried when
 * it differs from `binding.host` (a listener on 0.0.0.0 may bind one socket per local address).
 */
export function bindError(err: unknown, binding: Binding, address: Endpoint = binding.host): PortferryError {
  const proto = binding.mapping.protocol;
  const mapping = `mapping "${binding.mapping.name}" (${binding.mapping.source})`;
  return bindFailure(err, address, {
    lead: `cannot bind ${proto} ${formatEndpoint(address)} for ${mapping}`,
    instead: `choose another host port for ${mapping}`,
    details: { mapping: binding.mapping.name, source: binding.mapping.source, protocol: proto },
  });
}

/**
 * Any failed bind or listen (a mapping's listener, the metrics endpoint) → PF_BIND_*: `lead` says
 * what could not be bound, `instead` what else the user may do about a port in use.
 */
export function bindFailure(err: unknown, address: Endpoint, o: { lead: string; instead: string; details?: Record<string, unknown> }): PortferryError {
  const errno = errnoCode(err) ?? 'unknown';
  const details = { ...o.details, address: formatEndpoint(address), errno };
  switch (errno) {
    case 'EADDRINUSE':
      return new PortferryError('PF_BIND_ADDRINUSE', `${o.lead}: the address is already in use`, {
        cause: err,
        details,
        // The catalogue's hint, with the real port (docs/errors.md shows the same command).
        hint: CATALOGUE.PF_BIND_ADDRINUSE.fix.replace(':PORT', `:${address.port}`).replace(/choose another host port\.$/, `${o.instead}.`),
      });
    case 'EACCES':
    case 'EPERM': {
      const start = unprivilegedPortStart();
      const startText = start === null ? 'unreadable' : String(start);
      return new PortferryError('PF_BIND_EACCES', `${o.lead}: permission denied (port ${address.port}; net.ipv4.ip_unprivileged_port_start is ${startText})`, {
        cause: err,
        details: { ...details, unprivilegedPortStart: start },
        hint:
          start === null
            ? 'Run portferry with CAP_NET_BIND_SERVICE, or use a port of 1024 or above.'
            : `Use a port of ${start} or above, or lower the limit: \`sysctl -w net.ipv4.ip_unprivileged_port_start=${address.port}\`, or grant CAP_NET_BIND_SERVICE.`,
      });
    }
    case 'EADDRNOTAVAIL':
      return new PortferryError('PF_BIND_ADDRNOTAVAIL', `${o.lead}: ${address.ip} is not an address of this host (or of this network namespace)`, { cause: err, details });
    default:
      return new PortferryError('PF_BIND_FAILED', `${o.lead}: ${errno}`, { cause: err, details });
  }
}

/** A listener closed or destroyed before its bind completed (or asked to listen after that). */
export function closedBeforeListening(binding: Binding): PortferryError {
  const address = formatEndpoint(binding.host);
  return new PortferryError('PF_BIND_FAILED', `${binding.mapping.protocol} ${address} for mapping "${binding.mapping.name}" was closed before it was listening`, {
    details: { mapping: binding.mapping.name, address },
    hint: 'Nothing to fix: the mapping was removed or the forwarder shut down while it was starting.',
  });
}
