/**
 * The service's side of host key checking: trust on first use through the
 * machine store's compare-and-set, and the audit events of the checks the
 * SSH transport makes (actor "system"; the fingerprint, never a credential,
 * in `detail`).
 */
import { NO_AUDIT, type AuditSink } from "./audit-port.ts";
import type { HostKeyTrust, MachineStore } from "./ports.ts";

export function createHostKeyTrust(machines: MachineStore, audit: AuditSink = NO_AUDIT): HostKeyTrust {
  return {
    async pinFirstKey(machineId, fingerprint, keyType) {
      const r = await machines.pinHostKey(machineId, fingerprint, keyType);
      if (r.pinned) {
        audit.record({
          actor: "system",
          action: "machine.host_key_pinned",
          outcome: "ok",
          machineId,
          detail: `${keyType} ${fingerprint} recorded on first use; the machine is now pinned to it`,
        });
      }
      return r.fingerprint;
    },
    mismatch(machineId, expected, presented) {
      audit.record({
        actor: "system",
        action: "machine.host_key_mismatch",
        outcome: "denied",
        machineId,
        detail: `the server presented ${presented.keyType} ${presented.fingerprint}, pinned is ${expected}: refused before authentication`,
      });
    },
    acceptedInsecure(machineId, presented) {
      audit.record({
        actor: "system",
        action: "machine.host_key_accepted_insecure",
        outcome: "ok",
        machineId,
        detail: `${presented.keyType} ${presented.fingerprint} accepted unchecked (host_key_policy insecure_accept_any)`,
      });
    },
  };
}
