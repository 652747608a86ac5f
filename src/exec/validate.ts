/**
 * Validation of execution requests. Each failure is an InvalidArgumentError
 * naming the field and what shape it must have, never echoing env values.
 */
import { InvalidArgumentError } from "./errors.ts";
import { envNameProblem, userNameProblem } from "./shell-quote.ts";

export interface ExecuteInput {
  machineId: string;
  command: string;
  cwd: string | null;
  env: Record<string, string>;
  timeoutMs: number | null;
  user: string | null;
}

export interface ExecLimits {
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  /** Bytes of `command`. */
  maxCommandBytes: number;
  /** Bytes of all env names and values together. */
  maxEnvBytes: number;
}

export interface ValidExecute {
  command: string;
  cwd: string | null;
  env: Record<string, string>;
  timeoutMs: number;
  user: string | null;
}

export function validateExecOptions(input: Omit<ExecuteInput, "machineId">, limits: ExecLimits, prefix = ""): ValidExecute {
  const f = (name: string) => prefix + name;
  if (typeof input.command !== "string" || input.command.trim() === "") {
    throw new InvalidArgumentError(f("command"), "must be a non-empty string");
  }
  if (Buffer.byteLength(input.command) > limits.maxCommandBytes) {
    throw new InvalidArgumentError(f("command"), `must be at most ${limits.maxCommandBytes} bytes`);
  }
  if (input.command.includes("\0")) throw new InvalidArgumentError(f("command"), "must not contain NUL bytes");

  let cwd: string | null = null;
  if (input.cwd !== null && input.cwd !== undefined) {
    if (input.cwd === "") throw new InvalidArgumentError(f("cwd"), "must be a non-empty path when set");
    if (input.cwd.includes("\0")) throw new InvalidArgumentError(f("cwd"), "must not contain NUL bytes");
    if (Buffer.byteLength(input.cwd) > 4096) throw new InvalidArgumentError(f("cwd"), "must be at most 4096 bytes");
    cwd = input.cwd;
  }

  let envBytes = 0;
  // No prototype: `env.__proto__ = v` must set a variable named __proto__, not be dropped.
  const env: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [name, value] of Object.entries(input.env ?? {})) {
    const problem = envNameProblem(name);
    if (problem) throw new InvalidArgumentError(f("env"), `name ${JSON.stringify(name.slice(0, 64))} ${problem}`);
    if (typeof value !== "string") throw new InvalidArgumentError(f(`env.${name}`), "must be a string");
    if (value.includes("\0")) throw new InvalidArgumentError(f(`env.${name}`), "must not contain NUL bytes");
    envBytes += Buffer.byteLength(name) + Buffer.byteLength(value);
    env[name] = value;
  }
  if (envBytes > limits.maxEnvBytes) throw new InvalidArgumentError(f("env"), `must be at most ${limits.maxEnvBytes} bytes in all`);

  let timeoutMs = limits.defaultTimeoutMs;
  if (input.timeoutMs !== null && input.timeoutMs !== undefined) {
    if (!Number.isSafeInteger(input.timeoutMs) || input.timeoutMs < 1 || input.timeoutMs > limits.maxTimeoutMs) {
      throw new InvalidArgumentError(f("timeout"), `must be an integer number of milliseconds from 1 to ${limits.maxTimeoutMs}`);
    }
    timeoutMs = input.timeoutMs;
  }

  let user: string | null = null;
  if (input.user !== null && input.user !== undefined && input.user !== "") {
    const problem = userNameProblem(input.user);
    if (problem) throw new InvalidArgumentError(f("user"), problem);
    user = input.user;
  }
  return { command: input.command, cwd, env, timeoutMs, user };
}

/** Parses "10%" or a count into an absolute number for `total` items. */
export function parseLimit(field: string, value: unknown, total: number, fallback: number): number {
  if (value === null || value === undefined || value === "") return Math.max(1, Math.min(fallback, Math.max(total, 1)));
  if (typeof value === "number") {
    if (!Number.isInteger(value) || value < 0) throw new InvalidArgumentError(field, "must be a non-negative integer or a percentage like \"10%\"");
    return value;
  }
  if (typeof value === "string") {
    const m = /^(\d{1,3})%$/.exec(value.trim());
    if (m) {
      const pct = Number(m[1]);
      if (pct > 100) throw new InvalidArgumentError(field, "percentage must be at most 100%");
      return Math.floor((total * pct) / 100);
    }
    if (/^\d+$/.test(value.trim())) return Number(value.trim());
  }
  throw new InvalidArgumentError(field, "must be a non-negative integer or a percentage like \"10%\"");
}
