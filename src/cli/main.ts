/**
 * `fleetrun`: the command line of the service. Argument parsing (commander)
 * lives here; each subcommand group's work is in its own module, imported
 * only when that subcommand runs, so `--help` and completion stay fast.
 */
import { Command, CommanderError, Option } from "commander";
import pkg from "../../package.json" with { type: "json" };
import { describeError } from "./errors.ts";
import { EXIT, EXIT_CODES_HELP } from "./exit-codes.ts";
import { resolveSettings } from "./profile.ts";
import type { GlobalOptions } from "./session.ts";

const collect = (value: string, previous: string[]): string[] => [...previous, value];

const ENV_HELP = `Connection (flags > environment > profile):
  --url, FLEETRUN_URL          the service, default http://localhost:8080
  --token, FLEETRUN_TOKEN      bearer token
  --profile, FLEETRUN_PROFILE  profile of ~/.config/fleetrun/config (default: default);
                               write one with fleetrun login
  NO_COLOR                     no colours (colours are used on terminals only)`;

type Action = (args: string[], opts: Record<string, unknown>, globals: GlobalOptions) => Promise<number>;

/** Wires a subcommand to a lazily imported action; its exit code becomes the process's. */
function lazy(load: () => Promise<Action>): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    const cmd = args.at(-1) as Command;
    const opts = cmd.opts();
    const globals = cmd.optsWithGlobals() as GlobalOptions;
    const positional = args.slice(0, -2).flatMap((a) => (Array.isArray(a) ? a : a === undefined ? [] : [String(a)]));
    const action = await load();
    try {
      process.exitCode = await action(positional, opts, globals);
    } catch (e) {
      // Name the URL the command used (flag, environment or profile) in connection errors.
      let url: string | undefined;
      try {
        url = resolveSettings(globals).url;
      } catch {
        url = undefined;
      }
      const { line, exitCode } = describeError(e, url);
      process.stderr.write(`fleetrun: ${line}\n`);
      process.exitCode = exitCode;
    }
  };
}

