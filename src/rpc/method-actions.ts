/**
 * The action each RPC needs from the caller's token scope, keyed by
 * `<service type name>/<method name>`. Deny by default: a method of an
 * authenticated service that is not listed here needs `admin` (so a new
 * admin service, e.g. the audit trail, is admin-only without an entry).
 */
import type { Action } from "../exec/scope.ts";

export const METHOD_ACTIONS: Readonly<Record<string, Action>> = {
  "fleetrun.v1.CommandService/Execute": "execute",
  "fleetrun.v1.CommandService/StartCommand": "execute",
  "fleetrun.v1.CommandService/ExecuteAsync": "execute",
  "fleetrun.v1.CommandService/Batch": "execute",
  "fleetrun.v1.CommandService/BatchStream": "execute",
  "fleetrun.v1.CommandService/StartBatch": "execute",
  "fleetrun.v1.CommandService/GetCommand": "read",
  "fleetrun.v1.CommandService/WatchCommand": "read",
  "fleetrun.v1.CommandService/ListMachineCommands": "read",
  "fleetrun.v1.CommandService/GetBatch": "read",
  "fleetrun.v1.CommandService/CancelCommand": "cancel",
  "fleetrun.v1.CommandService/CancelBatch": "cancel",
  "fleetrun.v1.MachineService/ListMachines": "read",
  "fleetrun.v1.MachineService/GetMachine": "read",
  // Machine writes and connection tests, tokens (and any unlisted method): admin.
};

export function actionFor(service: string, method: string): Action {
  return METHOD_ACTIONS[`${service}/${method}`] ?? "admin";
}
