/**
 * fleetrun.v1.AuditService: reading and verifying the audit trail, for
 * admins only. Mapping only; the log is the store's.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { AuditLog, AuditOutcome, AuditRecord } from "../exec/audit-port.ts";
import { InvalidArgumentError, PermissionDeniedError } from "../exec/errors.ts";
import { parseIsoInstant } from "../exec/iso-time.ts";
import {
  AuditEventSchema,
  AuditPageMetaSchema,
  AuditService,
  ListAuditEventsResponseSchema,
  VerifyAuditChainResponseSchema,
  type AuditEvent,
} from "../gen/fleetrun/v1/audit_pb.js";
import { allMachines } from "../exec/scope.ts";
import { principalOf } from "./command-service.ts";
import { unary } from "./wrap.ts";

const OUTCOMES: readonly AuditOutcome[] = ["ok", "denied", "error"];

/**
 * The auth interceptor has required `admin` (an unlisted method); the trail
 * names every machine and caller, so it also needs a scope over every machine.
 */
function requireAdmin(ctx: HandlerContext): void {
  if (!allMachines(principalOf(ctx).scope)) {
    throw new PermissionDeniedError("the audit trail needs an admin token whose scope covers every machine");
  }
}

function instant(field: string, v: string | undefined): Date | null {
  if (v === undefined) return null;
  const d = parseIsoInstant(v);
  if (d === null) {
    throw new InvalidArgumentError(field, "must be an ISO 8601 date or date-time like 2026-01-01 or 2026-01-01T15:45:00Z (UTC when no offset is given)");
  }
  return d;
}

function nonEmpty(field: string, v: string | undefined): string | null {
  if (v === undefined) return null;
  if (v === "") throw new InvalidArgumentError(field, "must not be empty (leave it out to match any)");
  return v;
}

export function auditRecordToProto(r: AuditRecord): AuditEvent {
  return create(AuditEventSchema, {
    seq: BigInt(r.seq),
    time: timestampFromDate(r.time),
    actor: r.actor,
    action: r.action,
    outcome: r.outcome,
    ...(r.machineId !== null ? { machineId: r.machineId } : {}),
    ...(r.commandId !== null ? { commandId: r.commandId } : {}),
    ...(r.batchId !== null ? { batchId: r.batchId } : {}),
    ...(r.clientAddress !== null ? { clientAddress: r.clientAddress } : {}),
    ...(r.detail !== null ? { detail: r.detail } : {}),
    ...(r.command !== null ? { command: r.command } : {}),
    prevHash: r.prevHash,
    hash: r.hash,
  });
}

export function auditServiceImpl(audit: AuditLog, onInternal: (e: unknown) => void): ServiceImpl<typeof AuditService> {
  return {
    listAuditEvents: unary(async (req, ctx) => {
      requireAdmin(ctx);
      const limit = req.limit ?? 50;
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidArgumentError("limit", "must be an integer from 1 to 1000");
      const outcome = nonEmpty("outcome", req.outcome);
      if (outcome !== null && !OUTCOMES.includes(outcome as AuditOutcome)) {
        throw new InvalidArgumentError("outcome", "must be one of ok, denied, error");
      }
      const page = await audit.list({
        actor: nonEmpty("actor", req.actor),
        action: nonEmpty("action", req.action),
        machineId: nonEmpty("machine_id", req.machineId),
        commandId: nonEmpty("command_id", req.commandId),
        outcome: outcome as AuditOutcome | null,
        since: instant("since", req.since),
        until: instant("until", req.until),
        limit,
        cursor: req.cursor ?? null,
      });
      return create(ListAuditEventsResponseSchema, {
        data: page.items.map(auditRecordToProto),
        meta: create(AuditPageMetaSchema, { limit, ...(page.nextCursor !== null ? { nextCursor: page.nextCursor } : {}) }),
      });
    }, onInternal),

    verifyAuditChain: unary(async (req, ctx) => {
      requireAdmin(ctx);
      if ((req.headSeq === undefined) !== (req.headHash === undefined)) {
        throw new InvalidArgumentError(req.headSeq === undefined ? "head_seq" : "head_hash", "head_seq and head_hash go together");
      }
      let expectHead: { seq: number; hash: string } | undefined;
      if (req.headSeq !== undefined && req.headHash !== undefined) {
        if (req.headSeq < 1n || req.headSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError("head_seq", "must be a positive sequence number");
        if (!/^[0-9a-f]{64}$/.test(req.headHash)) throw new InvalidArgumentError("head_hash", "must be 64 lowercase hex digits (a SHA-256)");
        expectHead = { seq: Number(req.headSeq), hash: req.headHash };
      }
      const r = await audit.verify(expectHead ? { expectHead } : {});
      if (r.ok) {
        return create(VerifyAuditChainResponseSchema, {
          ok: true,
          records: BigInt(r.records),
          ...(r.firstSeq !== null ? { firstSeq: BigInt(r.firstSeq) } : {}),
          ...(r.lastSeq !== null ? { lastSeq: BigInt(r.lastSeq) } : {}),
          ...(r.lastHash !== null ? { lastHash: r.lastHash } : {}),
        });
      }
      return create(VerifyAuditChainResponseSchema, { ok: false, records: BigInt(r.records), brokenSeq: BigInt(r.brokenSeq), reason: r.reason });
    }, onInternal),
  };
}