export function buildProgram(): Command {
  const program = new Command("fleetrun")
    .description("Run shell commands on your machines through a fleetrun service.")
    .version(pkg.version, "-V, --version")
    .addOption(new Option("--url <url>", "the fleetrun service (FLEETRUN_URL)"))
    .addOption(new Option("--token <token>", "bearer token (FLEETRUN_TOKEN; a flag is visible in ps)"))
    .addOption(new Option("--profile <name>", "profile of the config file (FLEETRUN_PROFILE)"))
    .addOption(new Option("-o, --output <format>", "table (default), json or ndjson").choices(["table", "json", "ndjson"]))
    .showSuggestionAfterError()
    .addHelpText("after", `\n${ENV_HELP}\n\n${EXIT_CODES_HELP}\n`);

  const runOpts = (c: Command): Command =>
    c
      .option("--cwd <dir>", "working directory on the target (default: the user's home)")
      .option("-e, --env <NAME=VALUE>", "environment variable, repeatable", collect, [])
      .option("-u, --user <user>", "run as this user (sudo -n -u)")
      .option("-t, --timeout <duration>", "kill the command after this long: 30s, 5m, 1h30m (default: the service's)");

  runOpts(
    program
      .command("run")
      .alias("exec")
      .summary("run a command on one machine and stream its output")
      .description(
        "Runs COMMAND on MACHINE (an id or a name) and streams its stdout to stdout and its stderr\n" +
          "to stderr as they arrive, byte for byte. The words are joined with spaces and run by /bin/sh\n" +
          "on the target, as ssh does: quote pipelines (fleetrun run web-1 -- 'ps aux | grep nginx').\n" +
          "Ctrl-C cancels the remote command (its whole process group); a second Ctrl-C stops waiting\n" +
          "and prints how to follow it. A dropped connection resumes where it stopped.",
      )
      .argument("<machine>", "machine id (mach_…) or name")
      .argument("<command...>", "the command (put -- before it when it has options)"),
  )
    .option("-d, --detach", "start it and print its id; follow it with fleetrun follow ID")
    .addHelpText("after", `\nExamples:\n  fleetrun run web-1 -- uname -a\n  fleetrun run web-1 --cwd /srv/app -e RAILS_ENV=production -t 10m -- bin/migrate\n  ID=$(fleetrun run web-1 --detach -- ./backup.sh) && fleetrun follow "$ID"\n\n${EXIT_CODES_HELP}\n`)
    .action(lazy(async () => (await import("./commands/run.ts")).runAction));

  program
    .command("follow")
    .summary("follow a command's output until it ends")
    .description("Streams the command's output from --from (a byte offset of its combined output) to its end,\nthen exits as run does. Resumes by itself after a dropped connection.")
    .argument("<id>", "command id (cmd_…)")
    .option("--from <offset>", "byte offset to start from", "0")
    .action(lazy(async () => (await import("./commands/run.ts")).followAction));

  program
    .command("logs")
    .summary("print a command's stored output (-f: follow it)")
    .argument("<id>", "command id (cmd_…)")
    .option("-f, --follow", "follow the output until the command ends (as fleetrun follow)")
    .option("--from <offset>", "with -f: byte offset to start from", "0")
    .action(lazy(async () => (await import("./commands/run.ts")).logsAction));

  program
    .command("get")
    .summary("show a command: status, exit code, times")
    .argument("<id>", "command id (cmd_…)")
    .action(lazy(async () => (await import("./commands/command.ts")).getAction));

  program
    .command("cancel")
    .summary("cancel a command (SIGTERM to its process group, SIGKILL after the grace period)")
    .argument("<id>", "command id (cmd_…)")
    .action(lazy(async () => (await import("./commands/command.ts")).cancelAction));

  runOpts(
    program
      .command("batch")
      .summary("run a command on many machines")
      .description(
        "Runs COMMAND on every machine given by --machines (ids or names) or --selector (labels).\n" +
          "On a terminal a live progress line (done, running, failed, elapsed, ETA) is shown on stderr,\n" +
          "then a table of each machine's result. Exits 1 when any machine did not succeed.\n" +
          "Ctrl-C cancels what runs and skips the rest.",
      )
      .argument("<command...>", "the command (put -- before it)")
      .option("-m, --machines <list>", "machine ids or names, comma-separated (repeatable)", collect, [])
      .option("-l, --selector <labels>", "machines carrying all these labels: env=prod,role=web")
      .option("--max-concurrency <n>", "machines at once: a count or a percentage (25%)")
      .option("--max-errors <n>", "stop launching once more than this many failed: a count or a percentage")
      .option("--no-progress", "no progress line, even on a terminal"),
  )
    .addHelpText("after", `\nExamples:\n  fleetrun batch --selector env=prod --max-concurrency 25% --max-errors 2 -- uptime\n  fleetrun batch -m web-1,web-2 -o json -- 'systemctl is-active nginx' | jq '.results[] | {machine_name, exit_code}'\n`)
    .action(lazy(async () => (await import("./commands/batch.ts")).batchAction));

  program
    .command("history")
    .summary("a machine's commands, newest first")
    .argument("<machine>", "machine id (mach_…) or name")
    .option("--since <when>", "commands created since: a duration back (1h, 2d) or a date (2026-01-01)")
    .option("--status <status>", "only this status: completed, failed, timed_out, cancelled, lost, …")
    .option("--exit-code <n>", "only this exit code")
    .option("--requested-by <token name>", "only commands this token started")
    .option("--limit <n>", "at most this many (1-1000)", "20")
    .action(lazy(async () => (await import("./commands/history.ts")).historyAction));

  const machines = program.command("machines").alias("machine").summary("list, add, test, label and remove machines");
  machines
    .command("list")
    .alias("ls")
    .description("List the machines (with --selector: those carrying all these labels).")
    .option("-l, --selector <labels>", "env=prod,role=web")
    .action(lazy(async () => (await import("./commands/machines.ts")).listAction));
  machines
    .command("get")
    .description("Show one machine.")
    .argument("<machine>", "machine id or name")
    .action(lazy(async () => (await import("./commands/machines.ts")).getAction));
  machines
    .command("add")
    .description(
      "Register an SSH target. Credentials are read from files, never from the command line.\n" +
        "Pin its host key with --fingerprint (as ssh-keygen -lf prints it), or choose --tofu\n" +
        "(or --insecure-accept-any).",
    )
    .argument("<name>", "unique name")
    .requiredOption("--host <host>", "host name or IP address")
    .option("-p, --port <port>", "SSH port", "22")
    .requiredOption("--user <user>", "login user")
    .option("--key <file>", "private key file (PEM or OpenSSH), e.g. ~/.ssh/id_ed25519")
    .option("--passphrase-file <file>", "file holding the key's passphrase (- for stdin)")
    .option("--password-file <file>", "file holding the login password (- for stdin)")
    .option("--fingerprint <SHA256:…>", "pin the host key (ssh-keyscan HOST | ssh-keygen -lf -)")
    .option("--host-key-algorithm <alg>", "key type of the pin: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, …")
    .option("--tofu", "trust on first use: the first connection records the key, later ones must match")
    .option("--insecure-accept-any", "accept any host key, at every connection (audited)")
    .option("--label <KEY=VALUE>", "label, repeatable", collect, [])
    .addHelpText("after", "\nExample:\n  fleetrun machines add web-1 --host 10.0.0.5 --user deploy --key ~/.ssh/id_ed25519 \\\n    --fingerprint \"$(ssh-keyscan -t ed25519 10.0.0.5 2>/dev/null | ssh-keygen -lf - | cut -d' ' -f2)\" --label env=prod\n")
    .action(lazy(async () => (await import("./commands/machines.ts")).addAction));
  machines
    .command("test")
    .description("Connect, check the host key, log in and run true; prints the latency or the precise error.")
    .argument("<machine>", "machine id or name")
    .action(lazy(async () => (await import("./commands/machines.ts")).testAction));
  machines
    .command("rm")
    .alias("delete")
    .description("Remove a machine (its history stays readable).")
    .argument("<machine>", "machine id or name")
    .option("--force", "cancel its running commands first")
    .action(lazy(async () => (await import("./commands/machines.ts")).rmAction));
  machines
    .command("label")
    .description("Change labels: KEY=VALUE sets one, KEY- removes one; other labels are kept.")
    .argument("<machine>", "machine id or name")
    .argument("<changes...>", "KEY=VALUE or KEY-")
    .action(lazy(async () => (await import("./commands/machines.ts")).labelAction));

  program
    .command("login")
    .summary("check a token and save it (and the URL) in a profile")
    .description(
      "Checks the token against the service and writes url and token to the profile in\n" +
        "~/.config/fleetrun/config (mode 0600). The token is read from stdin (--with-token),\n" +
        "or taken from --token / FLEETRUN_TOKEN.",
    )
    .option("--with-token", "read the token from stdin")
    .addHelpText("after", "\nExample:\n  fleetrun login --url http://localhost:8080 --with-token < data/admin-token\n  fleetrun login --profile prod --url https://fleetrun.example.com --with-token < prod-token\n")
    .action(lazy(async () => (await import("./commands/login.ts")).loginAction));

  const config = program.command("config").summary("show the profiles and where the config file is");
  config
    .command("list")
    .description("The profiles of the config file (tokens shortened).")
    .action(lazy(async () => (await import("./commands/login.ts")).configListAction));
  config
    .command("path")
    .description("Print the config file's path.")
    .action(lazy(async () => (await import("./commands/login.ts")).configPathAction));

  program
    .command("completion")
    .summary("print a shell completion script (bash or zsh)")
    .argument("<shell>", "bash or zsh")
    .addHelpText("after", "\nInstall:\n  bash: echo 'source <(fleetrun completion bash)' >> ~/.bashrc\n  zsh:  echo 'source <(fleetrun completion zsh)' >> ~/.zshrc\n")
    .action(lazy(async () => (await import("./commands/completion.ts")).completionAction(buildProgram)));

  // For the completion scripts: machine names, one a line (not in --help).
  program
    .command("__machines", { hidden: true })
    .action(lazy(async () => (await import("./commands/completion.ts")).machineNamesAction));

  return program;
}

