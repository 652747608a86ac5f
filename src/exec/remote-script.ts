/**
 * The shell scripts fleetrun runs on targets. Each travels on the SSH
 * channel's stdin to a fixed `exec /bin/sh -s`, so neither the command nor
 * env values ever appear on a command line (`ps` shows `/bin/sh -s`), and
 * commands of any size work. Every request value is a single-quoted literal
 * (see shell-quote.ts); only `command` is interpreted, by `eval`.
 *
 * Layout of a job on the target, in the login user's home (mode 0700):
 *
 *   ~/.fleetrun/jobs/<command id>/
 *     cmd      the command script, fed to `sh -s` (as the run-as user via sudo)
 *     sup      the supervisor script
 *     out err  append-only stdout and stderr of the command
 *     lock     flock held by the supervisor while it lives
 *     pgid     process group (= session) id of the command
 *     status   the command's wait status, written (via rename) once it ended
 *     timedout, cancelled   markers written before the group is signalled
 *
 * The supervisor runs detached in its own session, so the command survives
 * the SSH connection and the service; a reader re-attaches by streaming
 * `out`/`err` from byte offsets until the supervisor's lock is released. The
 * `mkdir` of the job directory is the claim that makes a start idempotent.
 * Timeouts are enforced on the target by a watchdog, so they hold while the
 * service is down; it waits on the supervisor's lock, so it ends with the job.
 * Once the outcome is stored, `cleanupScript` removes the directory: nothing
 * of a job is left on the target. Target requirements: POSIX sh, coreutils (tail, sleep,
 * mv, rm), util-linux (setsid, flock), kill, and sudo for `user`.
 */
import { randomBytes } from "node:crypto";
import { shellQuote as q } from "./shell-quote.ts";

/** The only command line fleetrun ever asks sshd to run. */
export const SCRIPT_COMMAND_LINE = "exec /bin/sh -s";

export const JOBS_DIR = ".fleetrun/jobs";

export function jobDirFor(commandId: string): string {
  if (!/^[A-Za-z0-9_]+$/.test(commandId)) throw new Error(`unsafe command id ${JSON.stringify(commandId)}`);
  return `${JOBS_DIR}/${commandId}`;
}

/** A fresh marker that prefixes the script's own header lines on stdout. */
export function newNonce(): string {
  return "fleetrun-" + randomBytes(12).toString("hex");
}

export interface StartSpec {
  nonce: string;
  /** Relative to the login user's home, from `jobDirFor`. */
  jobDir: string;
  command: string;
  cwd: string | null;
  env: Record<string, string>;
  user: string | null;
  timeoutMs: number;
  graceMs: number;
  /**
   * Also remove other job directories of this login whose files have not
   * changed for this many minutes and whose supervisor is gone (left behind
   * when the service could not clean up). Null or absent: no sweep.
   */
  sweepAfterMinutes?: number | null;
}

function seconds(ms: number): string {
  return (Math.max(0, ms) / 1000).toFixed(3);
}

function tenths(ms: number): number {
  return Math.max(1, Math.ceil(ms / 100));
}

/** Shell function `k`: kill as the run-as user when there is one. */
const KILL_FN = `k() { if [ -n "$U" ]; then sudo -n -u "$U" kill "$@"; else kill "$@"; fi; }`;

/**
 * Process ids are reused (pid_max is often 32768), so a signal sent some
 * time later must not reach a stranger's group. "started P" prints the start
 * time of process P; "mine" holds while group $P can only be ours: its
 * leader is gone (then no newer group can have that id) or still is the
 * process that started at $S0.
 */
const MINE_FN = `started() { [ -r "/proc/$1/stat" ] || return 1; read -r l <"/proc/$1/stat" || return 1; l=\${l##*) }; set -- $l; printf %s "\${20}"; }
mine() { [ -e "/proc/$P" ] || return 0; [ "$(started "$P")" = "$S0" ]; }`;

const HEADER_FN = `hdr() { printf '%s %s\\n' "$N" "$*"; }`;

