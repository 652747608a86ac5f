#!/usr/bin/env bash
# Start fleetrun on its embedded defaults: installs the dependencies and Node 24
# when needed (scripts/bootstrap.sh --app-only: one line per step), then serves on
# port 8080 (PORT or --port overrides) with a SQLite database under ./data
# (FLEETRUN_DATA_DIR overrides) and the built-in machine mach_local
# (FLEETRUN_LOCAL_MACHINE=0 turns it off). Arguments go to the service, e.g.
#   bash scripts/start.sh --port 8081
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh --app-only
export FLEETRUN_LOCAL_MACHINE="${FLEETRUN_LOCAL_MACHINE:-1}"
printf 'start: starting fleetrun (seconds; up to a minute on a busy machine)\n' >&2
exec node_modules/.bin/node src/main.ts "$@"
