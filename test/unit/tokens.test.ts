/**
 * The token registry against an in-memory store and a fake clock: secrets
 * (prefix, only the digest stored), verification cache with revocation and
 * expiry at once, tokens creating tokens; and the per-token limiter (bucket,
 * bounded memory, command and stream counts).
 */
import { describe, expect, it } from "vitest";
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, PermissionDeniedError, ResourceExhaustedError } from "../../src/exec/errors.ts";
import { FULL_SCOPE, type Scope } from "../../src/exec/scope.ts";
import { TokenLimiter } from "../../src/exec/token-limits.ts";
import { digest, NO_OVERRIDES, TokenRegistry, type Principal, type TokenLimitOverrides, type TokenRecord, type TokenStore } from "../../src/exec/tokens.ts";

class MemoryTokenStore implements TokenStore {
  rows = new Map<string, TokenRecord>();
  reads = 0;
  async insert(t: TokenRecord) {
    for (const r of this.rows.values()) if (r.name === t.name && r.revokedAt === null) throw new AlreadyExistsError("taken", "name");
    this.rows.set(t.id, { ...t });
  }
  async get(id: string) {
    return this.rows.get(id) ?? null;
  }
  async findByHash(h: string) {
    this.reads++;
    return [...this.rows.values()].find((r) => r.secretHash === h) ?? null;
  }
  async list(limit: number, offset: number) {
    const all = await this.listAll();
    return { items: all.slice(offset, offset + limit), total: all.length };
  }
  async listAll() {
    return [...this.rows.values()].reverse();
  }
  async revoke(id: string, at: Date) {
    const r = this.rows.get(id);
    if (!r || r.revokedAt) return false;
    r.revokedAt = at;
    return true;
  }
  async touch(id: string, at: Date) {
    const r = this.rows.get(id);
    if (r) r.lastUsedAt = at;
  }
  async getBootstrap() {
    return [...this.rows.values()].find((r) => r.bootstrap && !r.revokedAt) ?? null;
  }
  async setSecretHash(id: string, h: string) {
    this.rows.get(id)!.secretHash = h;
  }
}

const ADMIN_SECRET = "bootstrap-secret-0123456789";
const readOnly: Scope = { actions: ["read"], machineIds: [], machineLabels: { env: "staging" }, runAs: [""] };

async function setup() {
  let now = Date.UTC(2026, 0, 1);
  const store = new MemoryTokenStore();
  const reg = new TokenRegistry(store, { cacheMs: 5000, now: () => now });
  await reg.ensureBootstrap(ADMIN_SECRET);
  const admin = (await reg.verify(ADMIN_SECRET))!;
  return { store, reg, admin, advance: (ms: number) => (now += ms), now: () => now };
}

