/**
 * Fan-out to many machines behind ONE sshd (a shared bastion address) that
 * keeps OpenSSH's default MaxStartups (10:30:100): handshakes are paced, so
 * sshd never drops a connection at random.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { startSshFleet, type SshFleet } from "../fixtures/sshd.ts";
import { startService, type TestService } from "../fixtures/service.ts";

let fleet: SshFleet;
let svc: TestService;

beforeAll(async () => {
  fleet = await startSshFleet({ count: 1 }); // sshd defaults: MaxStartups 10:30:100
  svc = await startService({ db: "sqlite" });
});
afterAll(async () => {
  await svc?.close();
  await fleet?.stop();
});

it("a cold batch over 40 machines on one default sshd address loses none of them", async () => {
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!;
  const ids: string[] = [];
  for (let i = 0; i < 40; i++) {
    const r = await svc.rest("POST", "/v1/machines", {
      name: `behind-bastion-${i}`,
      host: fleet.addresses[0],
      port: fleet.port,
      username: "frtest",
      private_key: fleet.clientKey.privateKey,
      host_key_fingerprint: ed.fingerprint,
    });
    expect(r.status).toBe(201);
    ids.push(r.body.data.id);
  }
  const r = await svc.rest("POST", "/v1/commands/batch", { machine_ids: ids, command: "echo ok", max_concurrency: 40 });
  expect(r.status).toBe(200);
  const failures = Object.values(r.body.data as Record<string, { status: string; error: unknown }>).filter((c) => c.status !== "completed");
  expect(failures).toEqual([]);
  expect(r.body.meta).toMatchObject({ succeeded: 40, failed: 0, skipped: 0 });
}, 60_000);
