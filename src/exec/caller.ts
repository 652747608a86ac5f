/**
 * Who asks the domain for work, and the checks that follow from it: the one
 * place where a token's scope meets machines, commands and batches. A machine
 * out of scope is reported exactly like one that does not exist (no existence
 * leak); a run-as user out of scope is refused before anything is stored.
 */
import { NotFoundError, PermissionDeniedError } from "./errors.ts";
import type { CommandRecord, MachineRecord } from "./ports.ts";
import { allowsRunAs, FULL_SCOPE, machineInScope, type Scope } from "./scope.ts";

export interface Caller {
  /** Recorded as `requested_by` (and `cancelled_by`). */
  name: string;
  scope: Scope;
  /**
   * Per-token limit of concurrent commands: holds `n` places until the
   * returned (idempotent) release, or throws ResourceExhaustedError.
   */
  holdCommands?(n: number): () => void;
}

/** The service's own actions (a stop cancelling waiting callers' commands). */
export const SYSTEM_CALLER: Caller = { name: "system", scope: FULL_SCOPE };

/** Throws PermissionDeniedError unless the scope allows running as `user` (null: the login user). */
export function assertRunAs(scope: Scope, user: string | null, field = "user"): void {
  if (allowsRunAs(scope, user)) return;
  const who = user === null || user === "" ? "the login user" : JSON.stringify(user);
  throw new PermissionDeniedError(`${field}: this token may not run commands as ${who} (scope.run_as)`);
}

/** `machine` when in scope, else NotFoundError exactly as for an unknown machine. */
export function visibleMachine(scope: Scope, machine: MachineRecord | null, id: string, field: string): MachineRecord {
  if (machine === null || !machineInScope(scope, machine)) throw new NotFoundError("machine", id, field);
  return machine;
}

/**
 * Whether a command is visible: its machine is in scope. `machine` is null
 * when the machine was deleted (its history stays): then only a scope naming
 * its id, or every machine, sees it.
 */
export function commandVisible(scope: Scope, command: CommandRecord, machine: MachineRecord | null): boolean {
  return machineInScope(scope, { id: command.machineId, labels: machine?.labels ?? null });
}

/**
 * A batch by selector runs only when every machine the selector matches is
 * in scope, or on none: refused naming how many are outside, not which (403).
 * (Machines named by id that are out of scope are unknown ids to the caller:
 * see BatchRunner.prepare.)
 */
export function assertSelectionInScope(scope: Scope, machines: readonly MachineRecord[]): void {
  const outside = machines.filter((m) => !machineInScope(scope, m));
  if (outside.length === 0) return;
  throw new PermissionDeniedError(
    `selector: matches ${outside.length} machine(s) outside this token's scope; the batch runs on none (narrow the selector to machines this token may use)`,
  );
}
