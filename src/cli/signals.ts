// Termination signals for commands that leave something behind unless they clean up (bench and
// demo make namespaces, veth pairs, rules and processes). Signals belong to the CLI: the modules
// below it (netns/topology, bench) only offer cleanup functions and AbortSignals. A closed
// output (EPIPE, output.ts) is handled like a signal here, as SIGPIPE: clean up, then exit 141.
import { EXIT_OUTPUT_CLOSED, onOutputClosed } from './output.js';

const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number] | 'SIGPIPE';

export interface HeldSignals {
  /** The first signal received, or null. */
  readonly received: StopSignal | null;
  /**
   * Removes the handlers. When a signal came, re-raises it so that the process ends by it as it
   * would have without us (a shell sees 128 + its number), unless `exitCode` is given. After a
   * closed output (SIGPIPE, which Node ignores) it exits with EXIT_OUTPUT_CLOSED (141).
   */
  release(exitCode?: number): void;
}

/**
 * Until release(), SIGINT/SIGTERM/SIGHUP (or a closed output, as SIGPIPE) call `onStop` once (further signals are ignored while the
 * cleanup it starts runs; SIGKILL remains for the impatient).
 */
export function holdStopSignals(onStop: (sig: StopSignal) => void): HeldSignals {
  let received: StopSignal | null = null;
  const handler = (sig: StopSignal): void => {
    if (received !== null) return;
    received = sig;
    onStop(sig);
  };
  for (const s of STOP_SIGNALS) process.on(s, handler);
  const unhookOutput = onOutputClosed(() => handler('SIGPIPE'));
  let released = false;
  return {
    get received() {
      return received;
    },
    release(exitCode?: number) {
      if (released) return;
      released = true;
      for (const s of STOP_SIGNALS) process.off(s, handler);
      unhookOutput();
      if (received === null) return;
      if (received === 'SIGPIPE') process.exit(EXIT_OUTPUT_CLOSED);
      if (exitCode !== undefined) process.exit(exitCode);
      process.kill(process.pid, received);
    },
  };
}
