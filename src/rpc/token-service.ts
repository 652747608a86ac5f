/** fleetrun.v1.TokenService: protobuf <-> domain mapping for the token registry. */
import { create } from "@bufbuild/protobuf";
import { ListValueSchema, timestampDate, timestampFromDate, ValueSchema, type ListValue, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { LabelSelectorSchema } from "../gen/fleetrun/v1/command_pb.js";
import { PageInfoSchema } from "../gen/fleetrun/v1/machine_pb.js";
import {
  CreatedTokenSchema,
  ListTokensResponseSchema,
  RevokeTokenResponseSchema,
  TokenLimitsSchema,
  TokenSchema,
  TokenScopeSchema,
  TokenService,
  type TokenLimits,
  type TokenScope,
} from "../gen/fleetrun/v1/token_pb.js";
import { InvalidArgumentError } from "../exec/errors.ts";
import { parseScope, type Scope } from "../exec/scope.ts";
import type { TokenLimitOverrides, TokenRecord, TokenRegistry } from "../exec/tokens.ts";
import { principalFrom } from "./auth.ts";
import { unary } from "./wrap.ts";

function runAsFrom(list: ListValue | undefined): unknown[] | null {
  if (list === undefined) return null;
  return list.values.map((v) => (v.kind.case === "stringValue" ? v.kind.value : v.kind.value ?? null));
}

function scopeToProto(s: Scope): TokenScope {
  return create(TokenScopeSchema, {
    actions: [...s.actions],
    machineIds: [...s.machineIds],
    ...(s.machineLabels !== null ? { machineSelector: create(LabelSelectorSchema, { labels: { ...s.machineLabels } }) } : {}),
    ...(s.runAs !== null
      ? { runAs: create(ListValueSchema, { values: s.runAs.map((u) => create(ValueSchema, { kind: { case: "stringValue", value: u } })) }) }
      : {}),
  });
}

/** An int limit: unset or 0 = the default; otherwise 1 to 1,000,000. */
function intLimit(v: number | undefined, field: string): number | null {
  if (v === undefined || v === 0) return null;
  if (!Number.isInteger(v) || v < 1 || v > 1_000_000) throw new InvalidArgumentError(field, "must be an integer from 1 to 1000000 (0 or unset: the service's default)");
  return v;
}

function limitsFrom(l: TokenLimits | undefined): TokenLimitOverrides {
  const rate = l?.requestsPerSecond;
  if (rate !== undefined && rate !== 0 && !(Number.isFinite(rate) && rate >= 0.001 && rate <= 1_000_000)) {
    throw new InvalidArgumentError("limits.requests_per_second", "must be a number from 0.001 to 1000000 (0 or unset: the service's default)");
  }
  return {
    maxConcurrentCommands: intLimit(l?.maxConcurrentCommands, "limits.max_concurrent_commands"),
    requestsPerSecond: rate === undefined || rate === 0 ? null : rate,
    burst: intLimit(l?.burst, "limits.burst"),
    maxStreams: intLimit(l?.maxStreams, "limits.max_streams"),
  };
}

function limitsToProto(l: TokenLimitOverrides): TokenLimits {
  return create(TokenLimitsSchema, {
    ...(l.maxConcurrentCommands !== null ? { maxConcurrentCommands: l.maxConcurrentCommands } : {}),
    ...(l.requestsPerSecond !== null ? { requestsPerSecond: l.requestsPerSecond } : {}),
    ...(l.burst !== null ? { burst: l.burst } : {}),
    ...(l.maxStreams !== null ? { maxStreams: l.maxStreams } : {}),
  });
}

function ts(d: Date | null): Timestamp | undefined {
  return d ? timestampFromDate(d) : undefined;
}

/** The fields Token and CreatedToken share. Never the secret or its hash. */
function tokenFields(t: TokenRecord) {
  return {
    id: t.id,
    name: t.name,
    scope: scopeToProto(t.scope),
    createdAt: ts(t.createdAt),
    expiresAt: ts(t.expiresAt),
    lastUsedAt: ts(t.lastUsedAt),
    revokedAt: ts(t.revokedAt),
    limits: limitsToProto(t.limits),
    ...(t.createdBy !== null ? { createdBy: t.createdBy } : {}),
  };
}

export function tokenServiceImpl(tokens: TokenRegistry, onInternal: (e: unknown) => void): ServiceImpl<typeof TokenService> {
  return {
    createToken: unary(async (req, ctx) => {
      const s = req.scope;
      const scope = parseScope(
        s === undefined
          ? null
          : {
              actions: s.actions,
              machineIds: s.machineIds,
              machineLabels: s.machineSelector ? s.machineSelector.labels : null,
              runAs: runAsFrom(s.runAs),
            },
      );
      const { record, secret } = await tokens.create(
        {
          name: req.name,
          scope,
          expiresAt: req.expiresAt ? timestampDate(req.expiresAt) : null,
          limits: limitsFrom(req.limits),
        },
        principalFrom(ctx.values),
      );
      return create(CreatedTokenSchema, { ...tokenFields(record), token: secret });
    }, onInternal),

    listTokens: unary(async (req, ctx) => {
      const limit = req.limit ?? 100;
      const offset = req.offset ?? 0;
      const page = await tokens.list(principalFrom(ctx.values), limit, offset);
      return create(ListTokensResponseSchema, {
        data: page.items.map((t) => create(TokenSchema, tokenFields(t))),
        meta: create(PageInfoSchema, { total: BigInt(page.total), limit, offset }),
      });
    }, onInternal),

    getToken: unary(async (req, ctx) => create(TokenSchema, tokenFields(await tokens.get(req.id, principalFrom(ctx.values)))), onInternal),

    revokeToken: unary(async (req, ctx) => {
      await tokens.revoke(req.id, principalFrom(ctx.values));
      return create(RevokeTokenResponseSchema, { revoked: true });
    }, onInternal),
  };
}