/** Parses `argv` (without node and the script), runs the subcommand and exits with its code. */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  const all = [program, ...allCommands(program)];
  for (const c of all) {
    c.exitOverride();
    c.configureOutput({ outputError: (str, write) => write(`fleetrun: ${str.replace(/^error: /, "").trimEnd()}\n`) });
  }
  let code: number;
  try {
    await program.parseAsync(argv, { from: "user" });
    code = typeof process.exitCode === "number" ? process.exitCode : EXIT.ok;
  } catch (e) {
    if (e instanceof CommanderError) {
      code = e.exitCode === 0 ? EXIT.ok : EXIT.usage;
      if (e.code === "commander.unknownOption" && /^(run|exec|batch)$/.test(argv.find((a) => !a.startsWith("-")) ?? "")) {
        process.stderr.write("fleetrun: put -- before a command that has options: fleetrun run MACHINE -- ls -la\n");
      }
    } else {
      const { line, exitCode } = describeError(e);
      process.stderr.write(`fleetrun: ${line}\n`);
      code = exitCode;
    }
  }
  await flushAndExit(code);
}

function allCommands(c: Command): Command[] {
  return c.commands.flatMap((sub) => [sub, ...allCommands(sub)]);
}

/** Exits once stdout and stderr have taken everything written (pipes included). */
export async function flushAndExit(code: number): Promise<never> {
  await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((resolve) => (s.writableLength === 0 ? resolve() : s.write("", () => resolve())))));
  process.exit(code);
}
