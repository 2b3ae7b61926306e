// Defaults for every per-mapping option, in one place (the README's option table mirrors it).
export const DEFAULTS = {
  connectTimeoutMs: 5_000,
  idleTimeoutMs: 0,
  halfCloseTimeoutMs: 60_000,
  maxConnections: 0,
  udpIdleTimeoutMs: 90_000,
  udpMaxFlows: 4096,
  drainTimeoutMs: 10_000,
} as const;
