// The internals fence, second file: the nsSockets fast path (src/internals.ts holds its state,
// structural check and report; every use of Node's private internals for it is here).
//
// native/pf-nsd makes sockets inside network namespaces and sends them over a unix socket with
// SCM_RIGHTS (native/pf-nsd.c describes the wire format). Node's public API can receive handles
// only through child_process IPC, which holds every later message until the receiver has
// acknowledged each handle (one round trip between two event loops per socket). libuv itself
// receives descriptors on any pipe opened in IPC mode: here a `pipe_wrap` Pipe of type IPC
// connects to the helper's socket, and each read callback brings at most one `pendingHandle`, a
// TCP or UDP handle Node made for the received descriptor (LibuvStreamWrap::OnUvRead). How the
// kernel splits reads (checked on Linux 6.x): a read ends right after a message that carries
// descriptors, and messages without any glue to the next; a read shorter than a message gets
// the message's descriptors with its first bytes. So each fixed 16-byte record is parsed from
// the byte stream, and a SOCKET record takes the oldest received handle (a FIFO): a handle always
// arrives no later than the end of its record, whatever the split. One more libuv rule: after a
// read shorter than its buffer, a hang-up is taken for the end of the data (uv__stream_io), and
// with descriptors every read is short, so records written just before the helper exits can be
// lost; the helper therefore waits for us to close the channel after its last ERROR record.
//
// Relies on: process.binding('pipe_wrap') Pipe (IPC type, connect, readStart, useUserBuffer,
// writeBuffer, the pendingHandle property), PipeConnectWrap; ('stream_wrap') WriteWrap and
// streamBaseState; ('tcp_wrap') TCPConnectWrap and TCP connect/connect6 on a received handle;
// net.Socket({ handle }) as net.Server makes for accepted handles; dgram's bind(handle) as
// child_process uses for received UDP handles. Checked structurally (internals.ts,
// checkNsSockets), and end to end by nsdProbe() when the first helper starts.
// Over 350 lines on purpose: the project's rule is that every use of internals lives in the fence.
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import util from 'node:util';
import { countFastPathUse, fenceBinding, nsdBinaryPath } from './internals.js';

/** Record kinds (helper → forwarder) and request ops (forwarder → helper): native/pf-nsd.c. */
export const NSD = { SOCKET: 1, DONE: 2, ERROR: 3, HELLO: 4, READY: 5, OP_OPEN_NS: 1, OP_SOCKETS: 2, OP_CLOSE_NS: 3, MAX_BATCH: 64, MAX_PATH: 4095 } as const;

export type NsFamily = 4 | 6;
export type NsProto = 'tcp' | 'udp';

/** An unconnected TCP socket made inside a namespace: Node's TCP handle for it (opaque). */
export interface NsTcpHandle {
  readonly __nsTcpHandle?: never;
}
/** A bound, unconnected UDP socket made inside a namespace: Node's UDP handle (opaque). */
export interface NsUdpHandle {
  readonly __nsUdpHandle?: never;
}

export interface NsdRecord {
  readonly id: number;
  readonly kind: number;
  readonly family: number;
  /** 1 tcp, 2 udp (SOCKET records). */
  readonly type: number;
  /** ERROR: errno; DONE: a count or a namespace index; HELLO: the helper's pid. */
  readonly value: number;
}

interface PipeHandle {
  onread: (this: PipeHandle, ab: ArrayBuffer | undefined) => void;
  pendingHandle?: unknown;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: object, buf: Uint8Array): number;
  connect(req: object, name: string): number;
  useUserBuffer(buf: Uint8Array): void;
  close(cb?: () => void): void;
  unref?(): void;
  ref?(): void;
  [kChannel]?: NsdChannel;
}
interface RawTcp {
  connect(req: object, ip: string, port: number): number;
  connect6(req: object, ip: string, port: number): number;
  close(cb?: () => void): void;
}

