/**
 * A /healthz poller in its own process, so the bench's own work (starting
 * commands, reading followers' streams) cannot delay the polls it measures.
 * Usage: node bench/lib/healthz-poller.ts URL INTERVAL_MS. Polls until its
 * stdin closes, then prints one JSON line: { latenciesMs, failures, unanswered }.
 */
import { startHealthzPoller } from "../../test/fixtures/load.ts";

const [url, interval] = process.argv.slice(2);
if (!url) throw new Error("usage: healthz-poller.ts URL [INTERVAL_MS]");
const poller = startHealthzPoller(url, Number(interval ?? 100));
process.stdin.resume();
process.stdin.on("end", () => {
  void poller.stop().then((r) => {
    process.stdout.write(JSON.stringify(r) + "\n");
    process.exit(0);
  });
});
process.stdout.write("ready\n");
