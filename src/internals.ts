// Every use of Node's private internals, in one place (longer than our usual 350 lines on purpose:
// the point of this file is that there is only one). Each fast path here has a public-API
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
// 3. rawUdp — UDP datagrams through the socket's UDP handle (raw UDP section, at the end). Per
//    datagram, dgram's public path costs a 'message' emit, argument checks, a lookup step and a
//    `new SendWrap()` (a C++-backed object) for every send. Here the handle's `onmessage` calls
//    our callback directly, and sends go to `handle.send(req, list, count[, port, ip], false)` with
//    one spare SendWrap reused while sends complete synchronously (the handle returns bytes + 1 and
//    has not touched the wrap); a send that had to queue keeps that wrap (and its buffers) and a
//    new spare is made. Errors still reach the dgram socket's 'error' listeners.
//    Fallback: the caller keeps dgram's 'message' events and send().
import dgram from 'node:dgram';
import net from 'node:net';
import util from 'node:util';

export type FastPath = 'bulkReads' | 'udp6Connect' | 'rawUdp';

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
  rawUdp: { off: null, checked: false, uses: 0 },
};

const RELIES_ON: Record<FastPath, string> = {
  bulkReads: "net.Socket's kBuffer/kBufferCb/kBufferGen slots and the stream handle's useUserBuffer()",
  udp6Connect: "dgram's 'state symbol' and the UDP handle's connect6()",
  rawUdp: "process.binding('udp_wrap').SendWrap, dgram's 'state symbol' and the UDP handle's onmessage/send()",
};

/** Which fast paths are on, why not, and how often each was used. Cheap: no I/O. */
export function internals(): InternalsReport {
  checkBulkReadSlots();
  checkUdp6Handle();
  checkRawUdp();
  const one = (p: FastPath): FastPathStatus => ({ on: state[p].off === null, why: state[p].off ?? RELIES_ON[p], uses: state[p].uses });
  return { bulkReads: one('bulkReads'), udp6Connect: one('udp6Connect'), rawUdp: one('rawUdp') };
}

/** Turns a fast path off (the self-test when it fails; tests that exercise the fallback). */
export function disableFastPath(path: FastPath, why: string): void {
  state[path].off = why;
  state[path].checked = true;
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
  const st = state.udp6Connect;
  if (st.checked) return st.off === null;
  st.checked = true;
  let socket: dgram.Socket | null = null;
  try {
    socket = dgram.createSocket('udp6');
    const sym = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
    const handle = sym === undefined ? undefined : udpStateOf(socket, sym)?.handle;
    if (sym === undefined || handle === undefined || typeof handle['connect6'] !== 'function' || typeof handle['connect'] !== 'function') {
      st.off = `this Node (${process.version}) has no dgram 'state symbol' with a handle that has connect6()`;
      return false;
    }
    udpStateSymbol = sym;
    return true;
  } catch (err) {
    st.off = `cannot check: ${err instanceof Error ? err.message : String(err)}`;
    return false;
  } finally {
    socket?.close();
  }
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
  const st = state.rawUdp;
  if (st.checked) return st.off === null;
  st.checked = true;
  let socket: dgram.Socket | null = null;
  try {
    const binding = (process as unknown as { binding(name: string): { SendWrap?: unknown } }).binding('udp_wrap');
    socket = dgram.createSocket('udp4');
    const sym = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
    const handle = sym === undefined ? undefined : udpStateOf(socket, sym)?.handle;
    if (typeof binding.SendWrap !== 'function' || handle === undefined || typeof handle['send'] !== 'function' || typeof handle['getSendQueueCount'] !== 'function') {
      st.off = `this Node (${process.version}) has no udp_wrap SendWrap, or no dgram 'state symbol' with a handle that has send()`;
      return false;
    }
    SendWrap = binding.SendWrap as new () => SendReq;
    rawStateSymbol = sym as symbol;
    return true;
  } catch (err) {
    st.off = `cannot check: ${err instanceof Error ? err.message : String(err)}`;
    return false;
  } finally {
    socket?.close();
  }
}

/** A dgram socket whose datagrams go through its UDP handle (see 3. above). Sends are fire and forget, as dgram's without a callback. */
export class RawUdp {
  private readonly one: Buffer[] = [];
  constructor(private readonly handle: UdpHandle) {}

  /** Sends one datagram on a connected socket. */
  send(msg: Buffer): void {
    this.one[0] = msg;
    if (this.handle.send(spare as SendReq, this.one, 1, false) === 0) queuedWith(msg);
  }

  /** Sends the buffers as one datagram on a connected socket. */
  sendList(list: readonly Buffer[]): void {
    if (this.handle.send(spare as SendReq, list, list.length, false) === 0) queuedWith(list);
  }

  /** Sends one datagram to ip:port (ip literal, as the socket's family). */
  sendTo(msg: Buffer, port: number, ip: string): void {
    this.one[0] = msg;
    if (this.handle.send(spare as SendReq, this.one, 1, port, ip, false) === 0) queuedWith(msg);
  }

  sendListTo(list: readonly Buffer[], port: number, ip: string): void {
    if (this.handle.send(spare as SendReq, list, list.length, port, ip, false) === 0) queuedWith(list);
  }

  /** Sends waiting in the process for the socket to take them. */
  queued(): number {
    return this.handle.getSendQueueCount();
  }
}

/** The send went into libuv's queue: the spare wrap now belongs to it and keeps its buffers alive. */
function queuedWith(what: Buffer | readonly Buffer[]): void {
  (spare as SendReq).list = what;
  spare = new (SendWrap as new () => SendReq)();
}

/**
 * Switches `socket` to raw receive and send: its datagrams go to `onMessage` (no 'message' events;
 * receive errors, such as ICMP-driven ECONNREFUSED, are still emitted as 'error'), and the RawUdp
 * returned sends through the handle. Call it once the socket is bound (after bind's or connect's
 * callback). Null (nothing changed) when the fast path is off, the socket is not bound yet or is
 * closed: the caller keeps 'message' events and send().
 */
export function rawUdp(socket: dgram.Socket, onMessage: RawMessageHandler): RawUdp | null {
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
