// The CNI plugin's entry point (bin/portferry-cni.js; installed as `portferry` in the CNI bin
// directory). One process per call: read the environment and stdin, run the command, print the
// result or a CNI error on stdout, exit 0 or 1. Only the chosen backend's modules are loaded.
import { readFileSync } from 'node:fs';
import type { CniBackendModule, CniCall } from './call.js';
import { cniError } from './codes.js';
import { pluginConf } from './config.js';
import { decodeConf, readEnv, resultFor, sniffVersion, versionResult } from './protocol.js';
import { PortferryError } from '../errors.js';

function readStdin(): string {
  if (process.stdin.isTTY === true) return '';
  try {
    return readFileSync(0, 'utf8');
  } catch (e) {
    throw new PortferryError('PF_CNI_DECODE', `could not read the network configuration from stdin: ${(e as Error).message}`);
  }
}

async function run(): Promise<{ out: unknown; code: number }> {
  let version = '1.1.0';
  try {
    const stdin = readStdin();
    version = sniffVersion(stdin);
    const env = readEnv(process.env);
    const command = env.command;
    if (command === 'VERSION') return { out: versionResult(stdin), code: 0 };
    const conf = decodeConf(stdin, command);
    version = conf.cniVersion;
    const plugin = pluginConf(conf);
    const mod: CniBackendModule = plugin.backend === 'userspace' ? await import('./userspace.js') : await import('./kernel.js');
    const call: CniCall = { env, conf, plugin, warn: (m) => process.stderr.write(`portferry: warning: ${m}\n`) };
    switch (command) {
      case 'ADD':
        await mod.add(call);
        // Both backends refuse ADD without prevResult, so it is there.
        return { out: resultFor(conf.prevResult ?? {}, version), code: 0 };
      case 'CHECK':
        await mod.check(call);
        return { out: undefined, code: 0 };
      case 'DEL':
        await mod.del(call);
        return { out: undefined, code: 0 };
      case 'STATUS':
        try {
          await mod.status(call);
        } catch (err) {
          return { out: cniError(err, version, true), code: 1 };
        }
        return { out: undefined, code: 0 };
      case 'GC':
        await mod.gc(call);
        return { out: undefined, code: 0 };
    }
  } catch (err) {
    return { out: cniError(err, version), code: 1 };
  }
}

const { out, code } = await run();
if (out !== undefined) process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
// Exit now: an idle keep-alive socket to the daemon must not hold the runtime waiting.
process.exit(code);
