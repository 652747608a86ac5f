#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: prepares it (scripts/bootstrap.sh),
# then runs vitest. Extra arguments go to vitest, e.g.
#   bash scripts/test.sh test/integration/fixture-sshd.test.ts
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
npm run --silent typecheck
exec npm test -- "$@"