/** "alive" holds while anything of group $P (ours, see "mine") is left. */
const ALIVE_FN = `alive() { mine && k -s 0 -- "-$P" 2>/dev/null; }`;

/**
 * "now" sets $c to the time since boot in hundredths of a second (a clock
 * that never jumps); "linger N" polls group $P every 0.1 s for up to N
 * tenths of a second and returns as soon as it is gone.
 */
const LINGER_FN = `now() { read -r c _ </proc/uptime; c=$(( \${c%.*} * 100 + 1\${c#*.} - 100 )); }
linger() { now; e=$((c + $1 * 10)); while alive; do now; [ "$c" -lt "$e" ] || return 0; sleep 0.1; done; }`;

/**
 * "sup N" waits up to N seconds for the job's supervisor to end (it holds
 * "$J/lock" while it lives) and says how the job stands: 0 it has ended (a
 * status is recorded) or its directory is gone, 1 the supervisor still
 * runs, 2 the supervisor died without recording a status. The lock file is
 * opened without creating it, so a removed job directory stays removed.
 */
const SUP_FN = `sup() { flock -E 9 -w "$1" 8 8<"$J/lock" 2>/dev/null; r=$?; [ -d "$J" ] && [ ! -e "$J/status" ] || return 0; [ "$r" = 0 ] && return 2; [ "$r" = 9 ] && return 1; return 0; }`;

/**
 * The watchdog: waits on the supervisor's lock, so it ends together with
 * the supervisor, or enforces the timeout when the supervisor is still
 * running at T: SIGTERM, then SIGKILL when the group outlives the grace.
 * Should the supervisor die without recording a status, it keeps the
 * timeout on what is left of the group, polling twice a second.
 */
const WATCHDOG = `J=$1 P=$2 T=$3 G=$4 U=$5 S0=$6 GT=$7 TT=$8
${KILL_FN}
${MINE_FN}
${ALIVE_FN}
${LINGER_FN}
${SUP_FN}
now
d=$((c + TT * 10))
sup "$T"
case $? in
0) exit 0 ;;
2)
  while [ -d "$J" ] && [ ! -e "$J/status" ] && alive; do now; [ "$c" -lt "$d" ] || break; sleep 0.5; done
  [ -d "$J" ] && [ ! -e "$J/status" ] && alive || exit 0 ;;
esac
: >"$J/timedout"
mine && k -s TERM -- "-$P" 2>/dev/null
sup "$G"
case $? in
0) exit 0 ;;
2) linger "$GT" ;;
esac
[ -d "$J" ] && [ ! -e "$J/status" ] && mine && k -s KILL -- "-$P" 2>/dev/null
exit 0`;

/**
 * The cancel's escalation: SIGKILL to the group when the job is still
 * running after the grace period. It waits on the supervisor's lock, so it
 * ends as soon as the job does.
 */
const CANCEL_HELPER = `J=$1 P=$2 G=$3 U=$4 S0=$5 GT=$6
${KILL_FN}
${MINE_FN}
${ALIVE_FN}
${LINGER_FN}
${SUP_FN}
sup "$G"
case $? in
0) exit 0 ;;
2) linger "$GT" ;;
esac
[ -d "$J" ] && [ ! -e "$J/status" ] && mine && k -s KILL -- "-$P" 2>/dev/null
exit 0`;

/**
 * The light path's escalation: SIGKILL to the group when anything of it is
 * left after the grace period (in tenths of a second); ends as soon as the
 * group is gone.
 */
const KILL_HELPER = `P=$1 GT=$2 U=$3 S0=$4
${KILL_FN}
${MINE_FN}
${ALIVE_FN}
${LINGER_FN}
linger "$GT"
alive && k -s KILL -- "-$P" 2>/dev/null
exit 0`;

for (const [name, script] of Object.entries({ WATCHDOG, CANCEL_HELPER, KILL_HELPER })) {
  if (script.includes("'")) throw new Error(`${name} is passed in single quotes`);
}

