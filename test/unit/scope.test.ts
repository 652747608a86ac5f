/**
 * The scope rules as a table: actions, machine visibility by id and label
 * selector, run-as users, "within" for tokens creating tokens, and the
 * validation of a requested scope.
 */
import { describe, expect, it } from "vitest";
import { assertRunAs, assertSelectionInScope, commandVisible, visibleMachine } from "../../src/exec/caller.ts";
import { InvalidArgumentError, NotFoundError, PermissionDeniedError } from "../../src/exec/errors.ts";
import type { CommandRecord, MachineRecord } from "../../src/exec/ports.ts";
import { allowsAction, allowsRunAs, FULL_SCOPE, isWithin, machineInScope, parseScope, type Scope } from "../../src/exec/scope.ts";

function scope(s: Partial<Scope>): Scope {
  return { actions: ["read"], machineIds: [], machineLabels: null, runAs: null, ...s };
}

const staging = { id: "mach_a", labels: { env: "staging", role: "web" } };
const prod = { id: "mach_b", labels: { env: "prod", role: "web" } };
const bare = { id: "mach_c", labels: {} };

describe("allowsAction", () => {
  it.each([
    [["read"], "read", true],
    [["read"], "execute", false],
    [["read"], "cancel", false],
    [["read"], "admin", false],
    [["execute"], "read", false],
    [["execute", "cancel"], "cancel", true],
    [["admin"], "execute", false],
    [["read", "execute", "cancel", "admin"], "admin", true],
  ] as const)("%j allows %s: %s", (actions, action, want) => {
    expect(allowsAction(scope({ actions }), action)).toBe(want);
  });
});

describe("machineInScope", () => {
  it.each([
    ["no ids, no selector: every machine", scope({}), prod, true],
    ["by id: the named one", scope({ machineIds: ["mach_a"] }), staging, true],
    ["by id: another one", scope({ machineIds: ["mach_a"] }), prod, false],
    ["by selector: matching", scope({ machineLabels: { env: "staging" } }), staging, true],
    ["by selector: other value", scope({ machineLabels: { env: "staging" } }), prod, false],
    ["by selector: label missing", scope({ machineLabels: { env: "staging" } }), bare, false],
    ["by selector: all labels needed", scope({ machineLabels: { env: "staging", role: "db" } }), staging, false],
    ["ids or selector: id", scope({ machineIds: ["mach_b"], machineLabels: { env: "staging" } }), prod, true],
    ["ids or selector: selector", scope({ machineIds: ["mach_b"], machineLabels: { env: "staging" } }), staging, true],
    ["ids or selector: neither", scope({ machineIds: ["mach_b"], machineLabels: { env: "staging" } }), bare, false],
    ["deleted machine (no labels), selector scope", scope({ machineLabels: { env: "staging" } }), { id: "mach_a", labels: null }, false],
    ["deleted machine, named by id", scope({ machineIds: ["mach_a"] }), { id: "mach_a", labels: null }, true],
    ["deleted machine, every machine", scope({}), { id: "mach_a", labels: null }, true],
    ["a label named like an Object property", scope({ machineLabels: { constructor: "x" } }), bare, false],
  ] as const)("%s", (_what, s, m, want) => {
    expect(machineInScope(s, m)).toBe(want);
  });
});

describe("allowsRunAs", () => {
  it.each([
    [null, null, true],
    [null, "root", true],
    [[""], null, true],
    [[""], "", true],
    [[""], "root", false],
    [["deploy"], null, false],
    [["deploy"], "deploy", true],
    [["deploy", ""], "root", false],
    [[], null, false],
  ] as const)("run_as %j, user %j: %s", (runAs, user, want) => {
    expect(allowsRunAs(scope({ runAs }), user)).toBe(want);
  });
});

describe("isWithin (a token creating a token)", () => {
  const parent = scope({ actions: ["read", "execute", "admin"], machineLabels: { env: "staging" }, runAs: ["", "deploy"] });
  it.each([
    ["the same scope", parent, true],
    ["fewer actions", scope({ actions: ["read"], machineLabels: { env: "staging" }, runAs: [""] }), true],
    ["an action more", scope({ actions: ["cancel"], machineLabels: { env: "staging" }, runAs: [""] }), false],
    ["a narrower selector", scope({ machineLabels: { env: "staging", role: "web" }, runAs: [] }), true],
    ["another selector", scope({ machineLabels: { env: "prod" }, runAs: [] }), false],
    ["every machine", scope({ runAs: [] }), false],
    ["machines by id (their labels may change)", scope({ machineIds: ["mach_a"], runAs: [] }), false],
    ["any run-as user", scope({ machineLabels: { env: "staging" }, runAs: null }), false],
    ["another run-as user", scope({ machineLabels: { env: "staging" }, runAs: ["root"] }), false],
  ] as const)("%s: %s", (_what, child, want) => {
    expect(isWithin(child, parent)).toBe(want);
  });

  it("everything is within the full scope, and the full scope only within itself", () => {
    expect(isWithin(parent, FULL_SCOPE)).toBe(true);
    expect(isWithin(FULL_SCOPE, FULL_SCOPE)).toBe(true);
    expect(isWithin(FULL_SCOPE, parent)).toBe(false);
  });

  it("ids within the parent's ids", () => {
    const p = scope({ actions: ["read"], machineIds: ["mach_a", "mach_b"] });
    expect(isWithin(scope({ machineIds: ["mach_b"] }), p)).toBe(true);
    expect(isWithin(scope({ machineIds: ["mach_c"] }), p)).toBe(false);
  });
});

