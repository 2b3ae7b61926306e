// One TCP or UDP exchange from inside a namespace, and a TCP+UDP echo server to answer it: for
// tests that check which paths a published port serves (kernel rules, the CNI plugin).
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { execCommand } from '../../src/exec.js';

type Teardown = (fn: () => unknown) => void;

// TCP and UDP echo on every address; prints "ready" once both are bound. argv: tcpPort udpPort.
const ECHO = `
const net = require('node:net'), dgram = require('node:dgram');
const [tcpPort, udpPort] = process.argv.slice(1).map(Number);
const tcp = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(tcpPort, '::', () => {
  const udp = dgram.createSocket({ type: 'udp6' });
  udp.on('message', (m, r) => udp.send(m, r.port, r.address));
  udp.bind(udpPort, '::', () => console.log('ready'));
});`;

// One exchange: argv proto host port; prints the echoed text, or "failed: <reason>" (exit 1).
// The 2 s bound only ends a lost UDP exchange; it is not a timing assertion.
const CLIENT = `
const [proto, host, port] = process.argv.slice(1);
const fail = (why) => { console.log('failed: ' + why); process.exit(1); };
setTimeout(() => fail('no reply within 2 s'), 2000).unref();
if (proto === 'tcp') {
  const s = require('node:net').connect({ host, port: Number(port) }, () => s.end('hello-tcp'));
  let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => { console.log(got); process.exit(0); });
  s.on('error', (e) => fail(e.code));
} else {
  const u = require('node:dgram').createSocket(host.includes(':') ? 'udp6' : 'udp4');
  u.on('message', (m) => { console.log(String(m)); process.exit(0); });
  u.on('error', (e) => fail(e.code));
  u.connect(Number(port), host, () => u.send('hello-udp'));
}`;

/** `ip netns exec NAME` (root) as the prefix of a command inside a named namespace. */
export function inNetns(name: string): string[] {
  return ['ip', 'netns', 'exec', name];
}

/** Runs one exchange behind `prefix` (e.g. inNetns(name)); the echoed text or `failed: <why>`. */
export async function exchange(prefix: readonly string[], proto: 'tcp' | 'udp', host: string, port: number): Promise<string> {
  const r = await execCommand([...prefix, process.execPath, '-e', CLIENT, proto, host, String(port)], { timeoutMs: 10_000 });
  return r.stdout.trim() || `failed: ${r.stderr.trim() || `exit ${r.code}`}`;
}

/** Starts the echo server behind `prefix`; resolves once it is bound; killed by PID in teardown. */
export async function startEcho(teardown: Teardown, prefix: readonly string[], tcpPort = 80, udpPort = 53): Promise<ChildProcess> {
  const [cmd, ...args] = [...prefix, process.execPath, '-e', ECHO, String(tcpPort), String(udpPort)];
  const child = spawn(cmd as string, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill();
      await once(child, 'exit');
    }
  });
  let buf = '';
  child.stdout?.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: string) => {
      buf += d;
      if (buf.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`echo server exited (${String(code)}) before ready`)));
  });
  return child;
}
