/**
 * The fleetrun TypeScript client: `import { createFleetrunClient } from "fleetrun/client"`.
 */
export { createFleetrunClient } from "./create-fleetrun-client.ts";
export type { FleetrunClient, FleetrunClientOptions, FleetrunProtocol } from "./create-fleetrun-client.ts";
export { CommandStream } from "./command-stream.ts";
export type { FollowOptions, ResumeOptions } from "./command-stream.ts";
export { Code, ConnectError } from "@connectrpc/connect";
export type { CallOptions, Client, Interceptor, Transport } from "@connectrpc/connect";
export { CommandService, CommandStatus, OutputStream } from "../gen/fleetrun/v1/command_pb.js";
export type { BatchEvent, BatchRequest, Command, CommandEvent, ExecuteRequest, HistoryItem, OutputChunk } from "../gen/fleetrun/v1/command_pb.js";
export { MachineService } from "../gen/fleetrun/v1/machine_pb.js";
export type { Machine } from "../gen/fleetrun/v1/machine_pb.js";
export { TokenService } from "../gen/fleetrun/v1/token_pb.js";
export type { CreatedToken, Token, TokenLimits, TokenScope } from "../gen/fleetrun/v1/token_pb.js";
