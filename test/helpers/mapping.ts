// Builds Mapping and Binding values for tests that drive a listener or rules builder directly.
import type { Binding, Mapping } from '../../src/api.js';
import { DEFAULTS } from '../../src/config/defaults.js';

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function testMapping(over: Partial<Mutable<Mapping>> = {}): Mapping {
  const hostPort = over.hostPort ?? 0;
  const containerPort = over.containerPort ?? 0;
  return Object.freeze({
    name: 'test',
    protocol: 'tcp',
    hostIP: '127.0.0.1',
    hostPort,
    hostPortEnd: over.hostPortEnd ?? hostPort,
    containerIP: '127.0.0.1',
    containerPort,
    containerPortEnd: over.containerPortEnd ?? containerPort,
    netns: null,
    proxyProtocol: null,
    proxyTlvs: { uniqueId: false, crc32c: false },
    connectTimeoutMs: DEFAULTS.connectTimeoutMs,
    idleTimeoutMs: DEFAULTS.idleTimeoutMs,
    halfCloseTimeoutMs: DEFAULTS.halfCloseTimeoutMs,
    maxConnections: DEFAULTS.maxConnections,
    udpIdleTimeoutMs: DEFAULTS.udpIdleTimeoutMs,
    udpMaxFlows: DEFAULTS.udpMaxFlows,
    source: 'test',
    ...over,
  });
}

/** A binding for one host address/port (port 0 lets the kernel pick; read it from the listener). */
export function testBinding(over: Partial<Mutable<Mapping>> = {}): Binding {
  const m = testMapping(over);
  return Object.freeze({
    mapping: m,
    host: { ip: m.hostIP ?? '0.0.0.0', port: m.hostPort },
    container: { ip: m.containerIP, port: m.containerPort },
  });
}
