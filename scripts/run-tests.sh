#!/usr/bin/env bash
# `npm test`: the suite, then the load test on its own. The load test saturates
# both cores for a while (300 commands with output on loopback machines): beside
# other test files it would slow their timing-sensitive steps, and they would
# distort its measurements. With arguments, vitest runs just what they select.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$#" -gt 0 ]; then
  exec vitest run "$@"
fi
vitest run --exclude test/integration/load.test.ts
exec vitest run test/integration/load.test.ts
