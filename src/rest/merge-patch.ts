/**
 * JSON Merge Patch (RFC 7396) bodies, `Content-Type: application/merge-patch+json`,
 * turned into the request message's own fields, by naming convention:
 *
 * - a map field `F` given as an object merges into the resource's map: its
 *   keys with values go to the map field `merge_F`, its keys with `null` to
 *   the repeated string field `remove_F` (both must exist on the request);
 * - `"F": null` removes the whole field: a map or repeated field through the
 *   bool field `clear_F`, an `optional string` by sending it empty (which the
 *   services read as "remove");
 * - everything else is as in a plain JSON body.
 *
 * A `null` that the request cannot express is a 400 naming the field, never
 * silently ignored.
 */
import { ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { RestInputError } from "./json-codec.ts";

// FeatureSet_FieldPresence.IMPLICIT
const IMPLICIT = 2;

/** True for `application/merge-patch+json` (parameters ignored). */
export function isMergePatchMediaType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  return (contentType.split(";")[0] ?? "").trim().toLowerCase() === "application/merge-patch+json";
}

/** Rewrites a merge patch body into the JSON of `input`'s fields (see the module comment). */
export function mergePatchToRequest(input: DescMessage, body: Record<string, unknown>): Record<string, unknown> {
  const byName = new Map<string, DescField>(input.fields.map((f) => [f.name, f]));
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(body)) {
    const field = byName.get(key);
    if (field === undefined) {
      out[key] = value; // the codec rejects it, naming it
      continue;
    }
    if (value === null) {
      const clear = byName.get(`clear_${key}`);
      if ((field.fieldKind === "map" || field.fieldKind === "list") && clear?.fieldKind === "scalar") {
        out[clear.name] = true;
      } else if (field.fieldKind === "scalar" && field.presence !== IMPLICIT && field.scalar === ScalarType.STRING) {
        out[key] = "";
      } else {
        throw new RestInputError(key, "cannot be removed (null) in a merge patch");
      }
      continue;
    }
    const merge = byName.get(`merge_${key}`);
    const remove = byName.get(`remove_${key}`);
    if (field.fieldKind === "map" && merge?.fieldKind === "map" && remove?.fieldKind === "list" && typeof value === "object" && !Array.isArray(value)) {
      const set: Record<string, unknown> = {};
      const drop: string[] = [];
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (v === null) drop.push(k);
        else set[k] = v;
      }
      if (Object.keys(set).length > 0) out[merge.name] = set;
      if (drop.length > 0) out[remove.name] = drop;
      continue;
    }
    out[key] = value;
  }
  return out;
}
