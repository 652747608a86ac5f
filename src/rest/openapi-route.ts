/**
 * `GET /openapi.json`: the committed OpenAPI document
 * (openapi/fleetrun.openapi.json, generated from proto/ by
 * `npm run generate:openapi`). No token needed: it describes the API, not data.
 */
import fs from "node:fs";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";

/** Where the generated document lives in the repository (and in the image). */
export const openApiDocumentFile = fileURLToPath(new URL("../../openapi/fleetrun.openapi.json", import.meta.url));

/** Serves the document at `/openapi.json`; read once, at registration. */
export function registerOpenApiRoute(app: FastifyInstance, file = openApiDocumentFile): void {
  const body = fs.readFileSync(file);
  app.get("/openapi.json", async (_req, reply) => {
    return reply.type("application/json; charset=utf-8").header("cache-control", "no-cache").send(body);
  });
}
