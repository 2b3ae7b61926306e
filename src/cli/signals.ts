// Termination signals for commands that leave something behind unless they clean up (bench and
// demo make namespaces, veth pairs, rules and processes). Signals belong to the CLI: the modules
// below it (netns/topology, bench) only offer cleanup functions and AbortSignals.

const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];

export interface HeldSignals {
  /** The first signal received, or null. */
  readonly received: StopSignal | null;
  /**
   * Removes the handlers. When a signal came, re-raises it so that the process ends by it as it
   * would have without us (a shell sees 128 + its number), unless `exitCode` is given.
   */
  release(exitCode?: number): void;
}

/**
 * Until release(), SIGINT/SIGTERM/SIGHUP call `onStop` once (further signals are ignored while the
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
  let released = false;
  return {
    get received() {
      return received;
    },
    release(exitCode?: number) {
      if (released) return;
      released = true;
      for (const s of STOP_SIGNALS) process.off(s, handler);
      if (received === null) return;
      if (exitCode !== undefined) process.exit(exitCode);
      process.kill(process.pid, received);
    },
  };
}
