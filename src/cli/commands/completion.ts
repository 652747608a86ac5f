/**
 * `fleetrun completion bash|zsh`: a completion script generated from the
 * command tree itself (subcommands, their options, the values of `--output`
 * and file arguments), so it never drifts from the parser. zsh runs the same
 * function through its `bashcompinit`.
 */
import type { Command, Option } from "commander";
import { UsageError } from "../errors.ts";
import { EXIT } from "../exit-codes.ts";
import { openSession } from "../session.ts";
import type { GlobalOptions } from "../session.ts";

interface Node {
  path: string;
  subs: string[];
  options: string[];
  valueOptions: string[];
}

function flagsOf(o: Option): string[] {
  return [o.short, o.long].filter((f): f is string => typeof f === "string");
}

function walk(cmd: Command, path: string, out: Node[]): void {
  const subs = cmd.commands.flatMap((c) => [c.name(), ...c.aliases()]);
  const options = cmd.options.flatMap(flagsOf);
  const valueOptions = cmd.options.filter((o) => o.required || o.optional).flatMap(flagsOf);
  out.push({ path, subs, options: [...options, "--help"], valueOptions });
  for (const c of cmd.commands) {
    for (const name of [c.name(), ...c.aliases()]) walk(c, path === "" ? name : `${path} ${name}`, out);
  }
}

/** Subcommands whose first argument is a machine (its name is completed). */
const MACHINE_PATHS = ["run", "exec", "history", ...["machines", "machine"].flatMap((m) => ["get", "test", "rm", "delete", "label"].map((c) => `${m} ${c}`))];

/** Options whose value is a file name. */
const FILE_OPTIONS = ["--key", "--passphrase-file", "--password-file"];

export function bashScript(program: Command): string {
  const nodes: Node[] = [];
  walk(program, "", nodes);
  const root = nodes[0]!;
  const cases = (pick: (n: Node) => string[]): string =>
    nodes.map((n) => `    ${JSON.stringify(n.path)}) echo ${JSON.stringify(pick(n).join(" "))} ;;`).join("\n");
  return `# fleetrun completion for bash (zsh: fleetrun completion zsh)
# Load it now:  source <(fleetrun completion bash)
# Every shell:  echo 'source <(fleetrun completion bash)' >> ~/.bashrc
_fleetrun_subcommands() {
  case "$1" in
${cases((n) => n.subs)}
  esac
}
_fleetrun_options() {
  case "$1" in
${cases((n) => n.options)}
  esac
}
_fleetrun_value_options() {
  case "$1" in
${cases((n) => n.valueOptions)}
  esac
}
_fleetrun() {
  local cur prev path="" i w subs skip="" npos=0
  COMPREPLY=()
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev=""
  [ "$COMP_CWORD" -gt 0 ] && prev="\${COMP_WORDS[COMP_CWORD-1]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if [ -n "$skip" ]; then skip=""; continue; fi
    case "$w" in
      --) return 0 ;;
      --*=*) continue ;;
      -*)
        case " $(_fleetrun_value_options "$path") ${JSON.stringify(root.valueOptions.join(" ")).slice(1, -1)} " in
          *" $w "*) skip=1 ;;
        esac
        continue ;;
    esac
    subs=" $(_fleetrun_subcommands "$path") "
    case "$subs" in
      *" $w "*) if [ -z "$path" ]; then path="$w"; else path="$path $w"; fi ;;
      *) npos=$((npos + 1)) ;;
    esac
  done
  # Machine names from the service (quietly nothing when it cannot be asked).
  case "$prev" in
    -m|--machines) COMPREPLY=($(compgen -W "$(fleetrun __machines 2>/dev/null)" -- "\${cur##*,}")); return 0 ;;
  esac
  if [ "$npos" -eq 0 ] && [[ "$cur" != -* ]]; then
    case "$path" in
      ${MACHINE_PATHS.map((p) => JSON.stringify(p)).join("|")})
        COMPREPLY=($(compgen -W "$(fleetrun __machines 2>/dev/null)" -- "$cur")); return 0 ;;
    esac
  fi
  case "$prev" in
    -o|--output) COMPREPLY=($(compgen -W "table json ndjson" -- "$cur")); return 0 ;;
    ${FILE_OPTIONS.join("|")}) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
  esac
  case " $(_fleetrun_value_options "$path") ${JSON.stringify(root.valueOptions.join(" ")).slice(1, -1)} " in
    *" $prev "*) [ -n "$prev" ] && return 0 ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_fleetrun_options "$path") ${JSON.stringify(root.options.join(" ")).slice(1, -1)}" -- "$cur"))
  elif [ "$path" = "completion" ]; then
    COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_fleetrun_subcommands "$path")" -- "$cur"))
  fi
  return 0
}
complete -o default -F _fleetrun fleetrun
`;
}

export function zshScript(program: Command): string {
  return `#compdef fleetrun
# fleetrun completion for zsh (through bashcompinit)
# Load it now:  source <(fleetrun completion zsh)
# Every shell:  echo 'source <(fleetrun completion zsh)' >> ~/.zshrc
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }
autoload -U +X bashcompinit && bashcompinit
${bashScript(program).split("\n").filter((l) => !l.startsWith("#")).join("\n")}`;
}

/** `fleetrun __machines`: machine names, one a line, for completion; silent and quick on any error. */
export async function machineNamesAction(_args: string[], _opts: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  try {
    const s = openSession({ ...globals, output: "table" });
    try {
      const page = await s.fleet.machines.listMachines({ limit: 1000 }, { timeoutMs: 3000 });
      process.stdout.write(page.data.map((m) => `${m.name}\n`).join(""));
    } finally {
      s.fleet.close();
    }
  } catch {
    // Completion offers nothing rather than an error in the middle of a command line.
  }
  return EXIT.ok;
}

export function completionAction(buildProgram: () => Command) {
  return async (args: string[]): Promise<number> => {
    const shell = args[0];
    if (shell !== "bash" && shell !== "zsh") throw new UsageError(`completion: expected bash or zsh, got ${JSON.stringify(shell)}`);
    const program = buildProgram();
    process.stdout.write(shell === "bash" ? bashScript(program) : zshScript(program));
    return EXIT.ok;
  };
}
