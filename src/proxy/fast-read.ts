// Reading a socket into buffers we own (Node's `onread` mechanism), also for ACCEPTED sockets.
//
// Why: by default Node allocates a fresh 64 KiB buffer for every read and hands it to 'data'
// listeners; on a bulk transfer that allocation, the GC behind it and the small read size are
// most of the relay's cost. `net.connect({ onread })` lets a socket read into a buffer we supply,
// but Node 20 offers it only for sockets it creates from `net.connect` — not for accepted sockets
// nor for sockets received over IPC. The mechanism itself is the same for every stream handle:
// the socket's `kBuffer`/`kBufferCb`/`kBufferGen` slots (initialised to null by the Socket
// constructor) and the handle's `useUserBuffer()`. This module switches an existing socket to it,
// after checking that every piece is there; when anything is missing it does nothing and returns
// false, and the caller keeps using 'data' events. All of Node's private surface is used here and
// nowhere else.
import type net from 'node:net';

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

let slots: Slots | null | undefined;

function findSlots(socket: net.Socket): Slots | null {
  if (slots !== undefined) return slots;
  const own = Object.getOwnPropertySymbols(socket);
  const find = (name: string): symbol | undefined => own.find((s) => s.description === name);
  const kBuffer = find('kBuffer');
  const kBufferCb = find('kBufferCb');
  const kBufferGen = find('kBufferGen');
  slots = kBuffer !== undefined && kBufferCb !== undefined && kBufferGen !== undefined ? { kBuffer, kBufferCb, kBufferGen } : null;
  return slots;
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
 * Returns false (and changes nothing) when this Node does not have the mechanism.
 */
export function readIntoOwnBuffers(socket: net.Socket, onRead: ReadCallback, next: BufferSource): boolean {
  const s = findSlots(socket);
  const handle = handleOf(socket);
  if (s === null || handle === null || socket.readableLength > 0) return false;
  const record = socket as unknown as Record<symbol, unknown>;
  if (!(s.kBuffer in record) || record[s.kBuffer] !== null) return false; // not a plain Node socket, or already switched
  const first = next();
  record[s.kBufferCb] = onRead;
  record[s.kBufferGen] = next;
  record[s.kBuffer] = first;
  handle.useUserBuffer(first);
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