interface Bindings {
  readonly Pipe: new (type: number) => PipeHandle;
  readonly IPC: number;
  readonly PipeConnectWrap: new () => { oncomplete: unknown };
  readonly TCP: abstract new (...a: never[]) => object;
  readonly UDP: abstract new (...a: never[]) => object;
  readonly TCPConnectWrap: new () => { oncomplete: unknown; done?: ((status: number) => void) | null };
  readonly WriteWrap: new () => { oncomplete: unknown; buffer?: Uint8Array | null; channel?: NsdChannel | null };
  readonly streamState: Int32Array;
  readonly kReadBytes: number;
  readonly kAsync: number;
}

let bindings: Bindings | null = null;
function b(): Bindings {
  if (bindings !== null) return bindings;
  const pipe = fenceBinding('pipe_wrap');
  const tcp = fenceBinding('tcp_wrap');
  const sw = fenceBinding('stream_wrap');
  const udp = fenceBinding('udp_wrap');
  bindings = {
    Pipe: pipe['Pipe'] as Bindings['Pipe'],
    IPC: (pipe['constants'] as Record<string, number>)['IPC'] as number,
    PipeConnectWrap: pipe['PipeConnectWrap'] as Bindings['PipeConnectWrap'],
    TCP: tcp['TCP'] as Bindings['TCP'],
    UDP: udp['UDP'] as Bindings['UDP'],
    TCPConnectWrap: tcp['TCPConnectWrap'] as Bindings['TCPConnectWrap'],
    WriteWrap: sw['WriteWrap'] as Bindings['WriteWrap'],
    streamState: sw['streamBaseState'] as Int32Array,
    kReadBytes: sw['kReadBytesOrError'] as number,
    kAsync: sw['kLastWriteWasAsync'] as number,
  };
  return bindings;
}

const kChannel = Symbol('nsd channel');
const UV_EOF = -4095;
const REC = 16;
const READ_BUFFER = 64 * 1024;

/** What a channel reports. */
export interface NsdChannelOwner {
  /** One record; SOCKET records come with their handle (a TCP or UDP handle). */
  nsdRecord(rec: NsdRecord, handle: NsTcpHandle | NsUdpHandle | null): void;
  /** The channel is gone (helper exited, EOF, a protocol error): `why` says what was seen. */
  nsdClosed(why: string): void;
}

/**
 * One running native helper and the IPC-mode pipe to it. start() spawns it and connects; records
 * go to the owner. close() ends the channel (the helper exits on EOF).
 */
export class NsdChannel {
  readonly child: ChildProcess;
  private pipe: PipeHandle | null = null;
  private readonly handles: object[] = [];
  private carry: Buffer = Buffer.alloc(0);
  private readonly buf = Buffer.allocUnsafe(READ_BUFFER);
  private closedWhy: string | null = null;
  private eofSeen = false;
  private exitWhy: string | null = null;
  private dir: string | null;
  stderrTail = '';
  /** Resolves when the helper process has exited (or could not be started). */
  readonly exited: Promise<void>;

