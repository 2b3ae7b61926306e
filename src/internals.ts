// Every use of Node's private internals, in one place. Each fast path here has a public-API
// fallback, is checked before use (structurally, and by selfTest() on real loopback sockets at
// startup), and counts its uses so that tests fail when a path is silently off.
//
// 1. bulkReads — reading a socket into buffers we own, also for ACCEPTED sockets and sockets
//    received over IPC. By default Node allocates a fresh 64 KiB buffer for every read; on a bulk
//    transfer that allocation, the GC behind it and the small read size are most of the relay's
//    cost. `net.connect({ onread })` offers the same mechanism, but only for sockets Node creates
//    from net.connect. It is the same for every stream handle: the socket's `kBuffer`/`kBufferCb`/
//    `kBufferGen` slots (initialised to null by the Socket constructor) and the handle's
//    `useUserBuffer()`. Fallback: the caller keeps 'data' events.
// 2. udp6Connect — Node 20 bug: a dgram socket received over IPC gets its handle through
//    `replaceHandle`, which copies the IPv6 `bind` and `send` methods onto the new handle but not
//    `connect`, so connecting a received udp6 socket calls the IPv4 connect and fails with EINVAL.
//    The fix points the handle's `connect` at `connect6` (found through dgram's `state symbol`).
//    Fallback: the caller uses the socket unconnected (every send names the target).
// 3. rawTcp — TCP connections on bare libuv handles (RawSocket): no net.Socket, stream, event
//    emitter or per-connection closure; Node's connection machinery was most of the CPU a
//    connection cost outside the kernel (docs/architecture.md, "TCP data path"). It relies on
//    process.binding('tcp_wrap') (TCP, TCPConnectWrap) and ('stream_wrap') (WriteWrap,
//    ShutdownWrap, streamBaseState and its indices) and on net.Server's `_handle.onconnection`.
//    The connection engine (src/proxy/connection.ts) sees every TCP socket as a TcpPort: a
//    RawSocket, or — the fallback, also when the path is turned off at runtime — a net.Socket
//    behind the same methods (SocketPort). Ports come from acceptRaw, rawDial (also on an existing
//    unconnected handle) and adoptConnected (a connected net.Socket or handle: the namespace
//    helper's); see the TCP ports section.
// 4. rawUdp — UDP datagrams through the socket's UDP handle (raw UDP section, at the end). Per
//    datagram, dgram's public path costs a 'message' emit, argument checks, a lookup step and a
//    `new SendWrap()` (a C++-backed object) for every send. Here the handle's `onmessage` calls
//    our callback directly, and sends go to `handle.send(req, list, count[, port, ip], false)` with
//    one spare SendWrap reused while sends complete synchronously (the handle returns bytes + 1 and
//    has not touched the wrap); a send that had to queue keeps that wrap (and its buffers) and a
//    new spare is made. Errors still reach the dgram socket's 'error' listeners.
//    Callers get a UdpPort from udpPort() either way; its fallback (DgramPort) is dgram's
//    'message' events and send().
// 5. nsSockets — sockets made inside network namespaces by native/pf-nsd, received in batches on
//    an IPC-mode pipe_wrap Pipe (one pendingHandle per read) and connected here. Its code is the
//    fence's second file, src/internals-nsd.ts; its state, check and report are here (section at
//    the end). Fallback: the Node namespace helper (src/netns/helper-main.ts).
// Over 350 lines on purpose: the project's rule is that every use of internals lives in this
// module and its second file, internals-nsd.ts.
import dgram from 'node:dgram';
import net from 'node:net';
import util from 'node:util';
import { accessSync, constants as fsConstants } from 'node:fs';
import { fileURLToPath } from 'node:url';

export type FastPath = 'bulkReads' | 'udp6Connect' | 'rawTcp' | 'rawUdp' | 'nsSockets';

export interface FastPathStatus {
  /** Whether the fast path is used. */
  readonly on: boolean;
  /** What it relies on when on; why it is off otherwise. */
  readonly why: string;
  /** How many sockets have used it in this process. */
  readonly uses: number;
}

export type InternalsReport = Readonly<Record<FastPath, FastPathStatus>>;

const state: Record<FastPath, { off: string | null; checked: boolean; uses: number }> = {
  bulkReads: { off: null, checked: false, uses: 0 },
  udp6Connect: { off: null, checked: false, uses: 0 },
  rawTcp: { off: null, checked: false, uses: 0 },
  rawUdp: { off: null, checked: false, uses: 0 },
  nsSockets: { off: null, checked: false, uses: 0 },
};

const RELIES_ON: Record<FastPath, string> = {
  bulkReads: "net.Socket's kBuffer/kBufferCb/kBufferGen slots and the stream handle's useUserBuffer()",
  udp6Connect: "dgram's 'state symbol' and the UDP handle's connect6()",
  rawTcp: "process.binding('tcp_wrap'/'stream_wrap'): TCP, TCPConnectWrap, WriteWrap, ShutdownWrap, streamBaseState; net.Server's _handle.onconnection",
  rawUdp: "process.binding('udp_wrap').SendWrap, dgram's 'state symbol' and the UDP handle's onmessage/send()",
  nsSockets: "native/build/pf-nsd (sockets made inside namespaces, batched over SCM_RIGHTS) and process.binding('pipe_wrap'/'tcp_wrap'/'udp_wrap'): an IPC-mode Pipe's onread/pendingHandle, TCPConnectWrap, dgram bind(handle) (src/internals-nsd.ts)",
};

/** Which fast paths are on, why not, and how often each was used. Cheap: no I/O. */
export function internals(): InternalsReport {
  checkBulkReadSlots();
  checkUdp6Handle();
  checkRawTcp();
  checkRawUdp();
  checkNsSockets();
  const one = (p: FastPath): FastPathStatus => ({ on: state[p].off === null, why: state[p].off ?? RELIES_ON[p], uses: state[p].uses });
  return { bulkReads: one('bulkReads'), udp6Connect: one('udp6Connect'), rawTcp: one('rawTcp'), rawUdp: one('rawUdp'), nsSockets: one('nsSockets') };
}

/** Turns a fast path off (the self-test when it fails; tests that exercise the fallback). */
export function disableFastPath(path: FastPath, why: string): void {
  state[path].off = why;
  state[path].checked = true;
}

/** Undoes disableFastPath (tests that exercise both paths): checked again, on if this Node has it. */
export function restoreFastPath(path: FastPath): void {
  state[path].off = null;
  state[path].checked = false;
}

/**
 * The startup self-test: the structural checks, then bulk reads on a real loopback connection
 * (bytes must arrive through our buffer and not as 'data'), and a raw UDP exchange on loopback
 * (both ways, no 'message' event). A path that fails is turned off, so the data path uses the
 * public fallback. Resolves with internals().
 */
export async function selfTest(): Promise<InternalsReport> {
  if (state.bulkReads.off === null && checkBulkReadSlots()) {
    const problem = await bulkReadProbe().catch((err: unknown) => `self-test failed: ${err instanceof Error ? err.message : String(err)}`);
    if (problem !== null) disableFastPath('bulkReads', problem);
  }
  if (state.rawTcp.off === null && checkRawTcp()) {
    const problem = await rawTcpProbe().catch((err: unknown) => `self-test failed: ${err instanceof Error ? err.message : String(err)}`);
    if (problem !== null) disableFastPath('rawTcp', problem);
  }
  if (state.rawUdp.off === null && checkRawUdp()) {
    const problem = await rawUdpProbe().catch((err: unknown) => `self-test failed: ${err instanceof Error ? err.message : String(err)}`);
    if (problem !== null) disableFastPath('rawUdp', problem);
  }
  return internals();
}

