/**
 * The CLI's exit codes. `run` and `follow` pass the remote exit code through;
 * the codes below say how a command ended otherwise and why the CLI itself
 * could not do its job (the sysexits.h numbers, which remote commands rarely use).
 */
import type { Command } from "../gen/fleetrun/v1/command_pb.js";

// CommandStatus values (fleetrun.v1.CommandStatus), without loading the
// generated code: `--help` stays fast.
const COMPLETED = 3;
const TIMED_OUT = 5;
const CANCELLED = 6;

export const EXIT = {
  ok: 0,
  /** `batch`: a machine did not succeed; `machines test`: the test failed. */
  someFailed: 1,
  /** Bad flags or arguments. */
  usage: 64,
  /** The service refused the request: invalid_argument, not_found, already_exists, failed_precondition, … */
  refused: 65,
  /** The service cannot be reached or is unavailable (connection refused, DNS, TLS, 503, deadline). */
  unavailable: 69,
  /** The service answered with an error it calls internal or unknown. */
  internal: 70,
  /** unauthenticated (no or bad token) or permission_denied (the token's scope). */
  auth: 77,
  /** The configuration: a profile file group/other can read, an unknown profile, a bad URL. */
  config: 78,
  /** The command's timeout elapsed (status `timed_out`), as `timeout(1)`. */
  timedOut: 124,
  /** The command was cancelled (Ctrl-C or any cancel), or the CLI stopped waiting after a second Ctrl-C. */
  cancelled: 130,
  /** The command failed to start (`failed`) or its outcome is unknown (`lost`), as `ssh` does for its own errors. */
  failedOrLost: 255,
} as const;

/** How `run`/`follow` exit for a command that has ended. */
export function exitCodeOf(cmd: Command): number {
  switch (cmd.status) {
    case COMPLETED:
      return cmd.exitCode ?? EXIT.failedOrLost;
    case TIMED_OUT:
      return EXIT.timedOut;
    case CANCELLED:
      return EXIT.cancelled;
    default:
      return EXIT.failedOrLost;
  }
}

/** The table printed by `fleetrun --help` and `fleetrun run --help` (and in the README). */
export const EXIT_CODES_HELP = `Exit codes:
  0-255  run, follow: the remote command's exit code (128+n when a signal
         fleetrun did not send ended it, as sh reports it)
  124    run, follow: timed_out (the --timeout elapsed; as timeout(1))
  130    run, follow: cancelled (Ctrl-C or any cancel); also a second Ctrl-C
  255    run, follow: failed (never started) or lost (outcome unknown);
         the reason is one line on stderr
  1      batch: a machine did not succeed; machines test: the test failed
  64     usage: bad flags or arguments
  65     the service refused the request (invalid_argument, not_found,
         already_exists, failed_precondition, resource_exhausted, …)
  69     the service cannot be reached or is unavailable
  70     the service reported an internal error
  77     unauthenticated (no or bad token) or permission_denied
  78     configuration: profile file readable by others, unknown profile, bad URL`;