/**
 * The operand `cd` gets for a cwd: a relative one is spelled `./…`, because `cd`
 * reads a bare `-` as "the previous directory" even after `--`.
 */
export function cdOperand(cwd: string): string {
  return cwd.startsWith("/") ? cwd : `./${cwd}`;
}

/**
 * Says on stderr why `cwd` ($CS as given; $C is the operand for cd) could not be entered; `$1` is the user who tried.
 * A relative cwd is resolved from the login user's home, where sshd starts.
 */
const CWD_PROBLEM_FN = `cwd_problem() { printf 'cwd %s: no such directory, or %s may not enter it (a relative cwd is relative to the home directory of the login user, %s)\\n' "$CS" "$1" "$HOME" >&2; }`;

/**
 * Streams `out` to stdout and `err` to stderr from 1-based byte positions
 * A and B until the supervisor's lock is released, then ends. The waiter is
 * our own child (reaped by us), so `tail --pid` never follows a zombie.
 * A line with the nonce on stderr marks where the command's stderr begins
 * (anything before it is login noise).
 *
 * tail polls every 0.1 s instead of waking on each write (inotify): a
 * command printing 100 lines a second then costs about 10 SSH packets a
 * second, not 100 (GNU tail's `---disable-inotify`; `--pid` is GNU-only too).
 */
const FOLLOW = `printf '%s\\n' "$N" >&2
flock "$J/lock" true </dev/null >/dev/null 2>&1 &
W=$!
tail ---disable-inotify -s 0.1 -c +"$A" -f --pid="$W" "$J/out" </dev/null 2>/dev/null &
O=$!
tail ---disable-inotify -s 0.1 -c +"$B" -f --pid="$W" "$J/err" </dev/null >&2 2>/dev/null &
E=$!
wait "$W"
wait "$O"
wait "$E"`;

/**
 * Runs the command and records its end. Arguments: job dir, run-as user,
 * timeout (seconds), grace (seconds), grace and timeout (tenths of a
 * second). Nothing it starts outlives it for long: the watchdog waits on
 * its lock, and it waits for the command's group after a signal.
 */
const SUPERVISOR = `J=$1 U=$2 T=$3 G=$4 GT=$5 TT=$6
${KILL_FN}
${MINE_FN}
${ALIVE_FN}
${LINGER_FN}
if [ -n "$U" ]; then
  setsid sudo -n -u "$U" /bin/sh -s <"$J/cmd" >>"$J/out" 2>>"$J/err" 9>&- &
else
  setsid /bin/sh -s <"$J/cmd" >>"$J/out" 2>>"$J/err" 9>&- &
fi
P=$!
S0=$(started "$P")
printf '%s %s\\n' "$P" "$S0" >"$J/pgid.tmp" && mv -f "$J/pgid.tmp" "$J/pgid"
if [ "$T" != 0.000 ]; then
  setsid /bin/sh -c '${WATCHDOG}' fleetrun-watchdog "$J" "$P" "$T" "$G" "$U" "$S0" "$GT" "$TT" </dev/null >/dev/null 2>&1 9>&- &
fi
wait "$P"
st=$?
if [ -e "$J/timedout" ] || [ -e "$J/cancelled" ]; then
  linger "$GT"
  alive && k -s KILL -- "-$P" 2>/dev/null
fi
printf '%s\\n' "$st" >"$J/status.tmp" && mv -f "$J/status.tmp" "$J/status"
`;

function commandScript(spec: StartSpec, prelude: string[] = []): string {
  const lines = ["{", ...prelude];
  if (spec.cwd !== null) {
    lines.push(`cd -- ${q(cdOperand(spec.cwd))} || exit 1`);
  } else if (spec.user !== null) {
    // sudo keeps the caller's directory; the run-as user starts at home.
    lines.push(`cd -- "$HOME" 2>/dev/null || cd /`);
  }
  for (const [name, value] of Object.entries(spec.env)) {
    lines.push(`export ${name}=${q(value)}`);
  }
  lines.push(`eval ${q(spec.command)}`);
  lines.push("} </dev/null");
  return lines.join("\n") + "\n";
}

