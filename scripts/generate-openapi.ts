/**
 * Writes openapi/fleetrun.openapi.json from proto/: builds the protos with buf
 * (offline, with source info so comments become descriptions) and renders
 * every `google.api.http` binding of the fleetrun services.
 *
 *   npm run generate:openapi            write the file
 *   node scripts/generate-openapi.ts -  print it
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import type { DescEnum, DescField, DescFile, DescMessage, DescMethod, DescService } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { restBindings } from "../src/rest/http-rule.ts";
import { buildOpenApiDocument } from "../src/rest/openapi.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const OPENAPI_FILE = path.join(ROOT, "openapi/fleetrun.openapi.json");

/** The document as the committed file holds it (2-space JSON, trailing newline). */
export function generateOpenApiText(root = ROOT): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-openapi-"));
  let bytes: Buffer;
  try {
    const out = path.join(dir, "image.binpb");
    execFileSync(path.join(root, "node_modules/.bin/buf"), ["build", "proto", "--as-file-descriptor-set", "-o", out], { cwd: root, stdio: "pipe" });
    bytes = fs.readFileSync(out);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes));
  const services: DescService[] = [];
  for (const file of registry.files) {
    if (!file.proto.package.startsWith("fleetrun.")) continue;
    for (const s of file.services) if (restBindings(s).length > 0) services.push(s);
  }
  services.sort((a, b) => (a.typeName < b.typeName ? -1 : 1));
  const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { version: string; description: string };
  const comments = commentIndex(registry.files);
  const doc = buildOpenApiDocument(services, {
    title: "fleetrun",
    version: pkg.version,
    description:
      `${pkg.description}. Generated from proto/ by \`npm run generate:openapi\`; served at \`GET /openapi.json\`. ` +
      "Every call needs `Authorization: Bearer <token>`.",
    comments: (d) => comments.get(d.proto),
  });
  return `${JSON.stringify(doc, null, 2)}\n`;
}

type Described = DescService | DescMethod | DescMessage | DescField | DescEnum;

/** Leading comments by descriptor proto object, from each file's source code info. */
function commentIndex(files: Iterable<DescFile>): Map<object, string> {
  const out = new Map<object, string>();
  for (const file of files) {
    const byPath = new Map<string, string>();
    for (const loc of file.proto.sourceCodeInfo?.location ?? []) {
      const text = loc.leadingComments.trim();
      if (text !== "") byPath.set(loc.path.join("."), text.split("\n").map((l) => l.trim()).join("\n"));
    }
    const put = (d: Described, p: number[]): void => {
      const text = byPath.get(p.join("."));
      if (text !== undefined) out.set(d.proto, text);
    };
    const walkMessage = (m: DescMessage, p: number[]): void => {
      put(m, p);
      m.fields.forEach((f) => put(f, [...p, 2, m.proto.field.indexOf(f.proto)]));
      m.nestedMessages.forEach((n) => walkMessage(n, [...p, 3, m.proto.nestedType.indexOf(n.proto)]));
      m.nestedEnums.forEach((e) => put(e, [...p, 4, m.proto.enumType.indexOf(e.proto)]));
    };
    file.messages.forEach((m, i) => walkMessage(m, [4, i]));
    file.enums.forEach((e, i) => put(e, [5, i]));
    file.services.forEach((s, i) => {
      put(s, [6, i]);
      s.methods.forEach((m, j) => put(m, [6, i, 2, j]));
    });
  }
  return out;
}

if (import.meta.main) {
  const text = generateOpenApiText();
  if (process.argv[2] === "-") process.stdout.write(text);
  else {
    fs.mkdirSync(path.dirname(OPENAPI_FILE), { recursive: true });
    fs.writeFileSync(OPENAPI_FILE, text);
    console.log(`wrote ${path.relative(process.cwd(), OPENAPI_FILE)}`);
  }
}
