// One plugin invocation as the backends see it: the environment, the decoded configuration and
// the plugin's own keys, and where warnings go (stderr: stdout belongs to the result).
import type { PluginConf } from './config.js';
import type { CniEnv, NetConf } from './protocol.js';

export interface CniCall {
  readonly env: CniEnv;
  readonly conf: NetConf;
  readonly plugin: PluginConf;
  warn(message: string): void;
}

/** What each backend module exports. ADD's result is printed by main (prevResult, unchanged). */
export interface CniBackendModule {
  add(call: CniCall): Promise<void>;
  check(call: CniCall): Promise<void>;
  del(call: CniCall): Promise<void>;
  status(call: CniCall): Promise<void>;
  gc(call: CniCall): Promise<void>;
}