/**
 * Creates the job and streams its output. Header lines on stdout (before any
 * output): `<nonce> started`, `<nonce> exists` (the job was started before:
 * re-attach instead) or `<nonce> error <reason>` (nothing started; stderr
 * says why).
 */
export function startScript(spec: StartSpec): string {
  for (const name of Object.keys(spec.env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`unsafe env name ${JSON.stringify(name)}`);
  }
  return `{
umask 077
N=${q(spec.nonce)}
J="$HOME"/${q(spec.jobDir)}
U=${q(spec.user ?? "")}
C=${q(spec.cwd === null ? "" : cdOperand(spec.cwd))} CS=${q(spec.cwd ?? "")}
${HEADER_FN}
${CWD_PROBLEM_FN}
if ! mkdir "$J" 2>/dev/null; then
  if [ -e "$J" ]; then hdr exists; exit 0; fi
  if ! { mkdir -p "$HOME"/${q(JOBS_DIR)} && mkdir "$J"; }; then printf 'could not create the job directory %s\\n' "$J" >&2; hdr error spawn_failed; exit 0; fi
fi
fail() { hdr error "$1"; rm -rf "$J"; exit 0; }
for t in setsid flock tail sleep; do
  command -v "$t" >/dev/null 2>&1 || { printf 'the target lacks %s (util-linux/coreutils)\\n' "$t" >&2; fail spawn_failed; }
done
if [ -n "$U" ]; then
  e=$(sudo -n -u "$U" /bin/sh -c 'if [ -n "$1" ]; then cd -- "$1" || exit 97; fi' fleetrun-check "$C" 2>&1 </dev/null)
  r=$?
  if [ "$r" -eq 97 ]; then cwd_problem "$U"; fail cwd_not_found; fi
  if [ "$r" -ne 0 ]; then printf 'sudo -n -u %s refused: %s\\n' "$U" "$e" >&2; fail run_as_refused; fi
elif [ -n "$C" ]; then
  (cd -- "$C") 2>/dev/null || { cwd_problem "$(id -un)"; fail cwd_not_found; }
fi
printf '%s' ${q(commandScript(spec))} >"$J/cmd"
printf '%s' ${q(SUPERVISOR)} >"$J/sup"
: >"$J/out"
: >"$J/err"
exec 9>"$J/lock"
flock -n 9 || { printf 'the job lock %s is held by another process\\n' "$J/lock" >&2; fail spawn_failed; }
setsid /bin/sh "$J/sup" "$J" "$U" ${q(seconds(spec.timeoutMs))} ${q(seconds(spec.graceMs))} ${tenths(spec.graceMs)} ${tenths(spec.timeoutMs)} </dev/null >/dev/null 2>&1 &
exec 9>&-
hdr started
${spec.sweepAfterMinutes ? sweepScript(spec.sweepAfterMinutes) : ""}A=1 B=1
${FOLLOW}
}
`;
}

/**
 * Removes leftover job directories in the background: only `cmd_*` ones,
 * only when nothing in them changed for `minutes`, and only when no
 * supervisor holds their lock. Any doubt (no `find`, a `find` error) keeps
 * the directory.
 */
function sweepScript(minutes: number): string {
  if (!Number.isSafeInteger(minutes) || minutes < 1) throw new Error(`bad sweep age ${minutes}`);
  return `( cd "$HOME"/${q(JOBS_DIR)} 2>/dev/null || exit 0
  command -v find >/dev/null 2>&1 || exit 0
  me=\${J##*/}
  for d in cmd_*; do
    [ -d "$d" ] && [ "$d" != "$me" ] || continue
    recent=$(find "$d" -mmin -${minutes} -print -quit 2>/dev/null) || continue
    [ -z "$recent" ] || continue
    flock -n "$d/lock" true 2>/dev/null || continue
    rm -rf -- "$d"
  done ) </dev/null >/dev/null 2>&1 9>&- &
`;
}

