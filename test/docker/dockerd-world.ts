// A real dockerd (Debian's docker.io) that cannot touch the host: its own network namespace and
// mount namespace (a holder process made with `unshare --net --mount --propagation private`,
// with a tmpfs over /run so /run/containerd and /run/docker are private), entered with
// `nsenter --net --mount` (not `ip netns exec`, which remounts /sys and hides the cgroups); its own
// containerd; no iptables, no masquerading, vfs storage; data, exec root, pid file and API socket
// in a temp dir; containers under a cgroup parent of their own. Everything is removed by PID, also
// when the test fails: containers, dockerd, containerd, shims and proxies (every process left in
// the private mount namespace), the holder (and so both namespaces), the cgroups, the temp dir.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, symlinkSync, writeFileSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import { until } from '../helpers/net.js';
import { pidAlive as alive } from '../netns/util.js';

export const DOCKER = '/usr/bin/docker';
const BUSYBOX = '/bin/busybox';

export interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(cmd: string, args: readonly string[], o: { input?: NodeJS.ReadableStream; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: o.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, ...(o.env !== undefined ? { env: o.env } : {}) }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
      resolve({ code, stdout, stderr: stderr + (err !== null && code === null ? String(err) : '') });
    });
    if (o.input !== undefined) o.input.pipe(child.stdin!);
    else child.stdin?.end();
  });
}


function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone
  }
}

async function stopPid(pid: number, graceMs: number): Promise<void> {
  if (!alive(pid)) return;
  kill(pid, 'SIGTERM');
  try {
    await until(() => !alive(pid), graceMs, `pid ${pid} to exit`);
  } catch {
    kill(pid, 'SIGKILL');
  }
}

export class DockerWorld {
  readonly dir = mkdtempSync('/tmp/pfd-');
  readonly cgroupParent = `pfd-${randomBytes(4).toString('hex')}`;
  readonly socket = path.join(this.dir, 'd.sock');
  readonly proxyLog = path.join(this.dir, 'proxy.log');
  private readonly children: ChildProcess[] = [];
  holderPid = 0;
  dockerdPid = 0;
  containerdPid = 0;

