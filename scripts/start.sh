#!/usr/bin/env bash
# Start fleetrun on its embedded defaults: installs the dependencies and Node 24
# when needed, then serves on port 8080 (PORT overrides) with a SQLite database
# under ./data (FLEETRUN_DATA_DIR overrides) and the built-in machine mach_local
# (FLEETRUN_LOCAL_MACHINE=0 turns it off).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh --app-only
export FLEETRUN_LOCAL_MACHINE="${FLEETRUN_LOCAL_MACHINE:-1}"
exec npm start --silent
