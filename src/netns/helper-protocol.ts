// Messages between the namespace dialer (host side, src/netns/helper.ts) and its helper
// (src/netns/helper-main.ts, running inside the namespace). JSON over Node's IPC channel; connected
// TCP sockets and bound UDP sockets travel as handles beside `tcp` and `udp` replies.

/** main → helper */
export type HelperRequest =
  | { readonly type: 'dial-tcp'; readonly id: number; readonly ip: string; readonly port: number; readonly timeoutMs: number }
  | { readonly type: 'open-udp'; readonly id: number; readonly family: 4 | 6 }
  | { readonly type: 'cancel'; readonly id: number };

/** helper → main */
export type HelperReply =
  | { readonly type: 'ready'; readonly pid: number; readonly netns: string | null }
  /** A connected, non-reading TCP socket comes with this message as its handle. */
  | { readonly type: 'tcp'; readonly id: number }
  /** A UDP socket bound inside the namespace (not connected: see helper.ts) comes as its handle. */
  | { readonly type: 'udp'; readonly id: number }
  | { readonly type: 'error'; readonly id: number; readonly errno: string; readonly message: string; readonly timeout: boolean };

export function isHelperReply(v: unknown): v is HelperReply {
  if (typeof v !== 'object' || v === null) return false;
  const type = (v as { type?: unknown }).type;
  return type === 'ready' || type === 'tcp' || type === 'udp' || type === 'error';
}

export function isHelperRequest(v: unknown): v is HelperRequest {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as { type?: unknown; id?: unknown };
  return (r.type === 'dial-tcp' || r.type === 'open-udp' || r.type === 'cancel') && typeof r.id === 'number';
}
