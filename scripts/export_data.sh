#!/usr/bin/env bash
# On a connected machine: pack the local datasets a config needs into one archive (see --help).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "export_data.sh: no virtual environment at $venv; creating it (once, about a minute)" >&2
  "$root/scripts/setup.sh" >&2
fi
export EVALCHEMY_HOME="$root"
exec "$venv/bin/python" -c 'from evalchemy.cli import export_main; export_main()' "$@"
