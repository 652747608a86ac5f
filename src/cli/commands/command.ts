/** `fleetrun get` and `fleetrun cancel`: one command by id. */
import { EXIT } from "../exit-codes.ts";
import { printJson, renderFields } from "../output.ts";
import { openSession } from "../session.ts";
import type { GlobalOptions } from "../session.ts";
import { commandFields, commandJson } from "../views.ts";

export async function getAction(args: string[], _opts: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const s = openSession(globals);
  try {
    const cmd = await s.fleet.commands.getCommand({ id: args[0]! });
    if (s.out.mode === "table") s.out.write(renderFields(s.out, commandFields(s.out, cmd)));
    else printJson(s.out, commandJson(cmd));
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

export async function cancelAction(args: string[], _opts: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const s = openSession(globals);
  try {
    const id = args[0]!;
    const r = await s.fleet.commands.cancelCommand({ id });
    if (s.out.mode === "table") s.out.write(`cancelling ${id}: SIGTERM sent to its process group (fleetrun get ${id} shows when it ended)\n`);
    else printJson(s.out, { id, cancelled: r.cancelled });
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}