  /** Spawns the helper; `userns` (rootless) is the user namespace it joins. */
  constructor(userns: string | null, private readonly owner: NsdChannelOwner) {
    this.dir = mkdtempSync(path.join(shortTmp(), 'pf-nsd-'));
    const sock = path.join(this.dir, 's');
    const args = userns === null ? [sock] : [sock, userns];
    this.child = spawn(nsdBinaryPath(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const child = this.child;
    this.exited = new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    child.unref();
    const stdout = child.stdout as net.Socket | null;
    const stderr = child.stderr as net.Socket | null;
    stdout?.unref();
    stderr?.unref();
    stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderrTail = (this.stderrTail + d).slice(-2048)));
    let out = '';
    stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (this.pipe === null && out.includes('listening\n')) this.connect(sock);
    });
    child.once('error', (err) => this.fail(`could not be started (${err.message})`));
    child.once('exit', (code, signal) => this.exitedWith(signal !== null ? `was killed by ${signal}` : `exited with code ${code}`));
  }

  private connect(sock: string): void {
    const { Pipe, IPC, PipeConnectWrap } = b();
    const pipe = new Pipe(IPC);
    pipe[kChannel] = this;
    this.pipe = pipe;
    const req = new PipeConnectWrap();
    req.oncomplete = (status: number): void => {
      this.removeDir();
      if (this.closedWhy !== null) return;
      if (status !== 0) return this.fail(`could not be reached (${errName(status)})`);
      pipe.onread = onNsdRead;
      pipe.useUserBuffer(this.buf);
      const err = pipe.readStart();
      if (err !== 0) this.fail(`could not be read (${errName(err)})`);
    };
    const err = pipe.connect(req, sock);
    if (err !== 0) this.fail(`could not be reached (${errName(err)})`);
  }

  /** Keeps the event loop alive (requests waiting) or not. */
  ref(on: boolean): void {
    if (on) this.pipe?.ref?.();
    else this.pipe?.unref?.();
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get closed(): boolean {
    return this.closedWhy !== null;
  }

  /** Sends one request; false when the channel is closed or the write failed. */
  send(id: number, op: number, family: number, type: number, ns: number, count: number, pathArg?: string): boolean {
    const pipe = this.pipe;
    if (pipe === null || this.closedWhy !== null) return false;
    const extra = pathArg === undefined ? null : Buffer.from(pathArg, 'utf8');
    const msg = Buffer.alloc(REC + (extra?.length ?? 0));
    msg.writeUInt32LE(id >>> 0, 0);
    msg[4] = op;
    msg[5] = family;
    msg[6] = type;
    msg.writeUInt16LE(ns, 8);
    msg.writeUInt16LE(extra === null ? count : extra.length, 10);
    if (extra !== null) extra.copy(msg, REC);
    const { WriteWrap, streamState, kAsync } = b();
    const req = new WriteWrap();
    req.oncomplete = onNsdWritten;
    req.buffer = msg;
    req.channel = this;
    const err = pipe.writeBuffer(req, msg);
    if (err !== 0) {
      this.fail(`could not be written to (${errName(err)})`);
      return false;
    }
    if (streamState[kAsync] === 0) req.buffer = null;
    return true;
  }

  /** The bytes of one read, and the handle that came with it (if any). */
  received(n: number, handle: unknown): void {
    if (handle !== undefined && handle !== null) this.handles.push(handle as object);
    let data = this.buf.subarray(0, n);
    if (this.carry.length > 0) {
      data = Buffer.concat([this.carry, data]);
      this.carry = Buffer.alloc(0);
    }
    let off = 0;
    for (; off + REC <= data.length; off += REC) {
      if (this.closedWhy !== null) return;
      const rec: NsdRecord = { id: data.readUInt32LE(off), kind: data[off + 4] as number, family: data[off + 5] as number, type: data[off + 6] as number, value: data.readInt32LE(off + 8) };
      let h: object | null = null;
      if (rec.kind === NSD.SOCKET) {
        h = this.handles.shift() ?? null;
        const want = rec.type === 1 ? b().TCP : b().UDP;
        if (h === null || !(h instanceof want)) {
          if (h !== null) closeHandle(h);
          return this.fail(`sent a ${rec.type === 1 ? 'TCP' : 'UDP'} socket record without the matching handle (protocol error)`);
        }
      }
      this.owner.nsdRecord(rec, h);
    }
    if (off < data.length) this.carry = Buffer.from(data.subarray(off));
  }

  /**
   * The channel ended: the helper is exiting. Its exit status says why (killed by a signal, an
   * exit code after a malformed request), so wait a moment for it before reporting `why`.
   */
  eof(why: string): void {
    if (this.closedWhy !== null || this.eofSeen) return;
    this.eofSeen = true;
    if (this.exitWhy !== null) return this.fail(this.exitWhy);
    setTimeout(() => this.fail(why), 1000).unref();
  }

  /**
   * The process exited. What it wrote before may still be unread in the channel (its last records
   * say more than the exit): read up to EOF first, then report the exit.
   */
  private exitedWith(why: string): void {
    this.exitWhy = why;
    if (this.pipe === null || this.eofSeen) return this.fail(why);
    // The channel's EOF comes after everything the helper wrote (eof() then reports this exit);
    // the timer only covers a channel that never ends.
    setTimeout(() => this.fail(why), 10_000).unref();
  }

  /** Ends the channel and the helper (EOF, then SIGKILL if it lingers); idempotent. */
  close(): void {
    // Whoever closes may wait for the exit (`exited`): the process must not end before it.
    this.child.ref();
    this.fail('was stopped', true);
  }

  kill(signal: NodeJS.Signals): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    try {
      this.child.kill(signal);
    } catch {
      // gone
    }
  }

  /** Closes everything once and tells the owner (unless `quiet`). */
  fail(why: string, quiet = false): void {
    if (this.closedWhy !== null) {
      return;
    }
    this.closedWhy = why;
    this.removeDir();
    const pipe = this.pipe;
    this.pipe = null;
    if (pipe !== null) {
      pipe.onread = ignoreRead; // Node insists on a function here
      pipe.close();
    }
    for (const h of this.handles.splice(0)) closeHandle(h);
    // The helper exits on EOF; one that does not (stopped, stuck) is killed.
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const t = setTimeout(() => this.kill('SIGKILL'), 2000);
      t.unref();
      this.child.once('exit', () => clearTimeout(t));
    }
    if (!quiet) this.owner.nsdClosed(why);
  }

  private removeDir(): void {
    if (this.dir === null) return;
    rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
  }
}

