/**
 * The keyset cursor of a history page: the (created_at, id) of the page's
 * last row, as base64url JSON. Opaque to callers.
 */
export interface HistoryCursor {
  /** Epoch milliseconds. */
  createdAt: number;
  id: string;
}

export function encodeHistoryCursor(createdAt: Date, id: string): string {
  return Buffer.from(JSON.stringify([createdAt.getTime(), id]), "utf8").toString("base64url");
}

/** The decoded cursor, or null when `text` is not one this module wrote. */
export function decodeHistoryCursor(text: string): HistoryCursor | null {
  if (!/^[A-Za-z0-9_-]+$/.test(text)) return null;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!Array.isArray(value) || value.length !== 2) return null;
  const [createdAt, id] = value as unknown[];
  if (typeof createdAt !== "number" || !Number.isSafeInteger(createdAt)) return null;
  if (typeof id !== "string" || id.length === 0) return null;
  return { createdAt, id };
}
