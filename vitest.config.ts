import { defineConfig } from "vitest/config";

// `inject("sshFleet")` is typed by the ProvidedContext augmentation in
// test/fixtures/global-setup.ts.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/fixtures/global-setup.ts"],
    // Test files spawn processes and hold sockets: separate processes are safest.
    pool: "forks",
    // 2 cores: more workers only add contention with the sshd processes under test.
    maxWorkers: 2,
    // Integration tests talk to real sshd and PostgreSQL.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
  },
});
