/**
 * Cleanups that must run however the bench ends: normally, on an error, or
 * on Ctrl-C/SIGTERM. Run in reverse order of registration, each bounded.
 */

type Cleanup = { name: string; fn: () => Promise<void> | void };

const stack: Cleanup[] = [];
let running: Promise<void> | null = null;

/** Registers a cleanup; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(name: string, fn: () => Promise<void> | void): () => Promise<void> {
  const entry: Cleanup = { name, fn };
  stack.push(entry);
  let done: Promise<void> | null = null;
  return () => {
    done ??= (async () => {
      const i = stack.indexOf(entry);
      if (i >= 0) stack.splice(i, 1);
      await bounded(entry);
    })();
    return done;
  };
}

async function bounded(entry: Cleanup, limitMs = 30_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(entry.fn),
      new Promise<void>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`took over ${limitMs} ms`)), limitMs);
      }),
    ]);
  } catch (err) {
    process.stderr.write(`cleanup ${entry.name} failed: ${err instanceof Error ? err.message : String(err)}\n`);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs every registered cleanup, newest first. */
export function runCleanups(): Promise<void> {
  running ??= (async () => {
    while (stack.length > 0) {
      const entry = stack.pop() as Cleanup;
      await bounded(entry);
    }
  })();
  return running;
}

/** On SIGINT/SIGTERM: clean up, then exit with 128+signal. */
export function installSignalHandlers(): void {
  for (const [signal, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping the fleet and the service…\n`);
      runCleanups().finally(() => process.exit(code));
    });
  }
}