/**
 * The light path for a caller that waits (Execute, Batch): no files on the
 * target. The command runs in its own session with its output straight on
 * the channel; the channel's exit status is the command's wait status.
 * Header on stdout: `<nonce> started <pgid>` (then the output; printed by
 * the command's own shell, so nothing of the command precedes it) or
 * `<nonce> error <reason>` (nothing started; stderr says why). coreutils'
 * `timeout` (as the run-as user, so it may signal the command) leads the
 * command's process group and enforces the timeout on the target even if the
 * service is gone; the service itself acts first, at the timeout.
 */
export function directScript(spec: Omit<StartSpec, "jobDir"> & { watchdogMs: number }): string {
  for (const name of Object.keys(spec.env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`unsafe env name ${JSON.stringify(name)}`);
  }
  // The command's own shell announces its process group and marks stderr
  // before anything of the command can print.
  const inner = commandScript({ ...spec, jobDir: "" }, announceGroup(spec.nonce));
  const eof = `FLEETRUN_EOF_${spec.nonce}`;
  if (inner.includes(eof)) throw new Error("nonce collision");
  return `{
N=${q(spec.nonce)}
U=${q(spec.user ?? "")}
C=${q(spec.cwd === null ? "" : cdOperand(spec.cwd))} CS=${q(spec.cwd ?? "")}
T=${q(seconds(spec.watchdogMs))}
G=${q(seconds(spec.graceMs))}
${HEADER_FN}
${CWD_PROBLEM_FN}
# The command needs a session of its own. sshd already made this shell one
# (no pty): exec in place. Elsewhere (the local machine) setsid, which does
# not fork when the caller leads no group.
S=setsid
if [ -r /proc/$$/stat ]; then
  read -r l </proc/$$/stat
  l=\${l##*) }
  set -- $l
  [ "$4" = "$$" ] && S=
  set --
fi
[ -z "$S" ] || command -v setsid >/dev/null 2>&1 || { printf 'the target lacks setsid (util-linux)\n' >&2; hdr error spawn_failed; exit 0; }
if [ -n "$U" ]; then
  e=$(sudo -n -u "$U" /bin/sh -c 'if [ -n "$1" ]; then cd -- "$1" || exit 97; fi' fleetrun-check "$C" 2>&1 </dev/null)
  r=$?
  if [ "$r" -eq 97 ]; then cwd_problem "$U"; hdr error cwd_not_found; exit 0; fi
  if [ "$r" -ne 0 ]; then printf 'sudo -n -u %s refused: %s\n' "$U" "$e" >&2; hdr error run_as_refused; exit 0; fi
  exec $S sudo -n -u "$U" timeout -s TERM -k "$G" "$T" /bin/sh -s <<'${eof}'
${inner}${eof}
fi
if [ -n "$C" ]; then (cd -- "$C") 2>/dev/null || { cwd_problem "$(id -un)"; hdr error cwd_not_found; exit 0; }; fi
exec $S timeout -s TERM -k "$G" "$T" /bin/sh -s <<'${eof}'
${inner}${eof}
}
`;
}

/**
 * The light path on an SSH target without a run-as user: sshd already runs
 * the login shell as the leader of a session of its own (no pty), so it can
 * exec straight into coreutils `timeout` (which then leads the command's
 * process group and enforces the timeout on the target when the service is
 * gone) and `timeout` runs the command's shell, which reads
 * {@link directFastScript} from the channel. That is one shell fewer than
 * {@link directScript} and no script for it to parse. The command line
 * carries only the two durations: neither the command nor env values.
 */
export function directFastCommandLine(spec: { graceMs: number; watchdogMs: number }): string {
  return `exec timeout -s TERM -k ${seconds(spec.graceMs)} ${seconds(spec.watchdogMs)} /bin/sh -s`;
}

/**
 * The script for {@link directFastCommandLine}: checks `cwd` (header
 * `<nonce> error cwd_not_found`, nothing run), then announces the process
 * group and runs the command exactly as {@link directScript}'s inner shell.
 */