describe("parseScope", () => {
  it("keeps a valid scope and drops duplicates", () => {
    expect(parseScope({ actions: ["read", "execute", "read"], machineIds: ["mach_a", "mach_a"], machineLabels: { env: "staging" }, runAs: ["", "deploy"] })).toEqual({
      actions: ["read", "execute"],
      machineIds: ["mach_a"],
      machineLabels: { env: "staging" },
      runAs: ["", "deploy"],
    });
    expect(parseScope({ actions: ["read"], machineIds: [], machineLabels: {}, runAs: null })).toEqual(scope({}));
  });

  it.each([
    ["no scope", null, "scope"],
    ["no actions", { actions: [], machineIds: [], machineLabels: null, runAs: null }, "scope.actions"],
    ["an unknown action", { actions: ["write"], machineIds: [], machineLabels: null, runAs: null }, "scope.actions"],
    ["a malformed id", { actions: ["read"], machineIds: ["../x"], machineLabels: null, runAs: null }, "scope.machine_ids"],
    ["a bad label key", { actions: ["read"], machineIds: [], machineLabels: { "a b": "x" }, runAs: null }, "scope.machine_selector.labels"],
    ["a bad user", { actions: ["read"], machineIds: [], machineLabels: null, runAs: ["root; rm -rf /"] }, "scope.run_as"],
    ["a non-string user", { actions: ["read"], machineIds: [], machineLabels: null, runAs: [3] }, "scope.run_as"],
  ] as const)("refuses %s, naming %s", (_what, input, field) => {
    let err: unknown;
    try {
      parseScope(input as never);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe(field);
  });
});

describe("the checks the domain runs", () => {
  const m = (x: { id: string; labels: Record<string, string> }) => ({ ...x }) as MachineRecord;

  it("an out-of-scope machine is not found, with the message of an unknown one", () => {
    const s = scope({ machineLabels: { env: "staging" } });
    expect(visibleMachine(s, m(staging), staging.id, "machine_id")).toEqual(m(staging));
    const hidden = (() => {
      try {
        visibleMachine(s, m(prod), prod.id, "machine_id");
      } catch (e) {
        return e as NotFoundError;
      }
    })();
    const unknown = (() => {
      try {
        visibleMachine(s, null, prod.id, "machine_id");
      } catch (e) {
        return e as NotFoundError;
      }
    })();
    expect(hidden).toBeInstanceOf(NotFoundError);
    expect(hidden!.message).toBe(unknown!.message);
    expect(hidden!.field).toBe(unknown!.field);
  });

  it("a command is visible when its machine is", () => {
    const s = scope({ machineLabels: { env: "staging" } });
    const cmd = { machineId: prod.id } as CommandRecord;
    expect(commandVisible(s, cmd, m(prod))).toBe(false);
    expect(commandVisible(s, { machineId: staging.id } as CommandRecord, m(staging))).toBe(true);
    expect(commandVisible(FULL_SCOPE, cmd, null)).toBe(true);
  });

  it("run-as out of scope is permission denied naming the field", () => {
    expect(() => assertRunAs(scope({ runAs: [""] }), "root")).toThrow(PermissionDeniedError);
    expect(() => assertRunAs(scope({ runAs: [""] }), "root")).toThrow(/^user: .*"root"/);
    expect(() => assertRunAs(scope({ runAs: ["deploy"] }), null)).toThrow(/login user/);
    expect(() => assertRunAs(scope({ runAs: [""] }), null)).not.toThrow();
  });

  it("a selection with machines out of scope is refused naming the count, not the ids", () => {
    const s = scope({ machineLabels: { env: "staging" } });
    expect(() => assertSelectionInScope(s, [m(staging)])).not.toThrow();
    let err: unknown;
    try {
      assertSelectionInScope(s, [m(staging), m(prod), m({ id: "mach_secret", labels: { env: "prod" } })]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PermissionDeniedError);
    expect((err as Error).message).toContain("2 machine(s)");
    expect((err as Error).message).not.toContain("mach_b");
    expect((err as Error).message).not.toContain("mach_secret");
  });
});
