// A throwaway network world for tests, the benchmark and the demo: one object, one cleanup.
// (Over 350 lines on purpose: root and rootless modes build the same world step by step, and every
// step registers its own undo with the one cleanup; keeping them together keeps that pairing visible.)
//
// Root mode (`ip netns`): namespaces `host`, `ctr` and optionally `client`, each named
// `pf-<role>-<random>`. veth pairs join host↔ctr and host↔client; they are created directly
// inside the namespaces (never in the caller's), so deleting the namespaces removes them.
// Addresses are private and exist only inside these namespaces; forwarding is switched on inside
// `host` only. ctr and client route everything via host, so client → host port → ctr is the path
// a published port serves.
//
//   client 10.199.2.2/24 eth0 ── to-client 10.199.2.1  [host]  10.199.1.1 to-ctr ── eth0 10.199.1.2/24 ctr
//          fd70:6672:0:2::2/64        fd70:6672:0:2::1          fd70:6672:0:1::1        fd70:6672:0:1::2/64
//
// With `bridge`, the host's ctr-side address sits on a bridge (pf-br0) that enslaves to-ctr, as
// with a CNI bridge network; hostIfCtr then names the bridge.
//
// Rootless mode: an unprivileged user (uid 65534 via setpriv when we are root, else ourselves)
// makes a user + network namespace with `unshare -Urn`; a holder process keeps it alive (it exits
// when its stdin closes, so it dies with us even on SIGKILL). Only `ctr` exists, loopback only;
// `host` is the caller's own namespace, entered as that unprivileged user.
//
// Cleanup runs from destroy(), from destroyAllTopologies() and on process exit (synchronously, as
// a last resort). Signals are the program's business, not this module's: a program that must clean
// up on SIGINT/SIGTERM handles them and calls destroy() or destroyAllTopologies() (the CLI does it
// with holdStopSignals in src/cli/signals.ts); a signal nobody handles ends the process without
// an 'exit' event, and what it made stays.
import { spawn, execFileSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { PortferryError } from '../errors.js';
import { runCommand } from './run.js';

export type NsName = 'host' | 'ctr' | 'client';
export interface TopologyOptions {
  client?: boolean;
  ipv6?: boolean;
  mode?: 'root' | 'rootless';
  bridge?: boolean;
}

export interface TopologyAddrs {
  readonly host4: string;
  readonly ctr4: string;
  readonly ctrPrefix4: number;
  readonly host6: string;
  readonly ctr6: string;
  readonly ctrPrefix6: number;
  readonly hostClient4: string;
  readonly client4: string;
  readonly hostClient6: string;
  readonly client6: string;
}

export interface Topology {
  readonly mode: 'root' | 'rootless';
  /** netns paths usable with nsenter --net= / the `netns` mapping option */
  readonly paths: Readonly<Record<NsName, string | null>>;
  /** `ip netns` names (root mode), null in rootless */
  readonly names: Readonly<Record<NsName, string | null>>;
  /**
   * Root mode: the addresses above ('' for the IPv6 ones without `ipv6`, for the client ones
   * without `client`). Rootless: ctr and host are loopback (127.0.0.1, ::1), client ''.
   */
  readonly addrs: TopologyAddrs;
  /** host-side interface name toward ctr (rules need it for route_localnet); '' in rootless. */
  readonly hostIfCtr: string;
  /** Rootless: the user namespace that owns paths.ctr (for NetnsDialer's `userns`); null as root. */
  readonly userns: string | null;
  /** Rootless: the uid that owns the namespaces (65534 when created by root); null as root. */
  readonly uid: number | null;
  exec(ns: NsName, cmd: string, args: readonly string[], opts?: { input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** Started inside `ns` (as the namespace's user in rootless); killed by PID in destroy(). */
  spawn(ns: NsName, cmd: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Idempotent; also runs (synchronously) when the process exits. */
  destroy(): Promise<void>;
}

/** For tests of the cleanup: called after each setup step; throwing there aborts the setup. */
export interface TopologyHooks {
  /** Steps: root `netns`, `links`, `addresses`, `forwarding`; rootless `netns`; both `ready`. */
  afterStep?: (step: string, topology: Topology) => void | Promise<void>;
}

const NET4 = { ctr: '10.199.1', client: '10.199.2' } as const;
const NET6 = { ctr: 'fd70:6672:0:1::', client: 'fd70:6672:0:2::' } as const;
const HOST_IF_CTR = 'to-ctr';
const HOST_IF_CLIENT = 'to-client';
const BRIDGE = 'pf-br0';
const ROOTLESS_UID = 65534;
const HOLDER_READY_TIMEOUT_MS = 10_000;
const KILL_GRACE_MS = 1_000;
const LINK_UP_TIMEOUT_MS = 5_000;
const EXTRA_PATH = ':/usr/local/sbin:/usr/sbin:/sbin';

const live = new Set<TopologyImpl>();

function setupError(message: string, cause: unknown): PortferryError {
  return new PortferryError('PF_NETNS_SETUP', `creating the namespace topology failed: ${message}`, { cause });
}

function toolEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${process.env['PATH'] ?? '/usr/bin:/bin'}${EXTRA_PATH}` };
}

class TopologyImpl implements Topology {
  readonly mode: 'root' | 'rootless';
  paths: Record<NsName, string | null> = { host: null, ctr: null, client: null };
  names: Record<NsName, string | null> = { host: null, ctr: null, client: null };
  addrs: TopologyAddrs;
  hostIfCtr = '';
  userns: string | null = null;
  uid: number | null = null;
  private readonly children = new Set<ChildProcess>();
  private holder: ChildProcess | null = null;
  /** Names of `ip netns` namespaces made so far (root mode). */
  private readonly made: string[] = [];
  private destroying: Promise<void> | null = null;

  constructor(
    mode: 'root' | 'rootless',
    private readonly opts: TopologyOptions,
  ) {
    this.mode = mode;
    const v6 = opts.ipv6 !== false;
    const client = opts.client === true;
    this.addrs =
      mode === 'root'
        ? {
            host4: `${NET4.ctr}.1`,
            ctr4: `${NET4.ctr}.2`,
            ctrPrefix4: 24,
            host6: v6 ? `${NET6.ctr}1` : '',
            ctr6: v6 ? `${NET6.ctr}2` : '',
            ctrPrefix6: 64,
            hostClient4: client ? `${NET4.client}.1` : '',
            client4: client ? `${NET4.client}.2` : '',
            hostClient6: client && v6 ? `${NET6.client}1` : '',
            client6: client && v6 ? `${NET6.client}2` : '',
          }
        : { host4: '127.0.0.1', ctr4: '127.0.0.1', ctrPrefix4: 8, host6: '::1', ctr6: '::1', ctrPrefix6: 128, hostClient4: '', client4: '', hostClient6: '', client6: '' };
  }

  // -- setup --------------------------------------------------------------------------------------

  async setupRoot(hooks: TopologyHooks): Promise<void> {
    const suffix = randomBytes(4).toString('hex');
    const v6 = this.opts.ipv6 !== false;
    const roles: NsName[] = this.opts.client === true ? ['host', 'ctr', 'client'] : ['host', 'ctr'];
    for (const role of roles) {
      const name = `pf-${role}-${suffix}`;
      await this.ip(['netns', 'add', name]);
      this.made.push(name);
      this.names[role] = name;
      this.paths[role] = `/run/netns/${name}`;
    }
    await hooks.afterStep?.('netns', this);
    const host = this.names.host as string;
    const ctr = this.names.ctr as string;
    for (const role of roles) await this.ip(['-n', this.names[role] as string, 'link', 'set', 'lo', 'up']);

    await this.ip(['link', 'add', 'name', HOST_IF_CTR, 'netns', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ctr]);
    this.hostIfCtr = HOST_IF_CTR;
    if (this.opts.bridge === true) {
      await this.ip(['-n', host, 'link', 'add', 'name', BRIDGE, 'type', 'bridge']);
      await this.ip(['-n', host, 'link', 'set', HOST_IF_CTR, 'master', BRIDGE]);
      await this.ip(['-n', host, 'link', 'set', BRIDGE, 'up']);
      this.hostIfCtr = BRIDGE;
    }
    if (this.names.client !== null) {
      await this.ip(['link', 'add', 'name', HOST_IF_CLIENT, 'netns', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.names.client]);
    }
    await hooks.afterStep?.('links', this);

    const links: { peer: string; hostIf: string; net4: string; net6: string }[] = [{ peer: ctr, hostIf: this.hostIfCtr, net4: NET4.ctr, net6: NET6.ctr }];
    if (this.names.client !== null) links.push({ peer: this.names.client, hostIf: HOST_IF_CLIENT, net4: NET4.client, net6: NET6.client });
    for (const l of links) {
      await this.ip(['-n', host, 'addr', 'add', `${l.net4}.1/24`, 'dev', l.hostIf]);
      await this.ip(['-n', l.peer, 'addr', 'add', `${l.net4}.2/24`, 'dev', 'eth0']);
      if (v6) {
        // nodad: usable at once, no 1-2 s of "tentative" during which a bind fails.
        await this.ip(['-n', host, '-6', 'addr', 'add', `${l.net6}1/64`, 'dev', l.hostIf, 'nodad']);
        await this.ip(['-n', l.peer, '-6', 'addr', 'add', `${l.net6}2/64`, 'dev', 'eth0', 'nodad']);
      }
      await this.ip(['-n', host, 'link', 'set', l.hostIf === BRIDGE ? HOST_IF_CTR : l.hostIf, 'up']);
      await this.ip(['-n', l.peer, 'link', 'set', 'eth0', 'up']);
      await this.ip(['-n', l.peer, 'route', 'add', 'default', 'via', `${l.net4}.1`]);
      if (v6) await this.ip(['-n', l.peer, '-6', 'route', 'add', 'default', 'via', `${l.net6}1`]);
    }
    // The kernel raises a veth's carrier asynchronously (linkwatch, up to ~1 s): wait for it, so
    // the first packet a caller sends is not dropped.
    const watch: [string, string][] = [[host, HOST_IF_CTR], [ctr, 'eth0']];
    if (this.opts.bridge === true) watch.push([host, BRIDGE]);
    if (this.names.client !== null) watch.push([host, HOST_IF_CLIENT], [this.names.client, 'eth0']);
    for (const [ns, dev] of watch) await this.waitOperUp(ns, dev);
    await hooks.afterStep?.('addresses', this);

    // Forwarding in the host namespace only (net.* sysctls are per namespace).
    const sysctls = ['net.ipv4.ip_forward=1', ...(v6 ? ['net.ipv6.conf.all.forwarding=1'] : [])];
    await this.run(['nsenter', `--net=${this.paths.host as string}`, '--', 'sysctl', '-qw', ...sysctls]);
    await hooks.afterStep?.('forwarding', this);
  }

  private async waitOperUp(ns: string, dev: string): Promise<void> {
    const deadline = Date.now() + LINK_UP_TIMEOUT_MS;
    for (;;) {
      const { stdout } = await this.ip(['-n', ns, '-o', 'link', 'show', 'dev', dev]);
      if (/ state UP /.test(stdout)) return;
      if (Date.now() > deadline) throw setupError(`link ${dev} in ${ns} did not come up within ${LINK_UP_TIMEOUT_MS} ms: ${stdout.trim()}`, undefined);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async setupRootless(hooks: TopologyHooks): Promise<void> {
    this.uid = isRoot() ? ROOTLESS_UID : (process.getuid?.() ?? null);
    const argv = [...this.asUser(), 'unshare', '-Urn', '--', 'sh', '-c', 'ip link set lo up || exit 1; echo ready; read -r _; exit 0'];
    const [cmd, ...args] = argv as [string, ...string[]];
    const holder = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: toolEnv() });
    this.holder = holder;
    holder.stdin?.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      const fail = (why: string, cause?: unknown): void => {
        clearTimeout(timer);
        reject(setupError(`the rootless namespace holder (\`${argv.join(' ')}\`) ${why}${err.trim() === '' ? '' : `: ${err.trim()}`}`, cause));
      };
      const timer = setTimeout(() => fail(`did not report ready within ${HOLDER_READY_TIMEOUT_MS} ms`), HOLDER_READY_TIMEOUT_MS);
      holder.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
      holder.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('ready\n')) {
          clearTimeout(timer);
          resolve();
        }
      });
      holder.once('error', (e) => fail('could not be started', e));
      holder.once('exit', (code, signal) => fail(signal !== null ? `was killed by ${signal}` : `exited with code ${code}`));
    });
    const pid = holder.pid as number;
    this.paths.ctr = `/proc/${pid}/ns/net`;
    this.userns = `/proc/${pid}/ns/user`;
    await hooks.afterStep?.('netns', this);
  }

  // -- running things inside ----------------------------------------------------------------------

  /** Rootless commands run as the namespace's owner: `setpriv` down to it when we are root. */
  private asUser(): string[] {
    if (this.mode !== 'rootless' || !isRoot()) return [];
    return ['setpriv', `--reuid=${ROOTLESS_UID}`, `--regid=${ROOTLESS_UID}`, '--clear-groups'];
  }

  private enter(ns: NsName): string[] {
    if (this.destroying !== null) throw new PortferryError('PF_NETNS_SETUP', `the topology was destroyed; cannot run in its ${ns} namespace`);
    if (this.mode === 'rootless') {
      if (ns === 'host') return this.asUser();
      if (ns === 'client') throw new PortferryError('PF_NETNS_SETUP', 'a rootless topology has no client namespace', { hint: 'Use mode: "root" for a client namespace.' });
      return [...this.asUser(), 'nsenter', '-U', '-n', '--preserve-credentials', '-t', String(this.holder?.pid), '--'];
    }
    const p = this.paths[ns];
    if (p === null) throw new PortferryError('PF_NETNS_SETUP', `this topology has no ${ns} namespace`, { hint: 'Create it with { client: true }.' });
    return ['nsenter', `--net=${p}`, '--'];
  }

  exec(ns: NsName, cmd: string, args: readonly string[], opts: { input?: string } = {}): Promise<{ stdout: string; stderr: string }> {
    let prefix: string[];
    try {
      prefix = this.enter(ns);
    } catch (err) {
      return Promise.reject(err);
    }
    return runCommand([...prefix, cmd, ...args], { ...(opts.input === undefined ? {} : { input: opts.input }), env: toolEnv() });
  }

  spawn(ns: NsName, cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const [first, ...rest] = [...this.enter(ns), cmd, ...args] as [string, ...string[]];
    const child = spawn(first, rest, { env: toolEnv(), ...opts });
    // nsenter, setpriv and unshare exec: child.pid is the command itself.
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    child.once('error', () => this.children.delete(child));
    return child;
  }

  private run(argv: readonly string[]): Promise<{ stdout: string; stderr: string }> {
    return runCommand(argv, { env: toolEnv() });
  }

  private ip(args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
    return this.run(['ip', ...args]);
  }

  // -- cleanup ------------------------------------------------------------------------------------

  /**
   * Each call runs the (idempotent) teardown once more after any still under way: a destroy() from
   * a signal handler while the setup runs is followed by another when the setup stops, which
   * removes what the setup made meanwhile.
   */
  destroy(): Promise<void> {
    this.destroying = (this.destroying ?? Promise.resolve()).catch(() => undefined).then(() => this.teardown());
    return this.destroying;
  }

  /** Whether destroy() was called (setup stops at its next step). */
  get destroyed(): boolean {
    return this.destroying !== null;
  }

  private async teardown(): Promise<void> {
    const procs = [...this.children];
    if (this.holder !== null) procs.push(this.holder);
    await Promise.all(procs.map((c) => stopChild(c)));
    for (const name of this.made.reverse()) {
      await this.ip(['netns', 'del', name]).catch(() => undefined);
    }
    this.made.length = 0;
    live.delete(this);
  }

  /** For the process 'exit' event: synchronous, best effort. */
  teardownSync(): void {
    for (const c of [...this.children, ...(this.holder === null ? [] : [this.holder])]) {
      if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    for (const name of this.made.reverse()) {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore', env: toolEnv(), timeout: 10_000 });
      } catch {
        // best effort while exiting
      }
    }
    this.made.length = 0;
    live.delete(this);
  }
}

