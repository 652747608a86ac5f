/** `fleetrun history MACHINE`: a machine's commands, newest first, as a table. */
import { EXIT } from "../exit-codes.ts";
import { printJson, renderTable } from "../output.ts";
import { parseIntFlag, parseSince, parseStatus } from "../parse.ts";
import { machineIdOf, openSession } from "../session.ts";
import type { GlobalOptions } from "../session.ts";
import { HISTORY_HEAD, historyJson, historyRow } from "../views.ts";

interface HistoryOptions {
  since?: string;
  status?: string;
  exitCode?: string;
  requestedBy?: string;
  limit: string;
}

export async function historyAction(args: string[], raw: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const opts = raw as unknown as HistoryOptions;
  const request = {
    limit: parseIntFlag(opts.limit, "--limit", 1, 1000),
    ...(opts.since !== undefined ? { since: parseSince(opts.since) } : {}),
    ...(opts.status !== undefined ? { status: parseStatus(opts.status) } : {}),
    ...(opts.exitCode !== undefined ? { exitCode: parseIntFlag(opts.exitCode, "--exit-code", 0, 255) } : {}),
    ...(opts.requestedBy !== undefined ? { requestedBy: opts.requestedBy } : {}),
  };
  const s = openSession(globals);
  try {
    const machineId = await machineIdOf(s.fleet, args[0]!);
    const page = await s.fleet.commands.listMachineCommands({ machineId, ...request });
    const items = page.data.map(historyJson);
    if (s.out.mode === "json") {
      printJson(s.out, { data: items, meta: { total: Number(page.meta?.total ?? 0), limit: page.meta?.limit ?? request.limit, next_cursor: page.meta?.nextCursor ?? null } });
    } else if (s.out.mode === "ndjson") {
      printJson(s.out, null, items);
    } else if (page.data.length === 0) {
      s.out.note(`no commands on ${args[0]}${opts.since !== undefined || opts.status !== undefined ? " matching the filters" : ""}`);
    } else {
      s.out.write(renderTable(s.out, HISTORY_HEAD, page.data.map((h) => historyRow(s.out, h))));
      const total = Number(page.meta?.total ?? 0);
      if (total > page.data.length) s.out.note(`${page.data.length} of ${total} (--limit for more)`);
    }
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}
