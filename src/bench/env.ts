// The machine the bench runs on: where portferry lives, which tools and peers are installed (and
// installing the missing load tools as root), building pfgen, and the facts recorded with results.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, mkdirSync, copyFileSync, chmodSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const EXTRA_PATH = '/usr/local/sbin:/usr/sbin:/sbin';

/** The package root (where package.json of portferry is), from this file's place in src or dist. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'portferry') return dir;
      } catch {
        // keep looking
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the portferry package root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export function portferryVersion(root = packageRoot()): string {
  return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Absolute path of a command on PATH (plus the sbin directories), or null. */
export function which(cmd: string): string | null {
  const path = `${process.env['PATH'] ?? '/usr/bin:/bin'}:${EXTRA_PATH}`;
  for (const dir of path.split(':')) {
    if (dir === '') continue;
    const p = join(dir, cmd);
    if (existsSync(p)) return p;
  }
  return null;
}

let nofile: number | null = null;

/**
 * The descriptor limit given to every process the bench starts: 65,536, or the hard limit when
 * it is lower (raising a hard limit needs CAP_SYS_RESOURCE, which a container may not have).
 */
export function nofileLimit(): number {
  if (nofile === null) {
    const r = spawnSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' });
    const hard = (r.stdout ?? '').trim();
    nofile = hard === 'unlimited' ? 65_536 : Math.min(65_536, Number(hard) > 0 ? Number(hard) : 1024);
  }
  return nofile;
}

/** `prlimit` arguments that raise a command's descriptor limit as far as allowed. */
export function withNofile(argv: readonly string[]): [string, string[]] {
  const n = nofileLimit();
  return ['prlimit', [`--nofile=${n}:${n}`, '--', ...argv]];
}

/** Where `--install-peers` puts a docker-proxy taken out of the docker.io package (never dockerd). */
const DOCKER_PROXY_CACHE = '/var/cache/portferry-bench/docker-proxy';

export function findDockerProxy(explicit?: string): string | null {
  const candidates = [explicit, process.env['PORTFERRY_DOCKER_PROXY'], '/usr/sbin/docker-proxy', '/usr/libexec/docker/docker-proxy', '/usr/bin/docker-proxy', which('docker-proxy') ?? undefined, DOCKER_PROXY_CACHE];
  for (const c of candidates) if (c !== undefined && c !== '' && existsSync(c)) return c;
  return null;
}

export const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** Debian packages of the load tools the bench needs. */
const LOAD_TOOLS: Readonly<Record<string, string>> = { iperf3: 'iperf3', cc: 'gcc', prlimit: 'util-linux', nsenter: 'util-linux', taskset: 'util-linux', ip: 'iproute2', ss: 'iproute2', iptables: 'iptables', nft: 'nftables' };

/**
 * What the rootless scenario needs on top (`--scenario rootless`): rootlesskit and slirp4netns for
 * the container, pasta (Debian's passt), newuidmap (uidmap), the shadow tools for the throwaway user.
 */
export const ROOTLESS_TOOLS: Readonly<Record<string, string>> = {
  iperf3: 'iperf3', cc: 'gcc', prlimit: 'util-linux', nsenter: 'util-linux', unshare: 'util-linux', setpriv: 'util-linux', ip: 'iproute2', ss: 'iproute2',
  rootlesskit: 'rootlesskit', rootlessctl: 'rootlesskit', slirp4netns: 'slirp4netns', pasta: 'passt', newuidmap: 'uidmap', newgidmap: 'uidmap',
  useradd: 'passwd', userdel: 'passwd', usermod: 'passwd', groupdel: 'passwd',
};

function missingLoadTools(tools: Readonly<Record<string, string>> = LOAD_TOOLS): string[] {
  return Object.keys(tools).filter((t) => which(t) === null);
}

