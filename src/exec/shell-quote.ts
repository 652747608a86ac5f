/**
 * The only place where request values become shell text. Every value is
 * emitted as a single-quoted literal, so no shell ever expands or executes
 * it; only `command` itself is handed to `eval`.
 */

/**
 * Quotes `value` as one POSIX shell word: `'…'`, with each `'` written as
 * `'\''`. Byte-exact for every string without NUL (which no shell word,
 * argument or environment value can hold; callers reject it first).
 */
export function shellQuote(value: string): string {
  if (value.includes("\0")) throw new Error("shellQuote: NUL byte cannot be quoted");
  return "'" + value.replaceAll("'", "'\\''") + "'";
}

/** POSIX portable environment variable names. */
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Variables that would let a caller change how the shell or the dynamic
 * linker behaves before `command` even starts. Setting them is refused.
 */
const FORBIDDEN_ENV = new Set([
  "LD_PRELOAD",
  "LD_LIBRARY_PATH",
  "LD_AUDIT",
  "BASH_ENV",
  "ENV",
  "IFS",
  "PS4",
  "SHELLOPTS",
  "BASHOPTS",
  "PATH_LOCALE",
  "GCONV_PATH",
  "HOSTALIASES",
  "NLSPATH",
  "RESOLV_HOST_CONF",
  "MALLOC_TRACE",
  "LOCPATH",
]);

/** Why an env name is refused, or null when it is fine. */
export function envNameProblem(name: string): string | null {
  if (!ENV_NAME.test(name)) return "must match [A-Za-z_][A-Za-z0-9_]*";
  if (FORBIDDEN_ENV.has(name) || name.startsWith("LD_") || name.startsWith("BASH_FUNC_")) {
    return "may not be set (it changes how the shell or the dynamic linker behaves)";
  }
  return null;
}

/** POSIX-ish user names as `useradd` accepts them (no shell metacharacters). */
const USER_NAME = /^[a-z_][a-z0-9_.-]{0,31}\$?$/i;

export function userNameProblem(name: string): string | null {
  if (!USER_NAME.test(name)) return "must be a user name ([a-z_][a-z0-9_.-]*, at most 32 characters)";
  return null;
}