/** SIGTERM, then SIGKILL after a grace period; resolves when the process has exited. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const pid = child.pid;
  return new Promise((resolve) => {
    const kill = (sig: NodeJS.Signals): void => {
      try {
        process.kill(pid, sig);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => kill('SIGKILL'), KILL_GRACE_MS);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.stdin?.destroy();
    kill('SIGTERM');
  });
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

// -- process-wide cleanup ---------------------------------------------------------------------------

let exitHandlerInstalled = false;

function onExit(): void {
  for (const t of [...live]) t.teardownSync();
}

function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on('exit', onExit);
}

/** Destroys every live topology of this process (for a program's signal handler). */
export async function destroyAllTopologies(): Promise<void> {
  await Promise.allSettled([...live].map((t) => t.destroy()));
}

/**
 * Creates a topology; on any failure, everything made so far is removed before the error
 * (PF_NETNS_SETUP) is thrown. Root mode by default when running as root, rootless otherwise.
 */
export async function createTopology(opts: TopologyOptions = {}, hooks: TopologyHooks = {}): Promise<Topology> {
  const mode = opts.mode ?? (isRoot() ? 'root' : 'rootless');
  if (mode === 'root' && !isRoot()) {
    throw new PortferryError('PF_NOT_ROOT', 'a root-mode namespace topology needs root (ip netns add)', { hint: 'Run as root, or ask for { mode: "rootless" }.' });
  }
  if (mode === 'rootless' && opts.client === true) {
    throw new PortferryError('PF_NETNS_SETUP', 'a rootless topology has no client namespace', { hint: 'Use mode: "root" for a client namespace, or leave client out.' });
  }
  const topo = new TopologyImpl(mode, opts);
  live.add(topo);
  installExitHandler();
  try {
    if (mode === 'root') await topo.setupRoot(hooks);
    else await topo.setupRootless(hooks);
    if (topo.destroyed) throw setupError('it was destroyed while being created (destroyAllTopologies)', null);
    await hooks.afterStep?.('ready', topo);
  } catch (err) {
    await topo.destroy();
    if (err instanceof PortferryError && err.code === 'PF_NETNS_SETUP') throw err;
    throw setupError(err instanceof Error ? err.message : String(err), err);
  }
  return topo;
}