export function directFastScript(spec: Omit<StartSpec, "jobDir" | "user">): string {
  for (const name of Object.keys(spec.env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`unsafe env name ${JSON.stringify(name)}`);
  }
  const check =
    spec.cwd === null
      ? []
      : [
          `N=${q(spec.nonce)} C=${q(cdOperand(spec.cwd))} CS=${q(spec.cwd)}`,
          HEADER_FN,
          CWD_PROBLEM_FN,
          `(cd -- "$C") 2>/dev/null || { cwd_problem "$(id -un)"; hdr error cwd_not_found; exit 0; }`,
          "unset N C; unset -f hdr cwd_problem",
        ];
  return commandScript({ ...spec, jobDir: "", user: null }, [...check, ...announceGroup(spec.nonce)]);
}

/** The command's own shell announces its process group (led by `timeout`) and marks stderr. */
function announceGroup(nonce: string): string[] {
  return [
    // The group is led by `timeout`, not by this shell: read it from /proc.
    `fleetrun_pg=$$; fleetrun_st=; if [ -r /proc/$$/stat ]; then read -r fleetrun_pg < /proc/$$/stat; fleetrun_pg=\${fleetrun_pg##*) }; set -- $fleetrun_pg; fleetrun_pg=$3; set --; fi`,
    // ... and when its leader started, so that a later kill can tell it from a reused id.
    `if [ -r /proc/$fleetrun_pg/stat ]; then read -r fleetrun_st < /proc/$fleetrun_pg/stat; fleetrun_st=\${fleetrun_st##*) }; set -- $fleetrun_st; fleetrun_st=\${20}; set --; fi`,
    `printf '%s started %s %s\\n' ${q(nonce)} "$fleetrun_pg" "$fleetrun_st"`,
    "unset fleetrun_pg fleetrun_st",
    `printf '%s\\n' ${q(nonce)} >&2`,
  ];
}

/**
 * Signals a process group by id (the light path's cancel and timeout), then
 * SIGKILL after `graceMs` from a detached helper while anything of it is left.
 * Header: `<nonce> sent` or `<nonce> gone` (no such group).
 */
export function killGroupScript(nonce: string, pgid: number, leaderStart: string | null, user: string | null, graceMs: number): string {
  if (!Number.isSafeInteger(pgid) || pgid <= 1) throw new Error(`bad process group ${pgid}`);
  if (leaderStart !== null && !/^\d+$/.test(leaderStart)) throw new Error("bad start time");
  return `{
N=${q(nonce)}
U=${q(user ?? "")}
${HEADER_FN}
${KILL_FN}
${MINE_FN}
P=${pgid}
S0=${leaderStart ?? '$(started "$P")'}
mine && k -s TERM -- "-$P" 2>/dev/null || { hdr gone; exit 0; }
hdr sent
( setsid /bin/sh -c '${KILL_HELPER}' fleetrun-kill "$P" ${tenths(graceMs)} "$U" "$S0" </dev/null >/dev/null 2>&1 & )
}
`;
}

export interface AttachSpec {
  nonce: string;
  jobDir: string;
  /** Bytes of stdout and stderr already received. */
  stdoutOffset: number;
  stderrOffset: number;
}

/**
 * Streams a running or finished job's output from the given offsets.
 * Headers: `<nonce> attached` or `<nonce> gone` (no such job).
 */
export function attachScript(spec: AttachSpec): string {
  return `{
N=${q(spec.nonce)}
J="$HOME"/${q(spec.jobDir)}
${HEADER_FN}
[ -d "$J" ] || { hdr gone; exit 0; }
hdr attached
A=${spec.stdoutOffset + 1} B=${spec.stderrOffset + 1}
${FOLLOW}
}
`;
}

/**
 * Reads how a job ended (the job stays until `cleanupScript`, run once the
 * outcome is stored, so a crash in between loses nothing). Header:
 * `<nonce> status <wait status|running|dead> [timedout] [cancelled]`, or
 * `<nonce> gone`. `dead` means the supervisor died without recording a status.
 */
