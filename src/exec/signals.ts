/** Linux signal numbers to names, for `signal` in command results. */
const NAMES: Record<number, string> = {
  1: "SIGHUP",
  2: "SIGINT",
  3: "SIGQUIT",
  4: "SIGILL",
  5: "SIGTRAP",
  6: "SIGABRT",
  7: "SIGBUS",
  8: "SIGFPE",
  9: "SIGKILL",
  10: "SIGUSR1",
  11: "SIGSEGV",
  12: "SIGUSR2",
  13: "SIGPIPE",
  14: "SIGALRM",
  15: "SIGTERM",
  24: "SIGXCPU",
  25: "SIGXFSZ",
};

export function signalName(n: number): string | null {
  return NAMES[n] ?? (n > 0 && n < 65 ? `SIG${n}` : null);
}

/** The number of a signal named with or without `SIG` (`TERM`, `SIGKILL`), or null. */
export function signalNumber(name: string): number | null {
  const full = name.startsWith("SIG") ? name : `SIG${name}`;
  for (const [n, s] of Object.entries(NAMES)) if (s === full) return Number(n);
  const m = /^SIG(\d+)$/.exec(full);
  return m ? Number(m[1]) : null;
}
