// The rootless scenario's machine: a throwaway unprivileged user with subordinate ids (what
// rootlesskit, podman and pasta need), /dev/net/tun opened up for it while the run lasts (slirp4netns
// and pasta make tap devices as that user), rootless containers made by rootlesskit + slirp4netns
// as that user, and a user namespace holding ten network namespaces (the way podman lays out one
// user's containers). Everything is undone by destroy() — the user's processes killed by PID, the
// user, its group, its subordinate ids and its files removed, the device's mode restored — also
// synchronously on process exit, as a last resort.
import { execFileSync, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PortferryError } from '../errors.js';
import { runCommand } from '../exec.js';
import type { Topology } from '../netns/topology.js';
import { startServers, type BackendPorts, type Backends, type ServerPlace } from './backends.js';
import { nofileLimit } from './env.js';
import { LineReader, alive, stopTree } from './proc.js';

/** Every user the bench makes is named `pf-bench-<8 hex>` (and removed at the end). */
export const USER_PREFIX = 'pf-bench-';
const TUN = '/dev/net/tun';
const READY_TIMEOUT_MS = 15_000;

export interface BenchUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs a shadow tool, retrying while another process holds /etc/passwd's lock (exit 10). */
function shadowTool(argv: readonly string[]): { status: number | null; stderr: string } {
  for (let i = 0; ; i++) {
    const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
    if ((r.status !== 10 && r.status !== 8) || i >= 20) return { status: r.status, stderr: `${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
    // 10: the files are locked by someone else; 8 (userdel): a process of the user is still exiting.
    execFileSync('sleep', ['0.25']);
  }
}

function subIdLines(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  } catch {
    return [];
  }
}

/** PIDs of every process whose real uid is `uid` (the bench's user runs nothing but what we started). */
function processesOf(uid: number): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${name}/status`, 'utf8'));
      if (m !== null && Number(m[1]) === uid && alive(Number(name))) found.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/**
 * The user, the device mode and the work directory of a rootless run. Create with
 * RootlessMachine.create(); destroy() is idempotent and removes what was made so far.
 */
export class RootlessMachine {
  user: BenchUser | null = null;
  /** The user's private directory (state directories, config files); removed at the end. */
  readonly workDir: string;
  /** /dev/net/tun's mode before we changed it (null: unchanged). */
  private tunMode: number | null = null;
  private name: string | null = null;
  private destroying: Promise<void> | null = null;
  private readonly onExit = (): void => this.destroySync();

  private constructor(workDir: string) {
    this.workDir = workDir;
    process.on('exit', this.onExit);
  }

  static create(workDir: string, log: (line: string) => void): RootlessMachine {
    const m = new RootlessMachine(workDir);
    try {
      m.setup(log);
    } catch (err) {
      m.destroySync();
      throw new PortferryError('PF_NETNS_SETUP', `setting up the rootless scenario's user failed: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
        hint: 'The bench makes a user `pf-bench-<hex>` with useradd and subordinate ids, and opens /dev/net/tun for it; check that the shadow tools (package passwd) work here.',
      });
    }
    return m;
  }

  private setup(log: (line: string) => void): void {
    const name = `${USER_PREFIX}${randomBytes(4).toString('hex')}`;
    // Recorded before useradd runs: a useradd that half-succeeds is undone too.
    this.name = name;
    const add = shadowTool(['useradd', '--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', '--comment', 'portferry bench, temporary, removed at the end of the run', name]);
    if (add.status !== 0) throw new Error(`useradd ${name} failed (${add.status}): ${add.stderr}`);
    const ids = execFileSync('id', [name], { encoding: 'utf8' });
    const uid = Number(/uid=(\d+)/.exec(ids)?.[1]);
    const gid = Number(/gid=(\d+)/.exec(ids)?.[1]);
    this.user = { name, uid, gid };
    // useradd gives a normal user subordinate ids when login.defs allows it; else add a free range.
    const has = (file: string): boolean => subIdLines(file).some((l) => l.startsWith(`${name}:`) || l.startsWith(`${uid}:`));
    if (!has('/etc/subuid') || !has('/etc/subgid')) {
      const end = (file: string): number => Math.max(100_000, ...subIdLines(file).map((l) => Number(l.split(':')[1]) + Number(l.split(':')[2])).filter((n) => Number.isFinite(n)));
      const from = Math.max(end('/etc/subuid'), end('/etc/subgid'));
      const range = `${from}-${from + 65_535}`;
      const mod = shadowTool(['usermod', '--add-subuids', range, '--add-subgids', range, name]);
      if (mod.status !== 0) throw new Error(`usermod --add-subuids ${range} ${name} failed: ${mod.stderr}`);
    }
    mkdirSync(this.workDir, { recursive: true, mode: 0o700 });
    chownSync(this.workDir, uid, gid);
    chmodSync(this.workDir, 0o700);
    log(`user ${name} (uid ${uid}) with subordinate ids; work directory ${this.workDir}`);
    // slirp4netns and pasta open the tun device as the user (inside its user namespace, where the
    // device's root owner is not mapped): it must be world read-write for the run.
    if (!existsSync(TUN)) throw new Error(`${TUN} does not exist: slirp4netns and pasta need the tun driver`);
    const mode = statSync(TUN).mode & 0o7777;
    if ((mode & 0o006) !== 0o006) {
      this.tunMode = mode;
      chmodSync(TUN, mode | 0o006);
      log(`${TUN}: mode ${mode.toString(8)} → ${(mode | 0o006).toString(8)} for the run (restored at the end)`);
    }
  }

  /** The command prefix that runs a command as the user (from root), with a home of its own. */
  asUser(): string[] {
    const u = this.user;
    if (u === null) throw new Error('the bench user was not created');
    const n = nofileLimit();
    return [
      'prlimit', `--nofile=${n}:${n}`, '--',
      'setpriv', `--reuid=${u.uid}`, `--regid=${u.gid}`, '--clear-groups', '--',
      'env', `HOME=${this.workDir}`, `USER=${u.name}`, `LOGNAME=${u.name}`, `XDG_RUNTIME_DIR=${this.workDir}`, `TMPDIR=${this.workDir}`,
    ];
  }

  /** Writes a file the user may read. */
  writeFile(name: string, text: string): string {
    const p = join(this.workDir, name);
    writeFileSync(p, text, { mode: 0o644 });
    return p;
  }

  destroy(): Promise<void> {
    this.destroying ??= Promise.resolve().then(() => this.destroySync());
    return this.destroying;
  }

  /** Idempotent; synchronous so that the process 'exit' handler can run it too. */
  destroySync(): void {
    process.off('exit', this.onExit);
    const u = this.user;
    if (u !== null) {
      // Every process of the user is one of ours (rootlesskit, its child, slirp4netns, pasta,
      // portferry, servers): SIGKILL them by PID until none is left.
      for (let i = 0; i < 40; i++) {
        const left = processesOf(u.uid);
        if (left.length === 0) break;
        for (const pid of left) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
        execFileSync('sleep', ['0.05']);
      }
      // Files the user's programs may have left in the shared temporary directories.
      for (const dir of ['/tmp', '/var/tmp', '/dev/shm']) {
        let entries: string[] = [];
        try {
          entries = readdirSync(dir);
        } catch {
          continue;
        }
        for (const e of entries) {
          try {
            if (statSync(join(dir, e)).uid === u.uid) rmSync(join(dir, e), { recursive: true, force: true });
          } catch {
            // gone meanwhile
          }
        }
      }
    }
    rmSync(this.workDir, { recursive: true, force: true });
    if (this.name !== null) {
      const name = this.name;
      if (spawnSync('id', [name], { stdio: 'ignore' }).status === 0) shadowTool(['userdel', name]);
      if (spawnSync('getent', ['group', name], { stdio: 'ignore' }).status === 0) shadowTool(['groupdel', name]);
      // userdel removes the subordinate ranges; make sure, without touching anyone else's line.
      for (const file of ['/etc/subuid', '/etc/subgid']) {
        const lines = subIdLines(file);
        const kept = lines.filter((l) => !l.startsWith(`${name}:`) && !(u !== null && l.startsWith(`${u.uid}:`)));
        if (kept.length !== lines.length) writeFileSync(file, kept.map((l) => `${l}\n`).join(''));
      }
      this.name = null;
    }
    if (this.tunMode !== null) {
      try {
        chmodSync(TUN, this.tunMode);
      } catch {
        // the device is gone: nothing to restore
      }
      this.tunMode = null;
    }
    this.user = null;
  }
}

/** A rootless container: rootlesskit + slirp4netns as the bench user, the servers inside. */
export interface Container {
  readonly driver: 'builtin' | 'slirp4netns';
  /** rootlesskit's parent process (its tree: the child in the namespaces, slirp4netns, the holder). */
  readonly proc: ChildProcess;
  readonly pid: number;
  /** rootlesskit's child, inside the container's user and network namespaces. */
  readonly childPid: number;
  readonly netns: string;
  readonly userns: string;
  /** rootlessctl's API socket. */
  readonly api: string;
  readonly servers: Backends;
  readonly stderr: LineReader;
}

/** The servers' place inside a namespace the user owns: nsenter'd as the user. */
function placeIn(topology: Topology, machine: RootlessMachine, what: string, targetPid: number, userNsOnly = false): ServerPlace {
  return {
    what,
    spawn: (argv, opts) => spawnAsUser(topology, machine, ['nsenter', '-U', ...(userNsOnly ? [] : ['-n']), '--preserve-credentials', '-t', String(targetPid), '--', ...argv], opts),
    listeningTcp: async () => (await runCommand(['nsenter', `--net=/proc/${targetPid}/ns/net`, '--', 'ss', '-Hltn'])).stdout,
  };
}

/** Runs a command as the user in the bench's host namespace. */
export function spawnAsUser(topology: Topology, machine: RootlessMachine, argv: readonly string[], opts: SpawnOptions): ChildProcess {
  const [first, ...rest] = [...machine.asUser(), ...argv] as [string, ...string[]];
  return topology.spawn('host', first, rest, opts);
}

export async function execAsUser(topology: Topology, machine: RootlessMachine, argv: readonly string[]): Promise<string> {
  const [first, ...rest] = [...machine.asUser(), ...argv] as [string, ...string[]];
  return (await topology.exec('host', first, rest)).stdout;
}

/**
 * Starts `rootlesskit --net=slirp4netns --disable-host-loopback --port-driver=DRIVER` as the user
 * (its command a shell that says ready and sleeps), then iperf3 and pfgen inside its namespaces.
 */
export async function startContainer(topology: Topology, machine: RootlessMachine, driver: 'builtin' | 'slirp4netns', pfgen: string, ports: BackendPorts, started: (c: ChildProcess) => void): Promise<Container> {
  const stateDir = join(machine.workDir, `rootlesskit-${driver}`);
  const proc = spawnAsUser(
    topology,
    machine,
    ['rootlesskit', '--net=slirp4netns', '--disable-host-loopback', `--port-driver=${driver}`, `--state-dir=${stateDir}`, 'sh', '-c', 'echo ready; exec sleep infinity'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  started(proc);
  const out = new LineReader(proc.stdout);
  const stderr = new LineReader(proc.stderr);
  const line = await out.waitFor((l) => l === 'ready', READY_TIMEOUT_MS);
  const childFile = join(stateDir, 'child_pid');
  const api = join(stateDir, 'api.sock');
  for (const deadline = Date.now() + READY_TIMEOUT_MS; line !== null && !(existsSync(childFile) && existsSync(api)) && Date.now() < deadline; ) await sleep(50);
  if (line === null || !existsSync(childFile) || !existsSync(api)) {
    await stopTree(proc.pid === undefined ? [] : [proc.pid]);
    throw new Error(`rootlesskit (--port-driver=${driver}) did not start: ${stderr.text().trim().split('\n').slice(-3).join(' / ') || 'no ready line, child_pid or api.sock within 15 s'}`);
  }
  const childPid = Number(readFileSync(childFile, 'utf8').trim());
  const servers = await startServers(placeIn(topology, machine, `the rootless container (${driver})`, childPid), pfgen, ports, started);
  return { driver, proc, pid: proc.pid as number, childPid, netns: `/proc/${childPid}/ns/net`, userns: `/proc/${childPid}/ns/user`, api, servers, stderr };
}

/** Why a container is broken (rootlesskit exited), or null. */
export function containerHealth(c: Container): string | null {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null || !alive(c.pid)) {
    return `rootlesskit (--port-driver=${c.driver}) exited (${c.proc.exitCode ?? c.proc.signalCode}): ${c.stderr.lines.slice(-2).join(' / ').slice(0, 300)}`;
  }
  return null;
}

/**
 * One user namespace owning `count` network namespaces, each with `pfgen serve` on its loopback:
 * a user's containers as podman lays them out. `netns[i]` is `/proc/<server>/ns/net`.
 */
export interface NamespaceWorld {
  readonly netns: readonly string[];
  readonly tcpPort: number;
}

export async function startNamespaceWorld(topology: Topology, machine: RootlessMachine, pfgen: string, count: number, tcpPort: number, started: (c: ChildProcess) => void): Promise<NamespaceWorld> {
  const holder = spawnAsUser(topology, machine, ['unshare', '--user', '--map-root-user', '--', 'sh', '-c', 'echo ready; read -r _'], { stdio: ['pipe', 'pipe', 'pipe'] });
  started(holder);
  holder.stdin?.on('error', () => {});
  const err = new LineReader(holder.stderr);
  if ((await new LineReader(holder.stdout).waitFor((l) => l === 'ready', READY_TIMEOUT_MS)) === null) {
    throw new Error(`the user namespace holder did not start: ${err.text().trim() || 'no ready line within 15 s'}`);
  }
  const place = placeIn(topology, machine, 'the ten-namespace world', holder.pid as number, true);
  const netns: string[] = [];
  for (let i = 0; i < count; i++) {
    // A network namespace of its own under the holder's user namespace; the server holds it.
    const child = place.spawn(['unshare', '--net', '--', 'sh', '-c', `ip link set lo up && exec ${pfgen} serve ${tcpPort}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    started(child);
    const e = new LineReader(child.stderr);
    if ((await new LineReader(child.stdout).waitFor((l) => l.includes('"ready"'), READY_TIMEOUT_MS)) === null) {
      throw new Error(`server ${i + 1} of the ten-namespace world did not start: ${e.text().trim() || 'no ready line within 15 s'}`);
    }
    netns.push(`/proc/${child.pid as number}/ns/net`);
  }
  return { netns, tcpPort };
}
