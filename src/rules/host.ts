// The host-side settings that go with the rules of either backend, as the portmap plugin makes
// them: route_localnet on the interface toward the container (so 127.0.0.1 can be DNATed), and
// the flush of stale UDP conntrack entries for the host ports after the rules are in.
import type { CommandResult, CommandRunner } from '../exec.js';
import { PortferryError } from '../errors.js';
import { udpHostPorts, type PortmapInput } from './model.js';
import { exec, refused } from './command.js';

export interface SysctlUndo {
  readonly key: string;
  readonly old: string;
}

/** Like portmap: with snat on IPv4, the interface that routes to the container gets route_localnet=1. */
export async function enableRouteLocalnet(runner: CommandRunner, input: PortmapInput): Promise<SysctlUndo | null> {
  if (!input.options.snat) return null;
  const v4 = input.targets.find((t) => t.net.family === 4);
  if (v4 === undefined) return null;
  const route = await exec(runner, 'ip', ['-4', 'route', 'get', v4.net.ip]);
  const dev = route.code === 0 ? /\bdev (\S+)/.exec(route.stdout)?.[1] : undefined;
  if (dev === undefined || dev === 'lo') return null; // no route: the plugin skips it too
  const key = `net/ipv4/conf/${dev}/route_localnet`;
  const cur = await exec(runner, 'sysctl', ['-n', key]);
  if (cur.code !== 0) throw refused(`sysctl -n ${key}`, cur);
  const old = cur.stdout.trim();
  if (old === '1') return null;
  const set = await exec(runner, 'sysctl', ['-q', '-w', `${key}=1`]);
  if (set.code !== 0) throw refused(`sysctl -w ${key}=1`, set);
  return { key, old };
}

export async function undoSysctl(runner: CommandRunner, undo: SysctlUndo | null): Promise<void> {
  if (undo !== null) await runner.run('sysctl', ['-q', '-w', `${undo.key}=${undo.old}`]);
}

/** Drops UDP conntrack entries for the host ports, so old flows do not bypass the new DNAT. */
export async function flushUdpConntrack(runner: CommandRunner, input: PortmapInput): Promise<string[]> {
  const warnings: string[] = [];
  for (const t of input.targets) {
    for (const port of udpHostPorts(t)) {
      const args = ['-D', '-f', t.net.family === 6 ? 'ipv6' : 'ipv4', '-p', 'udp', '--orig-port-dst', String(port)];
      let res: CommandResult;
      try {
        res = await exec(runner, 'conntrack', args);
      } catch (e) {
        if (e instanceof PortferryError && e.code === 'PF_RULES_TOOL_MISSING') {
          return [
            'conntrack is not installed: stale UDP conntrack entries for the host ports were not flushed, so existing UDP flows may ' +
              'bypass the new rules until they expire; install it with `apt-get install -y conntrack`',
          ];
        }
        throw e;
      }
      // conntrack exits 1 when nothing matched: that is fine.
      if (res.code !== 0 && !/0 flow entries have been deleted/.test(res.stderr)) {
        warnings.push(`conntrack ${args.join(' ')} failed: ${res.stderr.trim()}`);
      }
    }
  }
  return warnings;
}
