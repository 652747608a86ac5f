/**
 * The one reading of a request's query string the REST routes use (and so
 * the one the stream's `access_token` is taken from): WHATWG `URLSearchParams`
 * over everything after the first `?`. log-serializers.ts redacts a superset.
 * Repeated keys are collected in order.
 */
export function queryParams(url: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const q = url.indexOf("?");
  if (q === -1) return out;
  for (const [k, v] of new URLSearchParams(url.slice(q + 1))) {
    const list = out.get(k);
    if (list === undefined) out.set(k, [v]);
    else list.push(v);
  }
  return out;
}