function onNsdRead(this: PipeHandle): void {
  const ch = this[kChannel];
  const { streamState, kReadBytes } = b();
  const n = streamState[kReadBytes] as number;
  const handle = this.pendingHandle;
  this.pendingHandle = null;
  if (ch === undefined) {
    if (handle !== undefined && handle !== null) closeHandle(handle as object);
    return;
  }
  if (n > 0) ch.received(n, handle);
  else if (n < 0) ch.eof(n === UV_EOF ? 'closed its channel' : `channel read failed (${errName(n)})`);
}

function ignoreRead(this: PipeHandle): void {
  const handle = this.pendingHandle;
  this.pendingHandle = null;
  if (handle !== undefined && handle !== null) closeHandle(handle as object);
}

function onNsdWritten(this: { buffer?: Uint8Array | null; channel?: NsdChannel | null }, status: number): void {
  const ch = this.channel;
  this.buffer = null;
  this.channel = null;
  if (status !== 0 && ch !== null && ch !== undefined) ch.fail(`could not be written to (${errName(status)})`);
}

/** A short temporary directory: unix socket paths are limited to 107 bytes. */
function shortTmp(): string {
  const t = tmpdir();
  return t.length <= 60 ? t : '/tmp';
}

function errName(errno: number): string {
  try {
    return util.getSystemErrorName(errno);
  } catch {
    return String(errno);
  }
}

/** Closes a received handle nobody will use. */
export function closeHandle(h: object): void {
  try {
    (h as { close(): void }).close();
  } catch {
    // already closed
  }
}

/**
 * Connects an unconnected TCP handle from the pool to ip:port (the route lookup happens in the
 * namespace the socket was made in). `done(0)` connected, or a negative errno (ECANCELED after
 * the handle was closed). Returns a negative errno when the connect could not even start.
 */
export function connectTcpHandle(handle: NsTcpHandle, ip: string, port: number, done: (status: number) => void): number {
  const req = new (b().TCPConnectWrap)();
  req.done = done;
  req.oncomplete = onTcpConnected;
  const h = handle as unknown as RawTcp;
  const err = ip.includes(':') ? h.connect6(req, ip, port) : h.connect(req, ip, port);
  if (err === 0) countFastPathUse('nsSockets');
  return err;
}

function onTcpConnected(this: { done?: ((status: number) => void) | null }, status: number): void {
  const done = this.done;
  this.done = null;
  done?.(status);
}

