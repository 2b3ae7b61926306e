// Footprint of one userland proxy process, and of 100 (one per published port, as dockerd runs
// them): time from exec to `0\n` on fd 3, RSS and PSS (/proc/PID/smaps_rollup) once ready,
// for portferry-docker-proxy and Debian's docker-proxy, interleaved. A measurement, not a test:
//   unshare --net sh -c 'ip link set lo up && node test/docker/footprint.mjs [reps] [ports]'
// (its own network namespace, so the ports it takes collide with nothing). Prints Markdown rows.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const reps = Number(process.argv[2] ?? 10);
const many = Number(process.argv[3] ?? 100);
const env = { ...process.env };
delete env.NODE_OPTIONS;
const tools = {
  'portferry-docker-proxy': [process.execPath, path.join(root, 'bin/portferry-docker-proxy.js')],
  'docker-proxy (Go, Debian 20.10)': ['/usr/sbin/docker-proxy'],
};

function start(cmd, port) {
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd[0], [...cmd.slice(1), '-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(port), '-container-ip', '127.0.0.1', '-container-port', '9'], { stdio: ['ignore', 'ignore', 'ignore', 'pipe'], env });
  return new Promise((resolve, reject) => {
    let status = '';
    child.stdio[3].on('data', (c) => {
      status += c;
      if (status.startsWith('0\n')) resolve({ child, readyMs: Number(process.hrtime.bigint() - t0) / 1e6, cpuMs: cpuMs(child.pid) });
    });
    child.once('exit', (code) => reject(new Error(`${cmd.join(' ')} exited ${code}: ${status}`)));
  });
}

/** CPU time (user + system) the process has used so far: independent of how busy the machine is. */
function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * (1000 / 100); // utime + stime, in USER_HZ (100)
}

function memory(pid) {
  const s = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
  const threads = Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return { rssKiB: kb('Rss'), pssKiB: kb('Pss'), threads };
}

async function stop(children) {
  await Promise.all(children.map((c) => new Promise((resolve) => {
    if (c.exitCode !== null) return resolve();
    c.once('exit', resolve);
    c.kill('SIGINT');
  })));
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const settle = () => new Promise((r) => setTimeout(r, 1000));
const single = Object.fromEntries(Object.keys(tools).map((k) => [k, []]));
let port = 40000;
for (let i = 0; i < reps; i++) {
  for (const [name, cmd] of Object.entries(tools)) {
    const { child, readyMs, cpuMs: cpu } = await start(cmd, port++);
    await settle();
    single[name].push({ readyMs, cpu, ...memory(child.pid) });
    await stop([child]);
  }
}
console.log(`| tool | time to ready (median of ${reps}) | CPU used until ready | RSS | PSS | threads |`);
console.log('|---|---|---|---|---|---|');
for (const [name, rows] of Object.entries(single)) {
  const m = (k) => median(rows.map((r) => r[k]));
  console.log(`| ${name} | ${m('readyMs').toFixed(0)} ms | ${m('cpu').toFixed(0)} ms | ${(m('rssKiB') / 1024).toFixed(1)} MiB | ${(m('pssKiB') / 1024).toFixed(1)} MiB | ${m('threads')} |`);
}

console.log(`\n| tool | ${many} ports: all ready (one after another, as dockerd starts them) | CPU used until ready | total RSS | total PSS |`);
console.log('|---|---|---|---|---|');
for (const [name, cmd] of Object.entries(tools)) {
  const children = [];
  let cpu = 0;
  const t0 = Date.now();
  for (let i = 0; i < many; i++) {
    const s = await start(cmd, port++);
    children.push(s.child);
    cpu += s.cpuMs;
  }
  const allReady = Date.now() - t0;
  await settle();
  const mem = children.map((c) => memory(c.pid));
  const sum = (k) => mem.reduce((a, m) => a + m[k], 0) / 1024;
  console.log(`| ${name} | ${(allReady / 1000).toFixed(1)} s | ${(cpu / 1000).toFixed(1)} s | ${sum('rssKiB').toFixed(0)} MiB | ${sum('pssKiB').toFixed(0)} MiB |`);
  await stop(children);
}
console.log(`\n${new Date().toISOString()}, Linux ${os.release()}, ${os.cpus().length} CPUs, Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
