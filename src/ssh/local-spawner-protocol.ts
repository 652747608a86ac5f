/**
 * Messages between the local transport and its spawner process
 * (`local-spawner-child.ts`), over Node's IPC channel (JSON).
 */

/** Service → spawner: start `/bin/sh -c command` in `cwd` with this environment. */
export interface SpawnRequest {
  t: "spawn";
  id: number;
  command: string;
  cwd: string;
  env: Record<string, string>;
}

/**
 * Spawner → service, in this order for one process: three `pipe` messages
 * (fd 0, 1, 2; each carries the pipe's socket as the message's handle),
 * then `exit`. Or a single `failed` when `/bin/sh` could not be started.
 */
export type SpawnerReply =
  | { t: "pipe"; id: number; fd: 0 | 1 | 2 }
  | { t: "exit"; id: number; code: number | null; signal: string | null }
  | { t: "failed"; id: number; message: string };