export function collectScript(nonce: string, jobDir: string): string {
  return `{
N=${q(nonce)}
J="$HOME"/${q(jobDir)}
${HEADER_FN}
[ -d "$J" ] || { hdr gone; exit 0; }
if [ -e "$J/status" ]; then
  read -r st <"$J/status"
elif flock -n "$J/lock" true 2>/dev/null; then
  st=dead
else
  st=running
fi
m=
[ -e "$J/timedout" ] && m="$m timedout"
[ -e "$J/cancelled" ] && m="$m cancelled"
hdr status "$st$m"
}
`;
}

/** Removes a job that has ended. Header: `<nonce> done`. */
export function cleanupScript(nonce: string, jobDir: string): string {
  return `{
N=${q(nonce)}
J="$HOME"/${q(jobDir)}
${HEADER_FN}
if [ -e "$J/status" ] || { [ -d "$J" ] && flock -n "$J/lock" true 2>/dev/null; }; then rm -rf "$J"; fi
hdr done
}
`;
}

/**
 * Cancels a job: marks it, sends SIGTERM to its process group and leaves a
 * detached escalation that sends SIGKILL after the grace period. Headers:
 * `<nonce> sent`, `<nonce> done` (already ended), `<nonce> gone`.
 */
export function cancelScript(nonce: string, jobDir: string, user: string | null, graceMs: number): string {
  return `{
N=${q(nonce)}
J="$HOME"/${q(jobDir)}
U=${q(user ?? "")}
${HEADER_FN}
${KILL_FN}
${MINE_FN}
[ -d "$J" ] || { hdr gone; exit 0; }
[ -e "$J/status" ] && { hdr done; exit 0; }
i=0
while [ ! -s "$J/pgid" ]; do
  [ -e "$J/status" ] && { hdr done; exit 0; }
  [ "$i" -ge 300 ] && { hdr gone; exit 0; }
  sleep 0.01
  i=$((i+1))
done
read -r P S0 <"$J/pgid"
: >"$J/cancelled"
mine && k -s TERM -- "-$P" 2>/dev/null
hdr sent
( setsid /bin/sh -c '${CANCEL_HELPER}' fleetrun-cancel "$J" "$P" ${q(seconds(graceMs))} "$U" "$S0" ${tenths(graceMs)} </dev/null >/dev/null 2>&1 & )
}
`;
}

export type Header =
  | { kind: "started"; pgid: number | null; leaderStart: string | null }
  | { kind: "exists" }
  | { kind: "attached" }
  | { kind: "gone" }
  | { kind: "sent" }
  | { kind: "done" }
  | { kind: "error"; reason: string }
  | { kind: "status"; status: number | "running" | "dead"; timedOut: boolean; cancelled: boolean };

/** Parses one header line (without the newline); null when it is not ours. */
export function parseHeader(nonce: string, line: string): Header | null {
  if (!line.startsWith(nonce + " ")) return null;
  const words = line.slice(nonce.length + 1).trim().split(/\s+/);
  const [kind, arg] = words;
  switch (kind) {
    case "started":
      return {
        kind: "started",
        pgid: arg !== undefined && /^\d+$/.test(arg) ? Number(arg) : null,
        leaderStart: words[2] !== undefined && /^\d+$/.test(words[2]) ? words[2] : null,
      };
    case "exists":
    case "attached":
    case "gone":
    case "sent":
    case "done":
      return { kind };
    case "error":
      return { kind: "error", reason: arg ?? "spawn_failed" };
    case "status": {
      const rest = words.slice(2);
      let status: number | "running" | "dead";
      if (arg === "running" || arg === "dead") status = arg;
      else if (arg !== undefined && /^\d+$/.test(arg)) status = Number(arg);
      else status = "dead";
      return { kind: "status", status, timedOut: rest.includes("timedout"), cancelled: rest.includes("cancelled") };
    }
    default:
      return null;
  }
}