/**
 * A connected TCP handle as a net.Socket, as net.Server makes one for an accepted handle:
 * allowHalfOpen set and reading paused (the relay starts it).
 */
export function socketFromTcpHandle(handle: NsTcpHandle): net.Socket {
  return new net.Socket({ handle, allowHalfOpen: true, pauseOnCreate: true, readable: true, writable: true } as net.SocketConstructorOpts);
}

/**
 * A bound UDP handle as a dgram socket (unconnected), as child_process makes one for a received
 * UDP handle: dgram's bind() takes a handle. An IPv6 socket still needs fixReceivedUdp6Connect
 * before connect() (internals.ts, udp6Connect).
 */
export function dgramFromUdpHandle(handle: NsUdpHandle, family: NsFamily): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    socket.once('error', reject);
    (socket.bind as unknown as (h: unknown, cb: () => void) => void)(handle, () => {
      socket.off('error', reject);
      countFastPathUse('nsSockets');
      resolve(socket);
    });
  });
}

/**
 * The startup self-test, on the two probe sockets every helper sends first (made in its own
 * starting namespace, this process's): the TCP one connects to a loopback listener here, says
 * "probe" and must read "ok" and EOF; the UDP one connects to a loopback socket here and must get
 * its datagram answered. Null: the whole road works (pendingHandle, the handle types, connect on
 * a received handle, net.Socket and dgram adoption).
 */
export function nsdProbe(tcp: NsTcpHandle, udp: NsUdpHandle): Promise<string | null> {
  return new Promise((resolve) => {
    let settled = false;
    const cleanups: (() => void)[] = [];
    const finish = (problem: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const c of cleanups) c();
      resolve(problem);
    };
    const timer = setTimeout(() => finish('no answer within 2 s'), 2000);
    let tcpOk = false;
    let udpOk = false;
    const progress = (): void => {
      if (tcpOk && udpOk) finish(null);
    };
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', (d) => (d.toString() === 'probe' ? s.end('ok') : finish(`the listener read ${JSON.stringify(d.toString())}`)));
    });
    cleanups.push(() => server.close());
    server.once('error', (err) => finish(`listen: ${err.message}`));
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = server.address() as net.AddressInfo;
      const err = connectTcpHandle(tcp, '127.0.0.1', port, (status) => {
        if (status !== 0) return finish(`connect of a received TCP handle failed (${errName(status)})`);
        const s = socketFromTcpHandle(tcp);
        cleanups.push(() => s.destroy());
        let got = '';
        s.on('error', (e) => finish(`the received TCP socket failed: ${e.message}`));
        s.on('data', (d: Buffer) => (got += d.toString()));
        s.on('end', () => {
          if (got !== 'ok') return finish(`read ${JSON.stringify(got)} instead of "ok"`);
          if (s.remotePort !== port) return finish(`remotePort ${String(s.remotePort)}, not ${port}`);
          tcpOk = true;
          progress();
        });
        s.resume();
        s.write('probe');
      });
      if (err !== 0) finish(`connect of a received TCP handle failed at once (${errName(err)})`);
    });
    const echo = dgram.createSocket('udp4');
    cleanups.push(() => echo.close());
    echo.on('message', (m, rinfo) => echo.send(m.toString() === 'probe' ? 'ok' : 'bad', rinfo.port, rinfo.address));
    echo.bind(0, '127.0.0.1', () => {
      dgramFromUdpHandle(udp, 4).then(
        (sock) => {
          cleanups.push(() => sock.close());
          sock.on('error', (e) => finish(`the received UDP socket failed: ${e.message}`));
          sock.on('message', (m) => {
            if (m.toString() !== 'ok') return finish(`got ${JSON.stringify(m.toString())} instead of "ok"`);
            udpOk = true;
            progress();
          });
          sock.connect(echo.address().port, '127.0.0.1', () => sock.send('probe'));
        },
        (e: unknown) => finish(`a received UDP handle could not be adopted: ${e instanceof Error ? e.message : String(e)}`),
      );
    });
  });
}