function aptInstall(packages: readonly string[], log: (line: string) => void): boolean {
  log(`installing with apt-get: ${packages.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const upd = spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env });
  if (upd.status !== 0) return false;
  const res = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], { stdio: 'ignore', env });
  return res.status === 0;
}

/**
 * Installs missing load tools (root only, Debian packages). Returns the apt-get command still
 * needed, or null when everything is there.
 */
export function ensureLoadTools(log: (line: string) => void, install: boolean, tools: Readonly<Record<string, string>> = LOAD_TOOLS): string | null {
  const missing = missingLoadTools(tools);
  if (missing.length === 0) return null;
  const pkgs = [...new Set(missing.map((t) => tools[t] as string))].sort();
  if (install && process.getuid?.() === 0 && which('apt-get') !== null) {
    aptInstall(pkgs, log);
    const still = missingLoadTools(tools);
    if (still.length === 0) return null;
    return `apt-get install -y ${[...new Set(still.map((t) => tools[t] as string))].sort().join(' ')}`;
  }
  return `apt-get install -y ${pkgs.join(' ')}`;
}

/**
 * `--install-peers`: socat, haproxy, nginx with its stream module from apt; docker-proxy is taken
 * out of the docker.io package with dpkg-deb (the package itself is not installed, so dockerd is
 * never installed nor started).
 */
export function installPeers(log: (line: string) => void): void {
  const missing: string[] = [];
  if (which('socat') === null) missing.push('socat');
  if (which('haproxy') === null) missing.push('haproxy');
  if (which('nginx') === null) missing.push('nginx');
  if (!existsSync(NGINX_STREAM_MODULE)) missing.push('libnginx-mod-stream');
  if (missing.length > 0) aptInstall(missing, log);
  if (findDockerProxy() === null) {
    const dir = mkdtempSync(join(tmpdir(), 'pf-bench-deb-'));
    try {
      log('fetching docker-proxy from the docker.io package (apt-get download; not installed, dockerd never started)');
      const dl = spawnSync('apt-get', ['download', 'docker.io'], { cwd: dir, stdio: 'ignore' });
      const deb = readdirSync(dir).find((f) => f.endsWith('.deb'));
      if (dl.status !== 0 || deb === undefined) {
        log('could not download docker.io (apt-get update first?)');
        return;
      }
      const x = join(dir, 'x');
      execFileSync('dpkg-deb', ['-x', join(dir, deb), x]);
      const found = ['usr/sbin/docker-proxy', 'usr/libexec/docker/docker-proxy', 'usr/bin/docker-proxy'].map((p) => join(x, p)).find((p) => existsSync(p));
      if (found === undefined) {
        log('the docker.io package holds no docker-proxy');
        return;
      }
      mkdirSync(dirname(DOCKER_PROXY_CACHE), { recursive: true });
      copyFileSync(found, DOCKER_PROXY_CACHE);
      chmodSync(DOCKER_PROXY_CACHE, 0o755);
      writeFileSync(`${DOCKER_PROXY_CACHE}.source`, `${deb}\n`);
      log(`docker-proxy: ${DOCKER_PROXY_CACHE} (from ${deb})`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

/** Builds pfgen (our own C generator) into a fresh temporary directory; returns binary and dir. */
export function buildPfgen(): { binary: string; dir: string } {
  const src = join(packageRoot(), 'bench', 'gen', 'pfgen.c');
  if (!existsSync(src)) throw new Error(`the load generator source is missing: ${src}`);
  const dir = mkdtempSync(join(tmpdir(), 'pf-bench-'));
  const binary = join(dir, 'pfgen');
  try {
    execFileSync('cc', ['-O2', '-pthread', '-o', binary, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? String(err);
    throw new Error(`building ${src} with cc failed: ${stderr.trim()}`);
  }
  return { binary, dir };
}

function firstLine(cmd: string, args: readonly string[], pattern: RegExp): string | null {
  const r = spawnSync(cmd, [...args], { encoding: 'utf8', env: { ...process.env, PATH: `${process.env['PATH'] ?? ''}:${EXTRA_PATH}` } });
  if (r.error !== undefined) return null;
  const m = pattern.exec(`${r.stdout ?? ''}\n${r.stderr ?? ''}`);
  return m?.[1] ?? null;
}

/** Versions of the tools involved, for the record. */
export function toolVersions(dockerProxy: string | null): Record<string, string> {
  const v: Record<string, string> = {};
  const add = (name: string, value: string | null): void => {
    if (value !== null) v[name] = value;
  };
  add('iperf3', firstLine('iperf3', ['-v'], /iperf (\S+)/));
  add('cc', firstLine('cc', ['--version'], /^\S+ (.*)$/m));
  add('iptables', firstLine('iptables', ['-V'], /iptables (v\S+(?: \([^)]+\))?)/));
  add('nft', firstLine('nft', ['-v'], /nftables (v\S+)/));
  add('socat', firstLine('socat', ['-V'], /socat version (\S+)/));
  add('haproxy', firstLine('haproxy', ['-v'], /HAProxy version (\S+)/));
  add('nginx', firstLine('nginx', ['-v'], /nginx\/(\S+)/));
  if (dockerProxy !== null) {
    const dpkg = firstLine('dpkg-query', ['-W', '-f', '${Version}', 'docker.io'], /^(\S+)$/m);
    let source: string | null = null;
    try {
      source = readFileSync(`${dockerProxy}.source`, 'utf8').trim();
    } catch {
      // installed by its package, not by us
    }
    add('docker-proxy', dpkg ?? (source !== null ? `from ${source}` : dockerProxy));
  }
  return v;
}

/** Versions of the rootless scenario's tools, for the record. */
export function rootlessToolVersions(): Record<string, string> {
  const v: Record<string, string> = {};
  const add = (name: string, value: string | null): void => {
    if (value !== null) v[name] = value;
  };
  add('iperf3', firstLine('iperf3', ['-v'], /iperf (\S+)/));
  add('cc', firstLine('cc', ['--version'], /^\S+ (.*)$/m));
  add('rootlesskit', firstLine('rootlesskit', ['--version'], /rootlesskit version (\S+)/));
  add('slirp4netns', firstLine('slirp4netns', ['--version'], /slirp4netns version (\S+)/));
  // pasta prints no version of its own in Debian's 2023 build: the package's.
  add('pasta', firstLine('dpkg-query', ['-W', '-f', '${Version}', 'passt'], /^(\S+)$/m) ?? firstLine('pasta', ['--version'], /pasta (\S+)/));
  return v;
}

export function machineFacts(): { kernel: string; cpus: number; cpuModel: string; node: string } {
  const list = cpus();
  return { kernel: release(), cpus: list.length, cpuModel: (list[0]?.model ?? 'unknown').replace(/\s+/g, ' ').trim(), node: process.version };
}
