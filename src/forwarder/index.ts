// The forwarder service: what `portferry run`, the runtime API, the docker shim and library users
// build on (see src/index.ts for the library's entry point).
import type { Mapping } from '../api.js';
import type { Logger } from '../log.js';
import { Forwarder } from './forwarder.js';
import { logReady } from './ready.js';

export { Forwarder, type Entry, type Origin, type ForwarderOptions, type ForwarderSnapshot, type Recorder } from './forwarder.js';
export { LocalEngine, type Engine, type EngineItem, type StatsRow } from './engine.js';
export { DialerPool, checkNetnsPaths } from './dialers.js';
export { describeListeners, describeMapping, logReady } from './ready.js';

/** A forwarder in this process with `mappings` bound (all or nothing) and `ready` logged. */
export async function startForwarder(mappings: readonly Mapping[], logger: Logger): Promise<Forwarder> {
  const forwarder = new Forwarder({ logger });
  try {
    await forwarder.add(mappings, { origin: 'cli' });
  } catch (err) {
    forwarder.destroy();
    throw err;
  }
  logReady(logger, forwarder);
  return forwarder;
}
