/** fleetrun.v1.MachineService: protobuf <-> domain mapping for the registry. */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  DeleteMachineResponseSchema,
  ListMachinesResponseSchema,
  MachineService,
  PageInfoSchema,
  TestErrorSchema,
  TestMachineResponseSchema,
  type CreateMachineRequest,
  type UpdateMachineRequest,
} from "../gen/fleetrun/v1/machine_pb.js";
import { visibleMachine } from "../exec/caller.ts";
import { InvalidArgumentError, NotFoundError, PermissionDeniedError } from "../exec/errors.ts";
import type { MachineInput, MachineRegistry } from "../exec/machine-registry.ts";
import type { MachineRecord } from "../exec/ports.ts";
import { allMachines, machineInScope, type Scope } from "../exec/scope.ts";
import { callerFrom } from "./auth.ts";
import { unary } from "./wrap.ts";
import { hostKeyPolicyFromProto, hostKeyPolicyToProto, machineToProto } from "./mapping.ts";

/** Parses `key=value,key2=value2`. */
export function parseLabelSelector(s: string, field: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of s.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    if (eq <= 0) throw new InvalidArgumentError(field, "must look like key=value,key2=value2");
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

function requireId(id: string): string {
  if (id === "") throw new InvalidArgumentError("id", "is required");
  return id;
}

/** The connection fields create and update share (unset ones stay undefined). */
function machineInput(req: CreateMachineRequest | UpdateMachineRequest): MachineInput {
  return {
    name: req.name,
    host: req.host,
    port: req.port,
    username: req.username,
    privateKey: req.privateKey,
    passphrase: req.passphrase,
    password: req.password,
    hostKeyFingerprint: req.hostKeyFingerprint,
    hostKeyAlgorithm: req.hostKeyAlgorithm,
    hostKeyPolicy: hostKeyPolicyFromProto(req.hostKeyPolicy),
    labels: req.labels,
  };
}

/** A token whose scope names machines must leave what it writes within them. */
function assertStaysInScope(scope: Scope, m: Pick<MachineRecord, "id" | "labels">): void {
  if (!machineInScope(scope, m)) {
    throw new PermissionDeniedError("labels: the machine would be outside this token's scope (scope.machine_ids, scope.machine_selector)");
  }
}

export function machineServiceImpl(registry: MachineRegistry, onInternal: (e: unknown) => void): ServiceImpl<typeof MachineService> {
  /** The machine when the caller's scope reaches it; not found (as an unknown id) otherwise. */
  const visible = async (id: string, scope: Scope): Promise<MachineRecord> => {
    requireId(id);
    if (allMachines(scope)) return registry.get(id);
    const m = await registry.get(id).catch((e: unknown) => {
      if (e instanceof NotFoundError) return null;
      throw e;
    });
    return visibleMachine(scope, m, id, "id");
  };

  return {
    createMachine: unary(async (req, ctx) => {
      const scope = callerFrom(ctx.values).scope;
      assertStaysInScope(scope, { id: "", labels: req.labels });
      const m = await registry.create(machineInput(req));
      return machineToProto(m);
    }, onInternal),

    listMachines: unary(async (req, ctx) => {
      const limit = req.limit ?? 100;
      const offset = req.offset ?? 0;
      const labels = req.labelSelector ? parseLabelSelector(req.labelSelector, "label_selector") : null;
      const scope = callerFrom(ctx.values).scope;
      const page = await registry.list(limit, offset, labels, allMachines(scope) ? undefined : (m) => machineInScope(scope, m));
      return create(ListMachinesResponseSchema, {
        data: page.items.map(machineToProto),
        meta: create(PageInfoSchema, { total: BigInt(page.total), limit, offset }),
      });
    }, onInternal),

    getMachine: unary(async (req, ctx) => machineToProto(await visible(req.id, callerFrom(ctx.values).scope)), onInternal),

    updateMachine: unary(async (req, ctx) => {
      const scope = callerFrom(ctx.values).scope;
      await visible(req.id, scope);
      const m = await registry.update(
        req.id,
        {
          ...machineInput(req),
          clearLabels: req.clearLabels,
          mergeLabels: req.mergeLabels,
          removeLabels: req.removeLabels,
        },
        (next) => assertStaysInScope(scope, next),
      );
      return machineToProto(m);
    }, onInternal),

    deleteMachine: unary(async (req, ctx) => {
      const caller = callerFrom(ctx.values);
      await visible(req.id, caller.scope);
      await registry.delete(req.id, req.force, caller.name);
      return create(DeleteMachineResponseSchema, { deleted: true });
    }, onInternal),

    testMachine: unary(async (req, ctx) => {
      await visible(req.id, callerFrom(ctx.values).scope);
      const r = await registry.test(req.id);
      return create(TestMachineResponseSchema, {
        ok: r.ok,
        ...(r.latencyMs !== null ? { latency: BigInt(r.latencyMs) } : {}),
        ...(r.error ? { error: create(TestErrorSchema, r.error) } : {}),
        ...(r.hostKeyFingerprint ? { hostKeyFingerprint: r.hostKeyFingerprint } : {}),
        ...(r.hostKeyAlgorithm ? { hostKeyAlgorithm: r.hostKeyAlgorithm } : {}),
        hostKeyPolicy: hostKeyPolicyToProto(r.hostKeyPolicy),
        hostKeyPinned: r.hostKeyPinned,
      });
    }, onInternal),
  };
}
