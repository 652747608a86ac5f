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
import { InvalidArgumentError } from "../exec/errors.ts";
import type { MachineInput, MachineRegistry } from "../exec/machine-registry.ts";
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

export function machineServiceImpl(registry: MachineRegistry, onInternal: (e: unknown) => void): ServiceImpl<typeof MachineService> {
  return {
    createMachine: unary(async (req) => {
      const m = await registry.create(machineInput(req));
      return machineToProto(m);
    }, onInternal),

    listMachines: unary(async (req) => {
      const limit = req.limit ?? 100;
      const offset = req.offset ?? 0;
      const labels = req.labelSelector ? parseLabelSelector(req.labelSelector, "label_selector") : null;
      const page = await registry.list(limit, offset, labels);
      return create(ListMachinesResponseSchema, {
        data: page.items.map(machineToProto),
        meta: create(PageInfoSchema, { total: BigInt(page.total), limit, offset }),
      });
    }, onInternal),

    getMachine: unary(async (req) => machineToProto(await registry.get(requireId(req.id))), onInternal),

    updateMachine: unary(async (req) => {
      const m = await registry.update(requireId(req.id), {
        ...machineInput(req),
        clearLabels: req.clearLabels,
        mergeLabels: req.mergeLabels,
        removeLabels: req.removeLabels,
      });
      return machineToProto(m);
    }, onInternal),

    deleteMachine: unary(async (req) => {
      await registry.delete(requireId(req.id), req.force);
      return create(DeleteMachineResponseSchema, { deleted: true });
    }, onInternal),

    testMachine: unary(async (req) => {
      const r = await registry.test(requireId(req.id));
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
