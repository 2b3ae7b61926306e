// A closed output (`portferry validate --json -c F | head -3`): Node ignores SIGPIPE, so a write to
// a pipe nobody reads fails with EPIPE as an 'error' event on process.stdout/stderr, which nobody
// handled: an unhandled-error stack trace, exit 1 (issue 20, 7g). Here a command ends quietly
// instead, with the status a shell shows for `cat`, `grep` or git killed by SIGPIPE: 141.

/** 128 + SIGPIPE (13): what `cmd | head` reports for coreutils, so `set -o pipefail` scripts see portferry the same way. */
export const EXIT_OUTPUT_CLOSED = 141;

/** Errors that mean the reader of our stdout/stderr is gone. */
const GONE = new Set(['EPIPE', 'ERR_STREAM_DESTROYED']);

/**
 * What to do when the output is closed. `exit` (every command but run): end now, or through the
 * registered cleanup of a command that leaves things behind (bench, demo). `ignore` (run): the
 * daemon keeps forwarding and just stops writing — its logger (pino) already drops its lines on
 * EPIPE, and ending every mapping because a log reader went away would turn a closed pipe into an
 * outage; SIGTERM still stops it.
 */
export type ClosedOutputMode = 'exit' | 'ignore';

let mode: ClosedOutputMode = 'exit';
let closed = false;
let cleanup: (() => void) | null = null;

function onError(err: NodeJS.ErrnoException): void {
  if (!GONE.has(err.code ?? '')) throw err; // anything else stays the crash it was
  if (closed || mode === 'ignore') return;
  closed = true;
  if (cleanup !== null) cleanup();
  else process.exit(EXIT_OUTPUT_CLOSED);
}

/** Installs the handlers on process.stdout and process.stderr (once, first thing in main). */
export function handleClosedOutput(): void {
  process.stdout.on('error', onError);
  process.stderr.on('error', onError);
}

export function setClosedOutputMode(m: ClosedOutputMode): void {
  mode = m;
}

/**
 * For a command that must remove what it made before it ends: `fn` runs instead of the immediate
 * exit and must end the process (with EXIT_OUTPUT_CLOSED) when done. Returns the unregister call.
 */
export function onOutputClosed(fn: () => void): () => void {
  cleanup = fn;
  return () => {
    if (cleanup === fn) cleanup = null;
  };
}