// ---- bulk reads ----------------------------------------------------------------------------

/** Called for each read: `n` bytes at the start of `buf`. Return false to stop reading. */
export type ReadCallback = (n: number, buf: Buffer) => boolean;
/** Called after each read: the buffer for the next read. */
export type BufferSource = () => Buffer;

interface StreamHandle {
  reading: boolean;
  readStart(): number;
  useUserBuffer(buf: Uint8Array): void;
}

interface Slots {
  readonly kBuffer: symbol;
  readonly kBufferCb: symbol;
  readonly kBufferGen: symbol;
}

let slots: Slots | null = null;

function checkBulkReadSlots(): boolean {
  const st = state.bulkReads;
  if (st.checked) return st.off === null;
  st.checked = true;
  const own = Object.getOwnPropertySymbols(new net.Socket());
  const find = (name: string): symbol | undefined => own.find((s) => s.description === name);
  const kBuffer = find('kBuffer');
  const kBufferCb = find('kBufferCb');
  const kBufferGen = find('kBufferGen');
  if (kBuffer === undefined || kBufferCb === undefined || kBufferGen === undefined) {
    st.off = `this Node (${process.version}) has no kBuffer/kBufferCb/kBufferGen slots on net.Socket`;
    return false;
  }
  slots = { kBuffer, kBufferCb, kBufferGen };
  return true;
}

function handleOf(socket: net.Socket): StreamHandle | null {
  const h = (socket as unknown as { _handle?: Partial<StreamHandle> | null })._handle;
  if (h === null || h === undefined) return null;
  if (typeof h.useUserBuffer !== 'function' || typeof h.readStart !== 'function') return null;
  return h as StreamHandle;
}

/**
 * Switches `socket` to read into buffers from `next` (the first one right away), delivering each
 * read to `onRead` instead of 'data' events. 'end', 'error' and the socket's timeout keep working.
 * Call it while no 'data' listener is attached and the socket's readable buffer is empty.
 * Returns false (and changes nothing) when the fast path is off or does not fit this socket.
 */
export function readIntoOwnBuffers(socket: net.Socket, onRead: ReadCallback, next: BufferSource): boolean {
  if (!checkBulkReadSlots() || slots === null) return false;
  const handle = handleOf(socket);
  if (handle === null || socket.readableLength > 0) return false;
  const record = socket as unknown as Record<symbol, unknown>;
  if (!(slots.kBuffer in record) || record[slots.kBuffer] !== null) return false; // not a plain Node socket, or already switched
  const first = next();
  record[slots.kBufferCb] = onRead;
  record[slots.kBufferGen] = next;
  record[slots.kBuffer] = first;
  handle.useUserBuffer(first);
  state.bulkReads.uses++;
  return true;
}

/** Starts reading again after an `onRead` returned false. */
export function resumeOwnBufferReads(socket: net.Socket): void {
  const handle = handleOf(socket);
  if (handle === null || socket.destroyed || handle.reading) return;
  handle.reading = true;
  const err = handle.readStart();
  if (err !== 0) socket.destroy(Object.assign(new Error(`read start failed (${err})`), { code: 'EREADSTART' }));
}

/** A loopback pair; the accepted side switches to our buffer; 5 bytes must arrive there. Null: fine. */
function bulkReadProbe(): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ pauseOnConnect: true });
    const timer = setTimeout(() => finish('no bytes within 2 s'), 2000);
    let client: net.Socket | null = null;
    const finish = (problem: string | null): void => {
      clearTimeout(timer);
      client?.destroy();
      server.close();
      resolve(problem);
    };
    server.once('error', reject);
    server.on('connection', (accepted: net.Socket) => {
      accepted.on('error', () => {});
      let got = '';
      const ok = readIntoOwnBuffers(
        accepted,
        (n, buf) => {
          got += buf.toString('latin1', 0, n);
          if (got.length >= 5) {
            accepted.destroy();
            finish(got === 'probe' ? null : `read ${JSON.stringify(got)} instead of "probe"`);
          }
          return true;
        },
        () => Buffer.alloc(64),
      );
      if (!ok) {
        accepted.destroy();
        finish('an accepted socket could not be switched (no useUserBuffer on its handle)');
        return;
      }
      state.bulkReads.uses--; // the probe is not a use
      accepted.on('data', () => finish("bytes arrived as 'data', not in our buffer"));
      accepted.resume();
    });
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = server.address() as net.AddressInfo;
      client = net.connect({ host: '127.0.0.1', port }, () => client?.write('probe'));
      client.on('error', reject);
    });
  });
}

// ---- udp6 connect on sockets received over IPC ---------------------------------------------

let udpStateSymbol: symbol | null = null;

function checkUdp6Handle(): boolean {
  return checkDgramHandle('udp6Connect', 'udp6', (sym, handle) => {
    if (typeof handle['connect6'] !== 'function' || typeof handle['connect'] !== 'function') return `this Node (${process.version}) has no dgram 'state symbol' with a handle that has connect6()`;
    udpStateSymbol = sym;
    return null;
  });
}

/**
 * The structural check of a dgram fast path, once: a throwaway socket of `type`, dgram's state
 * symbol and the socket's handle go to `fits`, which says why the path is off (or null: on).
 */
