/**
 * Logged URLs never carry a token the stream would accept: whatever shape a
 * URL takes, when the stream's own query reading finds an `access_token`,
 * the redacted URL holds none of its value. Checked over the shapes clients
 * and attackers use and over many generated ones.
 */
import { describe, expect, it } from "vitest";
import { redactUrl } from "../../src/rest/log-serializers.ts";
import { queryParams } from "../../src/rest/query-params.ts";
import { addressKey } from "../../src/server/connection-guards.ts";

const TOKEN = "frt_S3cr3tT0k3nValue_xyz";

describe("redactUrl", () => {
  it.each([
    ["/s??access_token=T", "/s??access_token=[REDACTED]"],
    ["/s?#&access_token=T", "/s?#&access_token=[REDACTED]"],
    ["/s#?access_token=T", "/s#?access_token=[REDACTED]"],
    ["/s?a=1&access_token=T", "/s?a=1&access_token=[REDACTED]"],
    ["/s?access%5Ftoken=T", "/s?access%5Ftoken=[REDACTED]"],
    ["/s?access%255Ftoken=T", "/s?access%255Ftoken=[REDACTED]"],
    ["/s?Access_Token=T", "/s?access_token=[REDACTED]"],
    ["/s?access+token=T", "/s?access_token=[REDACTED]"],
    ["/s?access_token=A&access_token=B", "/s?access_token=[REDACTED]&access_token=[REDACTED]"],
    ["/s?access_token=T;x&b=2", "/s?access_token=[REDACTED]&b=2"],
    ["/s?a=1&b=?access_token=T&c=3", "/s?a=1&[REDACTED]"],
    ["/s?access_token%3DT", "/s?access_token=[REDACTED]"],
    ["/v1/x;access_token=T/stream?o=1", "/v1/[REDACTED]"],
    ["/v1/commands?machine_id=m&limit=5", "/v1/commands?machine_id=m&limit=5"],
    ["/v1/commands/c/stream", "/v1/commands/c/stream"],
  ])("%s → %s", (url, redacted) => {
    expect(redactUrl(url)).toBe(redacted);
  });

  it("hides every token the stream's query reading would take, over 20,000 generated URLs", () => {
    const keys = ["access_token", "?access_token", "??access_token", "#access_token", "access%5Ftoken", "access%5ftoken", "%61ccess_token", "access_token%00", "a", "offset", "", "?", "#"];
    const seps = ["&", "&&", "?", "#", "?#&", "#&", ";", "=", "&?"];
    const values = [TOKEN, encodeURIComponent(TOKEN), "1", "", `x${TOKEN}`, `${TOKEN}#frag`, `${TOKEN}?x`];
    let seed = 42;
    const pick = <T>(a: T[]): T => a[(seed = (seed * 1103515245 + 12345) % 2 ** 31) % a.length]!;
    let accepted = 0;
    for (let i = 0; i < 20_000; i++) {
      let url = `/v1/commands/c/stream${pick(["?", "??", "#?", "?#", ""])}`;
      const n = 1 + (i % 4);
      // Each part's value is its own (suffix `~k`), so a value found in the output came from that part.
      for (let k = 0; k < n; k++) url += (k > 0 ? pick(seps) : "") + pick(keys) + pick(["=", "=", ""]) + pick(values) + `~${k}`;
      const tokens = queryParams(url).get("access_token") ?? [];
      const redacted = redactUrl(url);
      for (const t of tokens) {
        if (t.length < 6) continue;
        accepted++;
        expect(redacted, url).not.toContain(t);
        expect(redacted, url).not.toContain(encodeURIComponent(t));
      }
    }
    expect(accepted).toBeGreaterThan(1_000);
  });
});

describe("addressKey", () => {
  it("counts IPv4 (also mapped) by address and IPv6 by /64", () => {
    expect(addressKey("127.0.0.2")).toBe("127.0.0.2");
    expect(addressKey("::ffff:10.1.2.3")).toBe("10.1.2.3");
    expect(addressKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:db8:1:2:bbbb:cccc:dddd:eeee")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(addressKey("::1")).toBe("0:0:0:0::/64");
    expect(addressKey("fe80::1%eth0")).toBe("fe80:0:0:0::/64");
  });
});
