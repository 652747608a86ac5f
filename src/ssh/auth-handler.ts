/**
 * How a connection authenticates once the host key was verified (ssh2 calls
 * the handler only after that).
 */
import type { AnyAuthMethod, AuthHandlerMiddleware, ParsedKey } from "ssh2";
import type { MachineTarget } from "../exec/ports.ts";

/**
 * Offers each credential once per connection: the private key, then the
 * password. Without a key the first request is `none` (no credential), which
 * makes the server list the methods it takes; the password then goes as
 * `password` when listed, else as the answer to the first prompt of one
 * keyboard-interactive exchange (later prompts get empty answers), never both
 * ways. ssh2 calls this only after the host key was verified.
 */
export function authHandler(
  target: MachineTarget,
  key: ParsedKey | null,
): AuthHandlerMiddleware {
  const username = target.username;
  const password = target.password;
  let keyOffered = false;
  let asked = false;
  let passwordSent = false;
  return (authsLeft, _partialSuccess, next) => {
    // ssh2 passes null before the first request, whatever the typings say.
    const methodsLeft = authsLeft as string[] | null;
    const allowed = (m: string): boolean => methodsLeft === null || methodsLeft.includes(m);
    let method: AnyAuthMethod | false = false;
    if (key && !keyOffered && allowed("publickey")) {
      keyOffered = true;
      // ssh2 accepts a parsed key here although the typings say string | Buffer.
      method = { type: "publickey", username, key: key as unknown as string };
    } else if (password && !passwordSent && methodsLeft === null) {
      asked = true;
      method = { type: "none", username };
    } else if (password && !passwordSent && methodsLeft !== null && methodsLeft.includes("password")) {
      passwordSent = true;
      method = { type: "password", username, password };
    } else if (password && !passwordSent && methodsLeft !== null && methodsLeft.includes("keyboard-interactive")) {
      passwordSent = true;
      let answered = false;
      method = {
        type: "keyboard-interactive",
        username,
        prompt: (_name, _instructions, _lang, prompts, finish) => {
          const answers = prompts.map((_, i) => (!answered && i === 0 ? password : ""));
          if (prompts.length > 0) answered = true;
          finish(answers);
        },
      };
    } else if (!key && !password && !asked) {
      asked = true;
      method = { type: "none", username };
    }
    // `false` ends authentication (ssh2 accepts it; the typings do not say so).
    next(method as AnyAuthMethod);
  };
}
