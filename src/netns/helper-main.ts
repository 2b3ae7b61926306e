// The helper that lives INSIDE a network namespace. Started by NetnsDialer (src/netns/helper.ts) as
// `nsenter --net=PATH [--user=PATH --preserve-credentials] node helper-main.js` with an IPC channel.
// It dials on request and hands the connected socket back over the channel (SCM_RIGHTS underneath);
// the main process relays. It never reads a byte: a TCP socket is paused before it connects, so
// the kernel keeps everything (a server's banner included) for the main process.
// It exits when its parent goes away (IPC disconnect), so it can never outlive the forwarder.
import net from 'node:net';
import dgram from 'node:dgram';
import { readlinkSync } from 'node:fs';
import { isHelperRequest, type HelperReply, type HelperRequest } from './helper-protocol.js';

const pending = new Map<number, { cancel(): void }>();

function reply(msg: HelperReply, handle?: net.Socket | dgram.Socket, after?: (err: Error | null) => void): void {
  if (!process.connected || process.send === undefined) return;
  const done = (err: Error | null): void => {
    if (after !== undefined) after(err);
  };
  if (handle === undefined) process.send(msg, undefined, {}, done);
  else process.send(msg, handle, { keepOpen: false }, done);
}

function errorReply(id: number, err: unknown, timeout: boolean): HelperReply {
  const e = err as { code?: unknown; message?: unknown };
  return {
    type: 'error',
    id,
    errno: typeof e.code === 'string' ? e.code : timeout ? 'ETIMEDOUT' : 'unknown',
    message: typeof e.message === 'string' ? e.message : String(err),
    timeout,
  };
}

function dialTcp(req: Extract<HelperRequest, { type: 'dial-tcp' }>): void {
  // TCP_NODELAY here: the option belongs to the socket, which the main process then relays on.
  const socket = net.connect({ host: req.ip, port: req.port, allowHalfOpen: true, noDelay: true });
  // Paused before the connect completes, Node never starts reading (afterConnect skips read(0)).
  socket.pause();
  let settled = false;
  const finish = (): boolean => {
    if (settled) return false;
    settled = true;
    clearTimeout(timer);
    pending.delete(req.id);
    return true;
  };
  const timer = setTimeout(() => {
    if (!finish()) return;
    socket.destroy();
    reply(errorReply(req.id, Object.assign(new Error(`connect timed out after ${req.timeoutMs} ms`), { code: 'ETIMEDOUT' }), true));
  }, req.timeoutMs);
  pending.set(req.id, {
    cancel() {
      if (finish()) socket.destroy();
    },
  });
  socket.once('connect', () => {
    if (!finish()) return;
    socket.removeAllListeners('error');
    socket.on('error', () => {});
    reply({ type: 'tcp', id: req.id }, socket, (err) => {
      if (err !== null) {
        socket.destroy();
        reply(errorReply(req.id, err, false));
      }
    });
  });
  socket.once('error', (err) => {
    if (!finish()) return;
    socket.destroy();
    reply(errorReply(req.id, err, false));
  });
}

function openUdp(req: Extract<HelperRequest, { type: 'open-udp' }>): void {
  // Bound here (so the socket belongs to this namespace), connected by the main process: a handle
  // that arrives already connected is unusable from JS (libuv marks it connected, Node's JS state
  // does not, so every send fails either EISCONN or ERR_SOCKET_BAD_PORT).
  const socket = dgram.createSocket(req.family === 6 ? 'udp6' : 'udp4');
  const fail = (err: unknown): void => {
    socket.close();
    reply(errorReply(req.id, err, false));
  };
  socket.once('error', fail);
  socket.bind(0, () => {
    socket.off('error', fail);
    socket.on('error', () => {});
    // The main process holds its own descriptor once the message is written; close ours.
    reply({ type: 'udp', id: req.id }, socket, () => socket.close());
  });
}

function netnsId(): string | null {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return null;
  }
}

if (process.send === undefined) {
  process.stderr.write('portferry netns helper: start me through the portferry namespace dialer (no IPC channel)\n');
  process.exit(2);
}

process.on('message', (msg: unknown) => {
  if (!isHelperRequest(msg)) return;
  switch (msg.type) {
    case 'dial-tcp':
      dialTcp(msg);
      break;
    case 'open-udp':
      openUdp(msg);
      break;
    case 'cancel':
      pending.get(msg.id)?.cancel();
      break;
  }
});
process.on('disconnect', () => process.exit(0));
// Ctrl-C at a terminal reaches the whole process group: the forwarder decides when we stop (it
// closes the channel or sends SIGTERM), so a SIGINT alone is ignored.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => process.exit(0));
reply({ type: 'ready', pid: process.pid, netns: netnsId() });