function checkDgramHandle(path: FastPath, type: 'udp4' | 'udp6', fits: (sym: symbol, handle: Record<string, unknown>) => string | null): boolean {
  const st = state[path];
  if (st.checked) return st.off === null;
  st.checked = true;
  let socket: dgram.Socket | null = null;
  try {
    socket = dgram.createSocket(type);
    const sym = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
    const handle = sym === undefined ? undefined : udpStateOf(socket, sym)?.handle;
    st.off = sym === undefined || handle === undefined ? `this Node (${process.version}) has no dgram 'state symbol' with a handle` : fits(sym, handle);
  } catch (err) {
    st.off = `cannot check: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    socket?.close();
  }
  return st.off === null;
}

function udpStateOf(socket: dgram.Socket, sym: symbol): { handle?: Record<string, unknown> } | undefined {
  return (socket as unknown as Record<symbol, { handle?: Record<string, unknown> } | undefined>)[sym];
}

/**
 * Makes a udp6 socket received over IPC connectable (see 2. above). Returns false when the fast
 * path is off (the caller then sends unconnected, naming the target).
 */
export function fixReceivedUdp6Connect(socket: dgram.Socket): boolean {
  if (!checkUdp6Handle() || udpStateSymbol === null) return false;
  const handle = udpStateOf(socket, udpStateSymbol)?.handle;
  if (handle === undefined || typeof handle['connect6'] !== 'function') return false;
  handle['connect'] = handle['connect6'];
  state.udp6Connect.uses++;
  return true;
}

// ---- TCP ports: one connection's socket, a raw handle or a net.Socket ----------------------
//
// The connection engine (src/proxy/connection.ts) sees a TCP socket only as a TcpPort: the raw
// handle (RawSocket, the fast path rawTcp) or a net.Socket behind the same methods (SocketPort,
// the fallback), as UdpPort serves UDP. Every way a socket comes to us ends in one of the two:
//
// - acceptRaw(server, onAccept, onError): accepted connections (RawSocket, or SocketPort when
//   rawTcp is off, also when turned off at runtime);
// - rawDial(ip, port, owner, handle?): a new connection to ip:port; with `handle`, on an EXISTING
//   unconnected TCP handle (a socket created elsewhere, e.g. inside a network namespace by another
//   process, and received over a pipe: it keeps its namespace, whoever connects it). A RawSocket
//   when rawTcp is on, else a SocketPort over a net.Socket (built on that handle when given);
// - adoptConnected(socketOrHandle, owner?): an already connected socket — a net.Socket (the
//   namespace helper's, received over IPC) or a bare connected TCP handle — taken over as a
//   RawSocket when rawTcp is on (the net.Socket is left empty and destroyed; its handle is ours),
//   else a SocketPort. A socket that has already buffered bytes stays a SocketPort (they come first).

/** Called by a TcpPort; `port` says which. Every method runs from the event loop, never re-entrantly from a TcpPort call. */
export interface TcpPortOwner {
  /** `n` bytes arrived: in `buf` (a fresh buffer of exactly n bytes), or at the start of the own buffer (useOwnBuffer). Return the own buffer for the next read (own-buffer mode only; undefined keeps the current one). */
  onData(port: TcpPort, buf: Buffer, n: number): Buffer | undefined;
  /** EOF from the peer: reading has stopped for good. */
  onEnd(port: TcpPort): void;
  /** The socket failed (negative errno: ECONNRESET …). */
  onError(port: TcpPort, errno: number): void;
  /** A queued write (write() returned 1) completed: status 0 or a negative errno. */
  onWritten(port: TcpPort, status: number): void;
  /** shutdown() completed: our FIN is out (status 0) or it failed. */
  onShutdown(port: TcpPort, status: number): void;
  /** A dial (rawDial) completed: 0, or a negative errno (ECONNREFUSED …). */
  onConnected(port: TcpPort, status: number): void;
}

/** One TCP socket as the connection engine uses it. close()/reset() are idempotent; after either, the owner hears nothing more. */
export interface TcpPort {
  owner: TcpPortOwner;
  /** A bare handle (rawTcp) or a net.Socket. */
  readonly raw: boolean;
  readonly closed: boolean;
  /** Queued writes not completed yet. */
  readonly pendingWrites: number;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  /** The descriptor number, -1 when closed or without one (the listener's descriptor-headroom check). */
  readonly fd: number;
  readStart(): number;
  readStop(): number;
  /** Reads go into `buf` from now on (and into whatever onData returns): bulkReads. False: not now (or the fast path is off). */
  useOwnBuffer(buf: Buffer): boolean;
  /** 0: written; 1: queued (onWritten follows; keep `buf` unchanged until then); <0: errno. */
  write(buf: Buffer): number;
  /** Our FIN after every byte written before it (onShutdown follows). 0 or a negative errno. */
  shutdown(): number;
  /**
   * Ends the connection with an RST (SO_LINGER 0), whatever is queued: the peer sees a reset, the
   * descriptor is released. Also with a shutdown under way (see RawSocket.reset).
   */
  reset(): void;
  /** Closes (FIN after what the kernel holds) and releases the descriptor. */
  close(): void;
  /** Hands the socket over as a paused net.Socket (allowHalfOpen): dialTcpAsync's callers. The port is closed for its owner. */
  detach(): net.Socket;
}

interface TcpHandle {
  onread: ((this: TcpHandle, ab: ArrayBuffer | undefined) => Uint8Array | undefined) | null;
  reading?: boolean;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: Req, buf: Uint8Array): number;
  shutdown(req: Req): number;
  reset(cb?: () => void): number;
  close(cb?: () => void): void;
  setNoDelay(on: boolean): number;
  getpeername(out: Record<string, unknown>): number;
  getsockname(out: Record<string, unknown>): number;
  connect(req: Req, ip: string, port: number): number;
  connect6(req: Req, ip: string, port: number): number;
  useUserBuffer(buf: Uint8Array): void;
  /** The descriptor number, -1 without one (libuv's uv_fileno; every Node 20–26 stream handle has it). */
  readonly fd: number;
  [kRawSocket]?: RawSocket | undefined;
}
type Req = { oncomplete: unknown; sock: RawSocket | null; buffer?: Uint8Array | null };

interface RawBindings {
  readonly TCP: new (type: number) => TcpHandle;
  readonly SOCKET: number;
  readonly TCPConnectWrap: new () => Req;
  readonly WriteWrap: new () => Req;
  readonly ShutdownWrap: new () => Req;
  readonly streamState: Int32Array;
  readonly kReadBytes: number;
  readonly kOffset: number;
  readonly kAsync: number;
}

/** One of Node's internal bindings (rawTcp, rawUdp); throws when this Node does not offer them (or the permission model forbids them). */
function nodeBinding(name: 'tcp_wrap' | 'stream_wrap' | 'udp_wrap'): Record<string, unknown> {
  const binding = (process as unknown as { binding?: (name: string) => Record<string, unknown> }).binding;
  if (typeof binding !== 'function') throw new Error('no process.binding');
  return binding(name);
}

const kRawSocket = Symbol('raw socket');
const UV_EOF = -4095;
const UV_EBADF = -9;
const UV_EPIPE = -32;
const UV_EINVAL = -22;
const UV_ECONNABORTED = -103;
/** How long a reset waits for a shutdown already handed to libuv (it completes on the next loop turn) before closing plainly. */
const RESET_AFTER_SHUTDOWN_MAX_MS = 200;
let rawB: RawBindings | null = null;

function checkRawTcp(): boolean {
  const st = state.rawTcp;
  if (st.checked) return st.off === null;
  st.checked = true;
  try {
    const tcp = nodeBinding('tcp_wrap');
    const sw = nodeBinding('stream_wrap');
    const consts = tcp['constants'] as Record<string, number> | undefined;
    const proto = (tcp['TCP'] as { prototype?: Record<string, unknown> } | undefined)?.prototype;
    const need = ['readStart', 'readStop', 'writeBuffer', 'shutdown', 'reset', 'close', 'setNoDelay', 'getpeername', 'getsockname', 'connect', 'connect6', 'useUserBuffer'];
    const missing = need.filter((m) => typeof proto?.[m] !== 'function');
    const ints = ['kReadBytesOrError', 'kArrayBufferOffset', 'kLastWriteWasAsync'].filter((k) => typeof sw[k] !== 'number');
    if (proto === undefined || missing.length > 0 || ints.length > 0 || typeof consts?.['SOCKET'] !== 'number' || !(sw['streamBaseState'] instanceof Int32Array)
      || typeof tcp['TCPConnectWrap'] !== 'function' || typeof sw['WriteWrap'] !== 'function' || typeof sw['ShutdownWrap'] !== 'function') {
      throw new Error(`tcp_wrap/stream_wrap lack ${[...missing, ...ints].join(', ') || 'a constructor or streamBaseState'}`);
    }
    rawB = {
      TCP: tcp['TCP'] as RawBindings['TCP'],
      SOCKET: consts['SOCKET'],
      TCPConnectWrap: tcp['TCPConnectWrap'] as RawBindings['TCPConnectWrap'],
      WriteWrap: sw['WriteWrap'] as RawBindings['WriteWrap'],
      ShutdownWrap: sw['ShutdownWrap'] as RawBindings['ShutdownWrap'],
      streamState: sw['streamBaseState'],
      kReadBytes: sw['kReadBytesOrError'] as number,
      kOffset: sw['kArrayBufferOffset'] as number,
      kAsync: sw['kLastWriteWasAsync'] as number,
    };
    return true;
  } catch (err) {
    st.off = `this Node (${process.version}) cannot: ${err instanceof Error ? err.message : String(err)}`;
    return false;
  }
}

/** The raw path is on (checked, not turned off): new connections use RawSocket. */
function rawTcpOn(): boolean {
  return state.rawTcp.off === null && checkRawTcp();
}

/** Whether `h` is a TCP handle of this Node (what rawDial's `handle` and adoptConnected accept). */
function isTcpHandle(h: unknown): h is TcpHandle {
  if (!checkRawTcpBindings()) return false;
  return h instanceof (rawB as RawBindings).TCP;
}

/** The bindings, also when rawTcp was turned off (a handle is still recognised for the fallback). */
function checkRawTcpBindings(): boolean {
  checkRawTcp();
  return rawB !== null;
}

/** One write request kept spare: used again as long as writes complete at once (the usual case). */
let spareWrite: Req | null = null;
function writeReq(): Req {
  const req = new (rawB as RawBindings).WriteWrap();
  req.oncomplete = onRawWritten;
  req.sock = null;
  req.buffer = null;
  return req;
}

/**
 * A TCP connection on a bare libuv handle. Reads go to the owner's onData (no stream, no
 * events); writes try at once and report 0 (done) or 1 (queued: onWritten follows). Addresses
 * are read from the kernel on first use.
 *
 * Shutdown and reset: libuv refuses SO_LINGER 0 (uv_tcp_close_reset → EINVAL) while a shutdown
 * is pending, and Node's TCPWrap::Reset then marks the handle closing anyway, so it could never
 * be closed again (issue 20.2: a half-close timeout on a slow reader leaked the descriptor and the
 * peer got every byte and a clean FIN instead of a reset). So: shutdown() is handed to libuv only
 * once no write is queued (until then it is remembered), which makes a pending shutdown last one
 * loop turn; a reset() in that turn is done when the shutdown completes (or, bounded, as a close).
 */
export class RawSocket implements TcpPort {
  readonly raw = true;
  closed = false;
  pendingWrites = 0;
  /** The buffer reads go into (useOwnBuffer), or null: a fresh buffer per read. */
  own: Buffer | null = null;
  /** shutdown() asked while writes were queued: done when the last completes. */
  shutdownWanted = false;
  /** A shutdown request is with libuv. */
  shutdownPending = false;
  /** reset() came while a shutdown was with libuv: reset when it completes. */
  resetWanted = false;
  private peer: { address?: string; port?: number } | null = null;
  private sock: { address?: string; port?: number } | null = null;

  readonly handle: TcpHandle;

  private constructor(handle: TcpHandle, public owner: TcpPortOwner) {
    this.handle = handle;
    handle[kRawSocket] = this;
    handle.onread = onRawRead;
  }

  /** Wraps a connected handle (accepted, or adopted). */
  static wrap(handle: unknown, owner: TcpPortOwner): RawSocket {
    return new RawSocket(handle as TcpHandle, owner);
  }

  /** Starts connecting a new socket (or `handle`, unconnected) to ip:port (TCP_NODELAY on). Returns it, or a negative errno. */
  static connect(ip: string, port: number, owner: TcpPortOwner, handle?: TcpHandle): RawSocket | number {
    const b = rawB as RawBindings;
    const h = handle ?? new b.TCP(b.SOCKET);
    h.setNoDelay(true); // a flag until the socket exists; libuv applies it on connect
    const sock = new RawSocket(h, owner);
    const req = new b.TCPConnectWrap();
    req.oncomplete = onRawConnected;
    req.sock = sock;
    const err = ip.includes(':') ? h.connect6(req, ip, port) : h.connect(req, ip, port);
    if (err !== 0) {
      sock.close();
      return err;
    }
    state.rawTcp.uses++;
    return sock;
  }

  get remoteAddress(): string | undefined {
    return (this.peer ??= this.name('getpeername')).address;
  }
  get remotePort(): number | undefined {
    return (this.peer ??= this.name('getpeername')).port;
  }
  get localAddress(): string | undefined {
    return (this.sock ??= this.name('getsockname')).address;
  }
  get localPort(): number | undefined {
    return (this.sock ??= this.name('getsockname')).port;
  }
  get fd(): number {
    return this.closed ? -1 : this.handle.fd;
  }
  private name(which: 'getpeername' | 'getsockname'): { address?: string; port?: number } {
    const out: Record<string, unknown> = {};
    return this.closed || this.handle[which](out) !== 0 ? {} : (out as { address?: string; port?: number });
  }

  readStart(): number {
    return this.closed ? 0 : this.handle.readStart();
  }
  readStop(): number {
    return this.closed ? 0 : this.handle.readStop();
  }

  useOwnBuffer(buf: Buffer): boolean {
    if (state.bulkReads.off !== null || this.closed) return false;
    this.own = buf;
    this.handle.useUserBuffer(buf);
    state.bulkReads.uses++;
    return true;
  }

  write(buf: Buffer): number {
    if (this.closed) return UV_EBADF;
    const req = (spareWrite ??= writeReq());
    const err = this.handle.writeBuffer(req, buf);
    if (err !== 0) return err;
    if ((rawB as RawBindings).streamState[(rawB as RawBindings).kAsync] === 0) return 0;
    spareWrite = null; // taken by this write until it completes
    req.sock = this;
    req.buffer = buf;
    this.pendingWrites++;
    return 1;
  }

  shutdown(): number {
    if (this.closed) return UV_EBADF;
    if (this.pendingWrites > 0) {
      this.shutdownWanted = true; // after the last queued write (onRawWritten)
      return 0;
    }
    return this.shutdownNow();
  }

  shutdownNow(): number {
    this.shutdownWanted = false;
    const req = new (rawB as RawBindings).ShutdownWrap();
    req.oncomplete = onRawShutdown;
    req.sock = this;
    const err = this.handle.shutdown(req);
    if (err === 0) this.shutdownPending = true;
    return err;
  }

  reset(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.shutdownPending) {
      // libuv would refuse the reset now (see above): once the shutdown completes, or a close.
      this.resetWanted = true;
      setTimeout(resetOverdue, RESET_AFTER_SHUTDOWN_MAX_MS, this).unref();
      return;
    }
    this.resetNow();
  }

  resetNow(): void {
    this.resetWanted = false;
    // Not under a pending shutdown, so this does not fail in practice; if it ever did, the handle
    // could not be closed any more (Node marks it closing), so nothing else is tried.
    this.handle.reset();
    this.handle[kRawSocket] = undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
    this.handle[kRawSocket] = undefined;
  }

  detach(): net.Socket {
    this.closed = true;
    this.handle[kRawSocket] = undefined;
    return new net.Socket({ handle: this.handle, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
  }
}

function resetOverdue(sock: RawSocket): void {
  if (!sock.resetWanted) return;
  sock.resetWanted = false;
  sock.handle.close(); // the shutdown never completed: close plainly (cancels it), the descriptor is freed
  sock.handle[kRawSocket] = undefined;
}

function onRawRead(this: TcpHandle, ab: ArrayBuffer | undefined): Uint8Array | undefined {
  const sock = this[kRawSocket];
  const b = rawB as RawBindings;
  const n = b.streamState[b.kReadBytes] as number;
  if (sock === undefined || sock.closed) return undefined;
  if (n > 0) {
    const own = sock.own;
    if (own === null) {
      sock.owner.onData(sock, Buffer.from(ab as ArrayBuffer, b.streamState[b.kOffset], n), n);
      return undefined;
    }
    const next = sock.owner.onData(sock, own, n);
    if (next !== undefined) sock.own = next;
    return next;
  }
  if (n === 0) return undefined;
  if (n === UV_EOF) sock.owner.onEnd(sock);
  else sock.owner.onError(sock, n);
  return undefined;
}

function onRawWritten(this: Req, status: number): void {
  const sock = this.sock;
  this.sock = null;
  this.buffer = null;
  if (sock === null) return;
  sock.pendingWrites--; // (a request that went async is not used again: Node wrapped it once)
  if (sock.closed) return;
  sock.owner.onWritten(sock, status);
  if (sock.shutdownWanted && sock.pendingWrites === 0 && !sock.closed) {
    const err = status < 0 ? status : sock.shutdownNow();
    if (err !== 0) sock.owner.onShutdown(sock, err);
  }
}

function onRawShutdown(this: Req, status: number): void {
  const sock = this.sock;
  this.sock = null;
  if (sock === null) return;
  sock.shutdownPending = false;
  if (sock.resetWanted) sock.resetNow();
  else if (!sock.closed) sock.owner.onShutdown(sock, status);
}

function onRawConnected(this: Req, status: number): void {
  const sock = this.sock;
  this.sock = null;
  if (sock !== null && !sock.closed) sock.owner.onConnected(sock, status);
}

/** Until an owner takes a new socket: anything it reports resets it. */
const NO_OWNER: TcpPortOwner = {
  onData: (port) => (port.reset(), undefined),
  onEnd: (port) => port.reset(),
  onError: (port) => port.reset(),
  onWritten: (port) => port.reset(),
  onShutdown: (port) => port.reset(),
  onConnected: (port) => port.reset(),
};

// The fallback port: a net.Socket behind TcpPort's methods.

const kPort = Symbol('tcp port');
type PortSocket = net.Socket & { [kPort]?: SocketPort | undefined };

function errnoOf(err: unknown): number {
  const n = (err as { errno?: unknown } | null)?.errno;
  return typeof n === 'number' && n < 0 ? n : UV_EPIPE;
}

/**
 * A net.Socket as a TcpPort (the fallback; rawTcp off). Its events go to shared module-level
 * handlers that find the port through the socket. Writes report 0 when the socket took them at
 * once (nothing left in its buffer) and 1 otherwise; their completion callbacks arrive in order,
 * so a queue of flags says which of them to report.
 */
class SocketPort implements TcpPort {
  readonly raw = false;
  closed = false;
  pendingWrites = 0;
  /** Per write not completed yet, in order: whether write() reported it queued. */
  private readonly flights: boolean[] = [];
  /** Reading into own buffers (bulkReads on a net.Socket). */
  private own = false;
  private ownNext: Buffer | null = null;
  private inRead = false;
  private stopAsked = false;
  private readonly writeDone: (err?: Error | null) => void;

  constructor(
    readonly socket: net.Socket,
    public owner: TcpPortOwner,
    /** Still connecting: 'connect' or an error completes it (onConnected). */
    public connecting: boolean,
  ) {
    const s = socket as PortSocket;
    s[kPort] = this;
    s.allowHalfOpen = true;
    s.pause();
    s.on('data', onSocketData);
    s.on('end', onSocketEnd);
    s.on('error', onSocketError); // stays: late errors never crash the process
    s.on('close', onSocketClose);
    s.on('finish', onSocketFinish);
    if (connecting) s.on('connect', onSocketConnect);
    this.writeDone = (err) => this.written(err);
  }

  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }
  get localAddress(): string | undefined {
    return this.socket.localAddress;
  }
  get localPort(): number | undefined {
    return this.socket.localPort;
  }
  get fd(): number {
    const fd = (this.socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    return typeof fd === 'number' ? fd : -1;
  }

  readStart(): number {
    if (this.closed) return 0;
    if (this.own) {
      this.stopAsked = false;
      resumeOwnBufferReads(this.socket);
    } else this.socket.resume();
    return 0;
  }

  readStop(): number {
    if (this.closed) return 0;
    if (!this.own) this.socket.pause();
    else if (this.inRead) this.stopAsked = true; // the read callback's false stops the handle
    else stopOwnBufferReads(this.socket);
    return 0;
  }

  useOwnBuffer(buf: Buffer): boolean {
    const s = this.socket;
    if (this.closed || this.own || s.readableLength > 0) return false;
    this.ownNext = buf;
    s.off('data', onSocketData);
    const ok = readIntoOwnBuffers(
      s,
      (n, b) => this.ownRead(n, b),
      () => this.ownNext as Buffer,
    );
    if (!ok) {
      s.on('data', onSocketData);
      return false;
    }
    this.own = true;
    return true;
  }

  private ownRead(n: number, b: Buffer): boolean {
    if (this.closed) return false;
    this.inRead = true;
    const next = this.owner.onData(this, b, n);
    this.inRead = false;
    if (next !== undefined) this.ownNext = next;
    return !this.stopAsked && !this.closed;
  }

  write(buf: Buffer): number {
    const s = this.socket;
    if (this.closed) return UV_EBADF;
    if (s.destroyed || s.writableEnded) return UV_EPIPE;
    s.write(buf, this.writeDone);
    const queued = s.writableLength > 0;
    this.flights.push(queued);
    if (!queued) return 0;
    this.pendingWrites++;
    return 1;
  }

  private written(err: Error | null | undefined): void {
    if (this.flights.shift() !== true) return;
    this.pendingWrites--;
    if (!this.closed) this.owner.onWritten(this, err === null || err === undefined ? 0 : errnoOf(err));
  }

  shutdown(): number {
    if (this.closed) return UV_EBADF;
    this.socket.end();
    return 0;
  }

  reset(): void {
    if (this.closed) return;
    this.closed = true;
    const s = this.socket;
    if (s.destroyed) return;
    if (this.connecting || s.connecting) {
      s.destroy(); // Node would wait for the connect to reset: close now, the dial is abandoned
      return;
    }
    // Everything written and end() called, but no 'finish' yet: Node's shutdown may be with
    // libuv, which would refuse the reset (and Node would never close the handle). Reset once
    // the shutdown is done; bounded by a plain close.
    if (s.writableEnded && !s.writableFinished && s.writableLength === 0) {
      s.once('finish', resetSocket);
      setTimeout(destroySocket, RESET_AFTER_SHUTDOWN_MAX_MS, s).unref();
      return;
    }
    s.resetAndDestroy();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
  }

  detach(): net.Socket {
    this.closed = true;
    const s = this.socket as PortSocket;
    s.off('data', onSocketData);
    s.off('end', onSocketEnd);
    s.off('close', onSocketClose);
    s.off('finish', onSocketFinish);
    s.off('connect', onSocketConnect);
    s[kPort] = undefined;
    return s;
  }

  connected(status: number): void {
    if (!this.connecting) return;
    this.connecting = false;
    if (!this.closed) this.owner.onConnected(this, status);
  }
}

function resetSocket(this: net.Socket): void {
  if (!this.destroyed) this.resetAndDestroy();
}
function destroySocket(s: net.Socket): void {
  s.destroy();
}

function onSocketData(this: PortSocket, chunk: Buffer): void {
  const p = this[kPort];
  if (p !== undefined && !p.closed) p.owner.onData(p, chunk, chunk.length);
}
function onSocketEnd(this: PortSocket): void {
  const p = this[kPort];
  if (p !== undefined && !p.closed) p.owner.onEnd(p);
}
function onSocketFinish(this: PortSocket): void {
  const p = this[kPort];
  if (p !== undefined && !p.closed) p.owner.onShutdown(p, 0);
}
function onSocketConnect(this: PortSocket): void {
  this[kPort]?.connected(0);
}
function onSocketError(this: PortSocket, err: Error): void {
  const p = this[kPort];
  if (p === undefined || p.closed) return;
  if (p.connecting) p.connected(errnoOf(err));
  else p.owner.onError(p, errnoOf(err));
}
function onSocketClose(this: PortSocket): void {
  const p = this[kPort];
  if (p === undefined || p.closed) return;
  // A socket that has read EOF and sent our FIN closes by itself (autoDestroy): not an error.
  if (this.readableEnded && this.writableFinished) return;
  if (p.connecting) p.connected(UV_ECONNABORTED);
  else p.owner.onError(p, UV_ECONNABORTED);
}

/** Stops own-buffer reads outside a read callback (the callback's false does it inside one). */
function stopOwnBufferReads(socket: net.Socket): void {
  const handle = handleOf(socket);
  if (handle === null || !handle.reading) return;
  handle.reading = false;
  (handle as unknown as TcpHandle).readStop();
}

/**
 * Starts a connection to ip:port (TCP_NODELAY on): a RawSocket when rawTcp is on, else a net.Socket
 * behind a SocketPort. With `handle` (an unconnected TCP handle of this Node, created elsewhere —
 * e.g. inside a network namespace — and received here), that socket is connected instead of a new
 * one. `owner.onConnected` follows. A negative errno when it fails at once (EMFILE …; EINVAL when
 * `handle` is not a TCP handle).
 */
export function rawDial(ip: string, port: number, owner: TcpPortOwner, handle?: unknown): TcpPort | number {
  if (handle !== undefined && !isTcpHandle(handle)) return UV_EINVAL;
  if (rawTcpOn()) return RawSocket.connect(ip, port, owner, handle);
  const socket = new net.Socket(handle === undefined ? { allowHalfOpen: true } : ({ handle, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts));
  socket.setNoDelay(true);
  const p = new SocketPort(socket, owner, true);
  socket.connect({ host: ip, port });
  return p;
}

/**
 * Takes over an already connected socket: a net.Socket (e.g. received over IPC) or a bare
 * connected TCP handle. A RawSocket when rawTcp is on and the socket holds no buffered bytes (the
 * net.Socket is emptied and destroyed: its handle belongs to the port), else a SocketPort. The
 * owner may be set later (before the next turn of the event loop); until then nothing is read.
 */
export function adoptConnected(socketOrHandle: net.Socket | object, owner: TcpPortOwner = NO_OWNER): TcpPort {
  if (!(socketOrHandle instanceof net.Socket)) {
    if (!isTcpHandle(socketOrHandle)) throw new TypeError('adoptConnected: not a net.Socket nor a TCP handle');
    if (rawTcpOn()) {
      state.rawTcp.uses++;
      socketOrHandle.readStop();
      return RawSocket.wrap(socketOrHandle, owner);
    }
    return new SocketPort(new net.Socket({ handle: socketOrHandle, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts), owner, false);
  }
  const socket = socketOrHandle as net.Socket & { _handle?: unknown };
  const h = socket._handle;
  if (rawTcpOn() && isTcpHandle(h) && !socket.connecting && !socket.destroyed && socket.readableLength === 0 && socket.writableLength === 0) {
    h.reading = false;
    h.readStop();
    socket._handle = null; // the socket object lets go of the handle: destroying it closes nothing
    socket.destroy();
    state.rawTcp.uses++;
    return RawSocket.wrap(h, owner);
  }
  return new SocketPort(socket, owner, false);
}

/**
 * Takes over `server`'s accepts (call it once listening): each connection comes to `onAccept` as a
 * TcpPort — a RawSocket, or (rawTcp off, also when turned off at runtime) a paused net.Socket's
 * SocketPort — with TCP_NODELAY (set once on the listening socket). Set its owner there. Accept
 * errors (EMFILE …) go to `onError` with the errno. Returns false (nothing changed) when the
 * server's handle does not fit; the caller then takes 'connection' events through adoptConnected.
 */
export function acceptRaw(server: net.Server, onAccept: (port: TcpPort) => void, onError: (errno: number) => void): boolean {
  const handle = (server as unknown as { _handle?: { onconnection?: unknown; setNoDelay?: unknown } | null })._handle;
  if (!checkRawTcp() || handle === null || handle === undefined || typeof handle.onconnection !== 'function' || typeof handle.setNoDelay !== 'function') return false;
  // Set once on the listening socket: Linux gives every accepted socket the listener's
  // TCP_NODELAY, so no connection needs its own setsockopt (what net.Server's noDelay does).
  if ((handle.setNoDelay as (on: boolean) => number).call(handle, true) !== 0) return false;
  handle.onconnection = (err: number, client: TcpHandle | undefined): void => {
    if (err !== 0 || client === undefined) {
      onError(err);
      return;
    }
    if (state.rawTcp.off === null) {
      state.rawTcp.uses++;
      onAccept(RawSocket.wrap(client, NO_OWNER));
      return;
    }
    const socket = new net.Socket({ handle: client, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
    onAccept(new SocketPort(socket, NO_OWNER, false));
  };
  return true;
}

/**
 * The raw path end to end on loopback: a raw accept and a raw dial, "probe" one way, "ok" and a
 * FIN back. Null: it works.
 */
function rawTcpProbe(): Promise<string | null> {
  return new Promise((resolve) => {
    const server = net.createServer();
    const before = state.rawTcp.uses;
    let settled = false;
    const socks: TcpPort[] = [];
    const finish = (problem: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const s of socks) s.close();
      server.close();
      state.rawTcp.uses = before; // the probe is not a use
      resolve(problem);
    };
    const timer = setTimeout(() => finish('no answer within 2 s'), 2000);
    server.once('error', (err) => finish(`listen: ${err.message}`));
    const fail = (what: string) => (_s: TcpPort, errno: number): void => finish(`${what} failed (${util.getSystemErrorName(errno)})`);
    const serverSide: TcpPortOwner = {
      ...NO_OWNER,
      onData: (sock, buf, n) => {
        if (buf.toString('latin1', 0, n) !== 'probe') finish(`the accepted side read ${JSON.stringify(buf.toString('latin1', 0, n))}`);
        else if (sock.write(Buffer.from('ok')) < 0 || sock.shutdown() !== 0) finish('write or shutdown failed');
        return undefined;
      },
      onShutdown: () => {},
      onWritten: () => {},
      onError: fail('read on the accepted side'),
    };
    let got = '';
    const clientSide: TcpPortOwner = {
      ...NO_OWNER,
      onConnected: (sock, status) => {
        if (status !== 0) finish(`connect failed (${util.getSystemErrorName(status)})`);
        else if (sock.write(Buffer.from('probe')) < 0 || sock.readStart() !== 0) finish('write or read start failed');
      },
      onData: (_sock, buf, n) => ((got += buf.toString('latin1', 0, n)), undefined),
      onEnd: () => finish(got === 'ok' ? null : `the dialled side read ${JSON.stringify(got)} instead of "ok"`),
      onWritten: () => {},
      onError: fail('read on the dialled side'),
    };
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const ok = acceptRaw(server, (c) => {
        socks.push(c);
        if (!c.raw) {
          finish('the hook handed over a net.Socket');
          return;
        }
        c.owner = serverSide;
        c.readStart();
      }, (errno) => finish(`accept failed (${util.getSystemErrorName(errno)})`));
      if (!ok) return finish("the server's handle has no onconnection");
      const dialled = RawSocket.connect('127.0.0.1', (server.address() as net.AddressInfo).port, clientSide);
      if (typeof dialled === 'number') return finish(`connect failed at once (${util.getSystemErrorName(dialled)})`);
      socks.push(dialled);
    });
  });
}

// ---- raw UDP -------------------------------------------------------------------------------

/** A datagram received through the handle: the payload and the sender. */
export type RawMessageHandler = (msg: Buffer, address: string, port: number) => void;

type RecvInfo = { readonly address: string; readonly port: number };
interface UdpHandle {
  onmessage: (nread: number, handle: unknown, buf?: Buffer, rinfo?: RecvInfo) => void;
  /** Connected: (req, list, count, hasCallback); unconnected: (req, list, count, port, ip, hasCallback). Bytes + 1 when done at once, 0 when queued, < 0 an errno. */
  send(req: SendReq, list: readonly Buffer[], count: number, ...rest: (number | string | boolean)[]): number;
  getSendQueueCount(): number;
}
type SendReq = { list?: unknown };

let SendWrap: (new () => SendReq) | null = null;
let rawStateSymbol: symbol | null = null;
/** The wrap handed to every send; replaced only when a send had to queue (it then belongs to that send). */
let spare: SendReq | null = null;

function checkRawUdp(): boolean {
  return checkDgramHandle('rawUdp', 'udp4', (sym, handle) => {
    const binding = nodeBinding('udp_wrap');
    if (typeof binding['SendWrap'] !== 'function' || typeof handle['send'] !== 'function' || typeof handle['getSendQueueCount'] !== 'function') {
      return `this Node (${process.version}) has no udp_wrap SendWrap, or no UDP handle send()/getSendQueueCount()`;
    }
    SendWrap = binding['SendWrap'] as new () => SendReq;
    rawStateSymbol = sym;
    return null;
  });
}

/**
 * A dgram socket's datagrams, one interface either way: through its UDP handle (RawUdp, the fast
 * path) or through dgram's public 'message' and send() (DgramPort, the fallback). Sends are fire
 * and forget, as dgram's without a callback.
 */
export interface UdpPort {
  /** Whether this port uses the fast path. */
  readonly raw: boolean;
  /** One datagram on a connected socket. */
  send(msg: Buffer): void;
  /** The buffers as one datagram on a connected socket. */
  sendList(list: readonly Buffer[]): void;
  /** One datagram to ip:port (an IP literal of the socket's family). */
  sendTo(msg: Buffer, port: number, ip: string): void;
  sendListTo(list: readonly Buffer[], port: number, ip: string): void;
  /** Sends waiting in this process for the socket to take them. */
  queued(): number;
}

/** The fallback: dgram's public API. */
class DgramPort implements UdpPort {
  readonly raw = false;
  constructor(private readonly socket: dgram.Socket, onMessage: RawMessageHandler) {
    socket.on('message', (msg, rinfo) => onMessage(msg, rinfo.address, rinfo.port));
  }
  send(msg: Buffer): void {
    this.socket.send(msg);
  }
  sendList(list: readonly Buffer[]): void {
    this.socket.send(list as Buffer[]);
  }
  sendTo(msg: Buffer, port: number, ip: string): void {
    this.socket.send(msg, port, ip);
  }
  sendListTo(list: readonly Buffer[], port: number, ip: string): void {
    this.socket.send(list as Buffer[], port, ip);
  }
  queued(): number {
    return this.socket.getSendQueueCount();
  }
}

const NO_DATAGRAM = Buffer.alloc(0);

/** A dgram socket whose datagrams go through its UDP handle (see 4. above). */
class RawUdp implements UdpPort {
  readonly raw = true;
  /** The one-element list a single datagram is sent as (reused: no array per send). */
  private readonly one: Buffer[] = [NO_DATAGRAM];
  /** A send has queued since the queue was last seen empty: only then is the handle asked. */
  private mayQueue = false;
  constructor(private readonly handle: UdpHandle) {}

  send(msg: Buffer): void {
    this.one[0] = msg;
    if (this.handle.send(spare as SendReq, this.one, 1, false) === 0) this.queuedWith(msg);
    this.one[0] = NO_DATAGRAM; // an idle flow must not keep its last datagram alive
  }

  sendList(list: readonly Buffer[]): void {
    if (this.handle.send(spare as SendReq, list, list.length, false) === 0) this.queuedWith(list);
  }

  sendTo(msg: Buffer, port: number, ip: string): void {
    this.one[0] = msg;
    if (this.handle.send(spare as SendReq, this.one, 1, port, ip, false) === 0) this.queuedWith(msg);
    this.one[0] = NO_DATAGRAM;
  }

  sendListTo(list: readonly Buffer[], port: number, ip: string): void {
    if (this.handle.send(spare as SendReq, list, list.length, port, ip, false) === 0) this.queuedWith(list);
  }

  /** No call into the handle while no send has queued. */
  queued(): number {
    if (!this.mayQueue) return 0;
    const n = this.handle.getSendQueueCount();
    if (n <= 0) this.mayQueue = false;
    return n;
  }

  /** The send went into libuv's queue: the spare wrap now belongs to it and keeps its buffers alive. */
  private queuedWith(what: Buffer | readonly Buffer[]): void {
    this.mayQueue = true;
    (spare as SendReq).list = what;
    spare = new (SendWrap as new () => SendReq)();
  }
}

/**
 * The datagram path of a bound socket (call it after bind's or connect's callback): its datagrams
 * go to `onMessage`, and the port returned sends. Through the UDP handle when the fast path is on
 * (no 'message' events; receive errors, such as ICMP-driven ECONNREFUSED, are still emitted as
 * 'error'); through dgram's 'message' and send() when it is off or the socket has no handle (not
 * bound yet, closed).
 */
export function udpPort(socket: dgram.Socket, onMessage: RawMessageHandler): UdpPort {
  return rawUdp(socket, onMessage) ?? new DgramPort(socket, onMessage);
}

/** The fast path of udpPort, or null (nothing changed). */
function rawUdp(socket: dgram.Socket, onMessage: RawMessageHandler): RawUdp | null {
  if (!checkRawUdp() || rawStateSymbol === null) return null;
  const handle = udpStateOf(socket, rawStateSymbol)?.handle as unknown as UdpHandle | undefined;
  // dgram sets the handle's onmessage when the socket starts listening (bind): ours must come after.
  if (handle === undefined || handle === null || typeof handle.onmessage !== 'function') return null;
  spare ??= new (SendWrap as new () => SendReq)();
  handle.onmessage = (nread, _h, buf, rinfo) => {
    if (nread < 0) socket.emit('error', recvError(nread));
    else onMessage(buf as Buffer, (rinfo as RecvInfo).address, (rinfo as RecvInfo).port);
  };
  state.rawUdp.uses++;
  return new RawUdp(handle);
}

function recvError(errno: number): NodeJS.ErrnoException {
  let code = 'UNKNOWN';
  try {
    code = util.getSystemErrorName(errno);
  } catch {
    // not a system errno
  }
  return Object.assign(new Error(`recvmsg ${code}`), { errno, code, syscall: 'recvmsg' });
}

/** Two loopback sockets, both raw: 'probe' one way (from the right port), 'ack' back. Null: fine. */
function rawUdpProbe(): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const a = dgram.createSocket('udp4');
    const b = dgram.createSocket('udp4');
    const uses = state.rawUdp.uses;
    const timer = setTimeout(() => finish('no datagram within 2 s'), 2000);
    let done = false;
    const finish = (problem: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      a.close();
      b.close();
      state.rawUdp.uses = uses; // the probe is not a use
      resolve(problem);
    };
    a.once('error', reject);
    b.once('error', reject);
    a.on('message', () => finish("a datagram arrived as 'message'"));
    b.on('message', () => finish("a datagram arrived as 'message'"));
    a.bind(0, '127.0.0.1', () => {
      b.connect(a.address().port, '127.0.0.1', () => {
        const bPort = b.address().port;
        const ra = rawUdp(a, (msg, address, port) => {
          if (msg.toString() !== 'probe' || address !== '127.0.0.1' || port !== bPort) finish(`got ${JSON.stringify(msg.toString())} from ${address}:${port}`);
          else ra?.sendTo(Buffer.from('ack'), port, address);
        });
        const rb = rawUdp(b, (msg) => finish(msg.toString() === 'ack' ? null : `got ${JSON.stringify(msg.toString())} instead of "ack"`));
        if (ra === null || rb === null) {
          finish('a socket could not be switched (no handle)');
          return;
        }
        rb.sendList([Buffer.from('pro'), Buffer.from('be')]);
      });
    });
  });
}

// ---- nsSockets: namespace sockets from the native helper --------------------------------------
// The fence's second file, src/internals-nsd.ts, holds this path's code (the IPC-mode pipe that
// receives sockets made by native/pf-nsd inside network namespaces, and the adoption of those
// handles); its state, structural check and the binding lookup live here with the others. The
// path's startup self-test runs when the first helper starts (internals-nsd.ts, nsdProbe), not
// in selfTest(): most processes (docker-proxy, workers) never dial into a namespace.

/** nodeBinding for the fence's second file, which also needs pipe_wrap. */
export function fenceBinding(name: 'tcp_wrap' | 'stream_wrap' | 'udp_wrap' | 'pipe_wrap'): Record<string, unknown> {
  return nodeBinding(name as 'tcp_wrap');
}

/** Counts uses of a fast path (the fence's second file). */
export function countFastPathUse(path: FastPath, n = 1): void {
  state[path].uses += n;
}

let nsdBinaryOverride: string | null = null;

/** The native helper: native/build/pf-nsd of this package (src/ and dist/ are both one level down). */
export function nsdBinaryPath(): string {
  return nsdBinaryOverride ?? fileURLToPath(new URL('../native/build/pf-nsd', import.meta.url));
}

/** Tests: use another binary (a broken one, to see the fallback); null restores the default. Re-checks the path. */
export function setNsdBinaryForTests(binary: string | null): void {
  nsdBinaryOverride = binary;
  state.nsSockets = { off: null, checked: false, uses: state.nsSockets.uses };
}

function checkNsSockets(): boolean {
  const st = state.nsSockets;
  if (st.checked) return st.off === null;
  st.checked = true;
  const env = process.env['PORTFERRY_NSD'];
  if (env === '0' || env === 'off') {
    st.off = `turned off by PORTFERRY_NSD=${env}`;
    return false;
  }
  if (process.platform !== 'linux') {
    st.off = 'Linux only';
    return false;
  }
  const binary = nsdBinaryPath();
  try {
    accessSync(binary, fsConstants.X_OK);
  } catch (err) {
    st.off = `the native helper ${binary} is not there or not executable (${errnoName(err)}): it is built at install with cc (npm run build:native)`;
    return false;
  }
  try {
    const pipe = fenceBinding('pipe_wrap');
    const tcp = fenceBinding('tcp_wrap');
    const sw = fenceBinding('stream_wrap');
    const udp = fenceBinding('udp_wrap');
    const pipeProto = (pipe['Pipe'] as { prototype?: Record<string, unknown> } | undefined)?.prototype;
    const tcpProto = (tcp['TCP'] as { prototype?: Record<string, unknown> } | undefined)?.prototype;
    const udpProto = (udp['UDP'] as { prototype?: Record<string, unknown> } | undefined)?.prototype;
    const ipc = (pipe['constants'] as Record<string, unknown> | undefined)?.['IPC'];
    const missing = [
      ...['connect', 'readStart', 'readStop', 'writeBuffer', 'close', 'useUserBuffer'].filter((m) => typeof pipeProto?.[m] !== 'function').map((m) => `Pipe.${m}`),
      ...['connect', 'connect6', 'close'].filter((m) => typeof tcpProto?.[m] !== 'function').map((m) => `TCP.${m}`),
      ...['recvStart', 'close'].filter((m) => typeof udpProto?.[m] !== 'function').map((m) => `UDP.${m}`),
      ...(typeof ipc === 'number' ? [] : ['pipe_wrap constants.IPC']),
      ...(typeof pipe['PipeConnectWrap'] === 'function' ? [] : ['PipeConnectWrap']),
      ...(typeof tcp['TCPConnectWrap'] === 'function' ? [] : ['TCPConnectWrap']),
      ...(typeof sw['WriteWrap'] === 'function' && sw['streamBaseState'] instanceof Int32Array && typeof sw['kReadBytesOrError'] === 'number' ? [] : ['stream_wrap WriteWrap/streamBaseState']),
    ];
    if (missing.length > 0) throw new Error(`lacks ${missing.join(', ')}`);
  } catch (err) {
    st.off = `this Node (${process.version}) cannot: ${err instanceof Error ? err.message : String(err)}`;
    return false;
  }
  return true;
}

/** Whether the nsSockets path is on (its structural check included). */
export function nsSocketsOn(): boolean {
  return checkNsSockets();
}

function errnoName(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : String(err);
}
