/**
 * Best-effort steps: work whose failure must not fail the caller (a cleanup,
 * a cancel sent on the way out, a cache refresh) but must not vanish either.
 * Every such failure is reported to one sink, which the service points at its
 * logger at start; until then (and in tools that never set one) they go to
 * nowhere, as before.
 *
 *   cleanupJob(...).catch(logFailure("job directory cleanup", { commandId }));
 *   bestEffort(cleanupJob(...), "job directory cleanup", { commandId });
 */

export type FailureSink = (what: string, fields: Record<string, unknown>) => void;

let sink: FailureSink = () => {};

/** Where swallowed failures go from now on (the service's logger, at warn). */
export function setFailureSink(next: FailureSink): void {
  sink = next;
}

/** A `.catch` handler that reports `what` failed, with the error's message. */
export function logFailure(what: string, fields: Record<string, unknown> = {}): (err: unknown) => void {
  return (err) => {
    try {
      sink(what, { ...fields, err: err instanceof Error ? err.message : String(err) });
    } catch {
      // A failing sink must not turn a best-effort step into a crash.
    }
  };
}

/** Runs on with `promise` in the background; a failure is reported, never thrown. */
export function bestEffort(promise: Promise<unknown>, what: string, fields: Record<string, unknown> = {}): void {
  promise.catch(logFailure(what, fields));
}