describe("TokenRegistry", () => {
  it("stores the bootstrap token as a digest, and replaces it when the secret changes", async () => {
    const { store, reg, admin } = await setup();
    expect(admin).toMatchObject({ name: "admin", bootstrap: true, scope: FULL_SCOPE });
    const row = [...store.rows.values()][0]!;
    expect(row.secretHash).toBe(digest(ADMIN_SECRET).toString("hex"));
    expect(JSON.stringify(row)).not.toContain(ADMIN_SECRET);
    await reg.ensureBootstrap("another-secret-0123456789");
    expect(store.rows.size).toBe(1);
    expect(await reg.verify(ADMIN_SECRET)).toBeNull();
    expect((await reg.verify("another-secret-0123456789"))?.tokenId).toBe(row.id);
  });

  it("creates a token whose secret is recognisable, returned once, stored as a digest", async () => {
    const { store, reg, admin } = await setup();
    const { record, secret } = await reg.create({ name: "ci", scope: readOnly, expiresAt: null, limits: NO_OVERRIDES }, admin);
    expect(secret).toMatch(new RegExp(`^frt_${record.id.slice(4)}_[A-Za-z0-9_-]{43}$`));
    expect(JSON.stringify([...store.rows.values()])).not.toContain(secret.slice(-43));
    expect(await reg.verify(secret)).toMatchObject({ name: "ci", tokenId: record.id, bootstrap: false });
    expect(await reg.verify(secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A"))).toBeNull();
  });

  it("caches verified tokens, but a revocation takes effect at once", async () => {
    const { store, reg, admin } = await setup();
    const { record, secret } = await reg.create({ name: "ci", scope: readOnly, expiresAt: null, limits: NO_OVERRIDES }, admin);
    await reg.verify(secret);
    const reads = store.reads;
    await reg.verify(secret);
    expect(store.reads).toBe(reads);
    await reg.revoke(record.id, admin);
    expect(await reg.verify(secret)).toBeNull();
    // Repeating a revocation is fine.
    await reg.revoke(record.id, admin);
  });

  it("an expired token fails at once, cached or not", async () => {
    const { reg, admin, advance, now } = await setup();
    const { secret } = await reg.create({ name: "ci", scope: readOnly, expiresAt: new Date(now() + 60_000), limits: NO_OVERRIDES }, admin);
    expect(await reg.verify(secret)).not.toBeNull();
    advance(60_000);
    expect(await reg.verify(secret)).toBeNull();
  });

  it("a token cannot create one with more power, a later expiry or higher limits", async () => {
    const { reg, admin, now } = await setup();
    const mgr: Scope = { actions: ["read", "admin"], machineIds: [], machineLabels: { env: "staging" }, runAs: [""] };
    const { secret } = await reg.create(
      { name: "mgr", scope: mgr, expiresAt: new Date(now() + 3_600_000), limits: { ...NO_OVERRIDES, requestsPerSecond: 5 } },
      admin,
    );
    const p = (await reg.verify(secret))!;
    const child = (s: Partial<Scope>, expiresAt: Date | null = new Date(now() + 1000), limits: TokenLimitOverrides = { ...NO_OVERRIDES, requestsPerSecond: 5 }) =>
      reg.create({ name: `c${Math.random().toString(36).slice(2, 8)}`, scope: { ...readOnly, ...s }, expiresAt, limits }, p);
    await expect(child({})).resolves.toBeDefined();
    await expect(child({ actions: ["execute"] })).rejects.toBeInstanceOf(PermissionDeniedError);
    await expect(child({ machineLabels: null })).rejects.toBeInstanceOf(PermissionDeniedError);
    await expect(child({ runAs: null })).rejects.toBeInstanceOf(PermissionDeniedError);
    await expect(child({}, null)).rejects.toThrow(/expire/);
    await expect(child({}, undefined, NO_OVERRIDES)).rejects.toThrow(/limits\.requestsPerSecond/);
    // It sees and manages only tokens within its scope: not the admin token.
    await expect(reg.get(admin.tokenId, p)).rejects.toBeInstanceOf(NotFoundError);
    expect((await reg.list(p, 100, 0)).items.map((t) => t.name)).not.toContain("admin");
  });

  it("names are unique among active tokens; admin and system are reserved; the bootstrap token is not revocable", async () => {
    const { reg, admin } = await setup();
    const make = (name: string) => reg.create({ name, scope: readOnly, expiresAt: null, limits: NO_OVERRIDES }, admin);
    const first = await make("ci");
    await expect(make("ci")).rejects.toBeInstanceOf(AlreadyExistsError);
    await reg.revoke(first.record.id, admin);
    await expect(make("ci")).resolves.toBeDefined();
    await expect(make("admin")).rejects.toBeInstanceOf(AlreadyExistsError);
    await expect(make("system")).rejects.toBeInstanceOf(AlreadyExistsError);
    await expect(make("bad name")).rejects.toThrow(/^name:/);
    await expect(reg.revoke(admin.tokenId, admin)).rejects.toBeInstanceOf(FailedPreconditionError);
  });
});

describe("TokenLimiter", () => {
  const p = (id: string, limits = NO_OVERRIDES): Principal => ({ name: id, tokenId: id, scope: FULL_SCOPE, limits, bootstrap: false, expiresAt: null });
  const limiter = (now: () => number, maxTracked?: number) =>
    new TokenLimiter({
      defaults: { maxConcurrentCommands: 2, requestsPerSecond: 2, burst: 3, maxStreams: 1 },
      settings: { maxConcurrentCommands: "C", requestsPerSecond: "R", burst: "B", maxStreams: "S" },
      now,
      ...(maxTracked !== undefined ? { maxTracked } : {}),
    });

  it("allows the burst, then refuses with the seconds until the next request would pass, then refills", () => {
    let t = 0;
    const l = limiter(() => t);
    for (let i = 0; i < 3; i++) l.request(p("a"));
    let err: unknown;
    try {
      l.request(p("a"));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as ResourceExhaustedError).retryAfterSeconds).toBe(1);
    expect((err as Error).message).toMatch(/at most 2 per second/);
    // Another token has its own bucket.
    l.request(p("b"));
    t += 500;
    l.request(p("a"));
    expect(() => l.request(p("a"))).toThrow(ResourceExhaustedError);
    // A token's own limits win over the defaults; the bootstrap token is exempt.
    for (let i = 0; i < 10; i++) l.request(p("c", { ...NO_OVERRIDES, burst: 10 }));
    for (let i = 0; i < 100; i++) l.request({ ...p("admin"), bootstrap: true });
  });

  it("keeps memory bounded: full buckets are dropped, and the map is capped", () => {
    let t = 0;
    const l = limiter(() => t, 100);
    for (let i = 0; i < 1000; i++) l.request(p(`t${i}`));
    expect(l.tracked).toBeLessThanOrEqual(100);
    t += 10_000;
    l.request(p("late"));
    expect(l.tracked).toBe(1);
  });

  it("counts commands and streams per token until released", () => {
    const l = limiter(() => 0);
    const r1 = l.holdCommands(p("a"), 2);
    expect(() => l.holdCommands(p("a"), 1)).toThrow(/too many commands of token "a": 2 queued or running, at most 2/);
    l.holdCommands(p("b"), 1);
    r1();
    r1();
    l.holdCommands(p("a"), 2);
    const s = l.holdStream(p("a"));
    expect(() => l.holdStream(p("a"))).toThrow(ResourceExhaustedError);
    s();
    l.holdStream(p("a"));
  });
});