  private spawnLogged(name: string, cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const fd = openSync(path.join(this.dir, `${name}.log`), 'a');
    const child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env });
    closeSync(fd);
    this.children.push(child);
    return child;
  }

  log(name: string): string {
    try {
      return readFileSync(path.join(this.dir, `${name}.log`), 'utf8').split('\n').slice(-30).join('\n');
    } catch {
      return '';
    }
  }

  /** argv prefix that runs a command inside the private namespaces (net + mount). */
  enter(net = true, mount = true): string[] {
    return ['-t', String(this.holderPid), ...(net ? ['--net'] : []), ...(mount ? ['--mount'] : []), '--'];
  }

  /** If this test process dies before teardown ran: kill what we started, by PID (synchronous). */
  private readonly onExit = (): void => {
    for (const pid of [...this.processesInside(), this.dockerdPid, this.containerdPid, this.holderPid]) if (pid > 0) kill(pid, 'SIGKILL');
  };

  async start(proxyPath: string, proxyConfig: string): Promise<void> {
    process.once('exit', this.onExit);
    const holder = spawn('unshare', ['--net', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount -t tmpfs -o mode=755 tmpfs /run && mkdir /run/containerd /run/docker && ip link set lo up && echo ready && exec sleep infinity'], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.children.push(holder);
    this.holderPid = holder.pid ?? 0;
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.once('data', () => resolve());
      holder.once('exit', (code) => reject(new Error(`the namespace holder exited (${code})`)));
    });

    mkdirSync(path.join(this.dir, 'ctrd'));
    const toml = path.join(this.dir, 'containerd.toml');
    writeFileSync(toml, [
      'version = 2',
      `root = "${this.dir}/ctrd/root"`,
      'state = "/run/containerd"',
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      '  address = "/run/containerd/containerd.sock"',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${this.dir}/ctrd/opt"`,
      '',
    ].join('\n'));
    const containerd = this.spawnLogged('containerd', 'nsenter', [...this.enter(), 'containerd', '--config', toml]);
    this.containerdPid = containerd.pid ?? 0;
    const ctrdSock = `/proc/${this.holderPid}/root/run/containerd/containerd.sock`;
    await until(() => existsSync(ctrdSock), 30_000, `containerd's socket (log: ${this.log('containerd')})`);

    const daemonJson = path.join(this.dir, 'daemon.json');
    writeFileSync(daemonJson, JSON.stringify({ 'deprecated-key-path': path.join(this.dir, 'key.json'), 'userland-proxy': true, 'userland-proxy-path': proxyPath }));
    const env: NodeJS.ProcessEnv = { ...process.env, PORTFERRY_DOCKER_CONFIG: proxyConfig };
    delete env['NODE_OPTIONS']; // tap's hooks: the proxy runs as dockerd would run it
    const dockerd = this.spawnLogged('dockerd', 'nsenter', [
      ...this.enter(), 'dockerd', '--config-file', daemonJson, '--containerd', '/run/containerd/containerd.sock',
      '--data-root', path.join(this.dir, 'data'), '--exec-root', path.join(this.dir, 'x'), '--pidfile', path.join(this.dir, 'd.pid'),
      '-H', `unix://${this.socket}`, '--iptables=false', '--ip6tables=false', '--ip-masq=false', '--ip-forward=false',
      '--storage-driver', 'vfs', '--cgroup-parent', this.cgroupParent,
    ], env);
    this.dockerdPid = dockerd.pid ?? 0;
    await until(async () => {
      if (!alive(this.dockerdPid)) throw new Error(`dockerd exited: ${this.log('dockerd')}`);
      return existsSync(this.socket) && (await this.docker(['version'], 10_000)).code === 0;
    }, 60_000, 'dockerd to answer');
  }

  docker(args: readonly string[], timeoutMs = 60_000): Promise<Run> {
    return run(DOCKER, ['-H', `unix://${this.socket}`, ...args], { timeoutMs });
  }

  /** `docker import` of a busybox-static rootfs (+ lib symlinks so a bind-mounted /usr works). */
  async importImage(tag: string, files: Readonly<Record<string, string>>): Promise<void> {
    const root = path.join(this.dir, 'rootfs');
    for (const d of ['bin', 'usr', 'tmp', 'proc', 'sys', 'dev', 'etc', 'www']) mkdirSync(path.join(root, d), { recursive: true });
    copyFileSync(BUSYBOX, path.join(root, 'bin/busybox'));
    for (const applet of ['sh', 'httpd', 'nc', 'od', 'cat']) symlinkSync('busybox', path.join(root, 'bin', applet));
    symlinkSync('usr/lib', path.join(root, 'lib'));
    symlinkSync('usr/lib64', path.join(root, 'lib64'));
    for (const [name, text] of Object.entries(files)) writeFileSync(path.join(root, name), text, { mode: 0o755 });
    const tar = spawn('tar', ['-C', root, '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const r = await run(DOCKER, ['-H', `unix://${this.socket}`, 'import', '-', tag], { input: tar.stdout! });
    if (r.code !== 0) throw new Error(`docker import failed: ${r.stderr}`);
  }

  /** Runs a command in the private network namespace only (a client on its loopback). */
  inNetns(cmd: string, args: readonly string[], timeoutMs = 20_000): Promise<Run> {
    return run('nsenter', [...this.enter(true, false), cmd, ...args], { timeoutMs });
  }

  /** A long-running process in the private network namespace, killed by PID at teardown. */
  spawnInNetns(cmd: string, args: readonly string[]): ChildProcess {
    const child = spawn('nsenter', [...this.enter(true, false), cmd, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.children.push(child);
    return child;
  }

  /** PIDs of processes whose parent is dockerd and whose argv contains all of `words`. */
  dockerdChildren(...words: string[]): number[] {
    const out: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (ppid !== this.dockerdPid) continue;
        const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
        if (words.every((w) => argv.includes(w) || argv.some((a) => a.endsWith(w)))) out.push(Number(entry));
      } catch {
        // exited meanwhile
      }
    }
    return out;
  }

  argvOf(pid: number): string[] {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      return [];
    }
  }

  /** Every process in the private mount namespace (ours: containerd, dockerd, shims, proxies). */
  private processesInside(): number[] {
    if (this.holderPid <= 0) return [];
    let ns: string;
    try {
      ns = readlinkSync(`/proc/${this.holderPid}/ns/mnt`);
    } catch {
      return [];
    }
    const out: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || Number(entry) === this.holderPid) continue;
      try {
        if (readlinkSync(`/proc/${entry}/ns/mnt`) === ns) out.push(Number(entry));
      } catch {
        // exited meanwhile
      }
    }
    return out;
  }

  /** Cgroup directories named after our cgroup parent, deepest first. */
  private cgroupDirs(): string[] {
    const found: string[] = [];
    const walk = (dir: string, depth: number): void => {
      let entries: string[];
      try {
        entries = readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
      } catch {
        return;
      }
      for (const name of entries) {
        const p = path.join(dir, name);
        if (name === this.cgroupParent) {
          for (const sub of readdirSync(p, { withFileTypes: true })) if (sub.isDirectory()) found.push(path.join(p, sub.name));
          found.push(p);
        } else if (depth < 4) walk(p, depth + 1);
      }
    };
    walk('/sys/fs/cgroup', 0);
    return found;
  }

  async teardown(): Promise<void> {
    process.off('exit', this.onExit);
    if (this.dockerdPid > 0 && alive(this.dockerdPid)) {
      const ids = await this.docker(['ps', '-aq'], 15_000);
      const list = ids.stdout.split('\n').filter((s) => s !== '');
      if (list.length > 0) await this.docker(['rm', '-f', ...list], 30_000);
    }
    // Container processes (their own pid and mount namespaces) by our cgroup parent.
    for (const dir of this.cgroupDirs()) {
      try {
        for (const pid of readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter((s) => s !== '')) kill(Number(pid), 'SIGKILL');
      } catch {
        // not a leaf or gone
      }
    }
    await stopPid(this.dockerdPid, 15_000);
    await stopPid(this.containerdPid, 10_000);
    for (const pid of this.processesInside()) kill(pid, 'SIGKILL');
    for (const child of this.children) if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) kill(child.pid, 'SIGKILL');
    if (this.holderPid > 0) await until(() => !alive(this.holderPid), 5_000, 'the namespace holder to exit').catch(() => {});
    // A killed container's cgroup empties a moment later: retry, bounded.
    await until(() => {
      for (const dir of this.cgroupDirs()) {
        try {
          rmdirSync(dir);
        } catch {
          // still busy or gone
        }
      }
      return this.cgroupDirs().length === 0;
    }, 10_000, 'the cgroups to be removed').catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}
