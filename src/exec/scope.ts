/**
 * What a token may do, and where: the one place that decides. Pure functions
 * over plain data (no I/O), so every rule is unit-tested with a table.
 *
 * Deny by default: an action a scope does not list is refused; a machine is in
 * scope only when the scope names it (by id or by a label selector) or names no
 * machines at all; a run-as user only when listed (or the scope lists none).
 */
import { InvalidArgumentError } from "./errors.ts";
import { validateLabels } from "./machine-registry.ts";
import { userNameProblem } from "./shell-quote.ts";

export type Action = "read" | "execute" | "cancel" | "admin";

export const ACTIONS: readonly Action[] = ["read", "execute", "cancel", "admin"];

export interface Scope {
  actions: readonly Action[];
  /** Machines by id. Together with `machineLabels` a union; with neither, every machine. */
  machineIds: readonly string[];
  /** Machines carrying all of these labels; null for none. */
  machineLabels: Readonly<Record<string, string>> | null;
  /** Allowed run-as users (`""` = the login user); null = any. */
  runAs: readonly string[] | null;
}

/** Every action on every machine as any user: the bootstrap admin token. */
export const FULL_SCOPE: Scope = Object.freeze({ actions: ACTIONS, machineIds: [], machineLabels: null, runAs: null });

/** The part of a machine a scope looks at. */
export interface ScopedMachine {
  id: string;
  labels: Readonly<Record<string, string>>;
}

export function allowsAction(scope: Scope, action: Action): boolean {
  return scope.actions.includes(action);
}

/** Whether the scope names no machines, i.e. reaches every machine. */
export function allMachines(scope: Scope): boolean {
  return scope.machineIds.length === 0 && scope.machineLabels === null;
}

/**
 * Whether `machine` is in scope. A machine that no longer exists (history of
 * a deleted one) is passed with `labels` null: only a scope naming its id or
 * every machine reaches it.
 */
export function machineInScope(scope: Scope, machine: { id: string; labels: Readonly<Record<string, string>> | null }): boolean {
  if (allMachines(scope)) return true;
  if (scope.machineIds.includes(machine.id)) return true;
  const want = scope.machineLabels;
  if (want === null || machine.labels === null) return false;
  const labels = machine.labels;
  return Object.entries(want).every(([k, v]) => Object.hasOwn(labels, k) && labels[k] === v);
}

/** Whether a command may run as `user` (null or "" = the login user). */
export function allowsRunAs(scope: Scope, user: string | null): boolean {
  if (scope.runAs === null) return true;
  return scope.runAs.includes(user ?? "");
}

/**
 * Whether `child` grants nothing that `parent` does not: its actions and
 * run-as users are subsets, and every machine it can reach `parent` reaches
 * too whatever the machines' labels (its ids are among the parent's ids, or
 * its selector is at least as narrow as the parent's).
 */
export function isWithin(child: Scope, parent: Scope): boolean {
  if (!child.actions.every((a) => parent.actions.includes(a))) return false;
  if (parent.runAs !== null) {
    if (child.runAs === null || !child.runAs.every((u) => parent.runAs!.includes(u))) return false;
  }
  if (allMachines(parent)) return true;
  if (allMachines(child)) return false;
  if (!child.machineIds.every((id) => parent.machineIds.includes(id))) return false;
  if (child.machineLabels !== null) {
    const want = parent.machineLabels;
    if (want === null) return false;
    const narrower = child.machineLabels;
    if (!Object.entries(want).every(([k, v]) => Object.hasOwn(narrower, k) && narrower[k] === v)) return false;
  }
  return true;
}

/** A scope as a request carries it (before validation). */
export interface ScopeInput {
  actions: readonly string[];
  machineIds: readonly string[];
  machineLabels: Record<string, string> | null;
  /** Null: any user. Items must be strings (checked here). */
  runAs: readonly unknown[] | null;
}

/** Validates a requested scope; throws InvalidArgumentError naming the field. */
export function parseScope(input: ScopeInput | null): Scope {
  if (input === null) throw new InvalidArgumentError("scope", "is required (at least scope.actions)");
  if (input.actions.length === 0) throw new InvalidArgumentError("scope.actions", `is required: one or more of ${ACTIONS.join(", ")}`);
  const actions: Action[] = [];
  for (const a of input.actions) {
    if (!(ACTIONS as readonly string[]).includes(a)) {
      throw new InvalidArgumentError("scope.actions", `unknown action ${JSON.stringify(a.slice(0, 32))}; expected ${ACTIONS.join(", ")}`);
    }
    if (!actions.includes(a as Action)) actions.push(a as Action);
  }
  if (input.machineIds.length > 1000) throw new InvalidArgumentError("scope.machine_ids", "at most 1000 ids");
  const machineIds: string[] = [];
  for (const id of input.machineIds) {
    if (!/^[a-z]+_[0-9a-z]{1,64}$/.test(id)) throw new InvalidArgumentError("scope.machine_ids", "must be machine ids like mach_…");
    if (!machineIds.includes(id)) machineIds.push(id);
  }
  let machineLabels: Record<string, string> | null = null;
  if (input.machineLabels !== null && Object.keys(input.machineLabels).length > 0) {
    validateLabels(input.machineLabels, "scope.machine_selector.labels");
    machineLabels = { ...input.machineLabels };
  }
  let runAs: string[] | null = null;
  if (input.runAs !== null) {
    if (input.runAs.length > 100) throw new InvalidArgumentError("scope.run_as", "at most 100 users");
    runAs = [];
    for (const u of input.runAs) {
      if (typeof u !== "string") throw new InvalidArgumentError("scope.run_as", 'must be a list of user names ("" is the login user)');
      if (u !== "") {
        const problem = userNameProblem(u);
        if (problem) throw new InvalidArgumentError("scope.run_as", problem);
      }
      if (!runAs.includes(u)) runAs.push(u);
    }
  }
  return { actions, machineIds, machineLabels, runAs };
}

/** A short, secret-free description of what a scope lacks, for 403 messages. */
export function describeAction(action: Action): string {
  switch (action) {
    case "read":
      return "read (get, history, watch, list machines)";
    case "execute":
      return "execute (Execute, StartCommand, ExecuteAsync, batches)";
    case "cancel":
      return "cancel (commands and batches)";
    case "admin":
      return "admin (machines, tokens, audit)";
  }
}
