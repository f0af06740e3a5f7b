#!/usr/bin/env bash
# Sets up the project (including the embedded model server) and runs the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" --local-model
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
