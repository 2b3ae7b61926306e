// The one `ready` line: every mapping, how many listeners, the first 20 of them.
import { formatHostPort } from '../addr.js';
import { expandBindings } from '../config/index.js';
import type { Mapping } from '../api.js';
import type { Logger } from '../log.js';
import type { Forwarder } from './forwarder.js';

/** `tcp 127.0.0.1:8080 -> 10.88.0.2:80` for every listener of the forwarder. */
export function describeListeners(forwarder: Forwarder): string[] {
  return forwarder.list().flatMap((e) =>
    expandBindings(e.mapping).map((b) => `${e.mapping.protocol} ${formatHostPort(b.host.ip, b.host.port)} -> ${formatHostPort(b.container.ip, b.container.port)}`),
  );
}

export function logReady(logger: Logger, forwarder: Forwarder, extra: Record<string, unknown> = {}): void {
  const listening = describeListeners(forwarder);
  logger.info(
    {
      mappings: forwarder.list().map((e) => ({ id: e.id, ...describeMapping(e.mapping) })),
      bound: listening.length,
      listeners: listening.length <= 20 ? listening : [...listening.slice(0, 20), `… and ${listening.length - 20} more`],
      ...forwarder.engine.describe(),
      ...extra,
    },
    'ready',
  );
}

/** One line per mapping, for `validate` and the ready log. */
export function describeMapping(m: Mapping): Record<string, unknown> {
  const range = (a: number, b: number): string => (a === b ? `${a}` : `${a}-${b}`);
  return {
    name: m.name,
    protocol: m.protocol,
    hostIP: m.hostIP ?? '*',
    hostPort: range(m.hostPort, m.hostPortEnd),
    containerIP: m.containerIP,
    containerPort: range(m.containerPort, m.containerPortEnd),
    ...(m.netns !== null ? { netns: m.netns } : {}),
    ...(m.proxyProtocol !== null ? { proxyProtocol: m.proxyProtocol } : {}),
  };
}
