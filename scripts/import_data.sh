#!/usr/bin/env bash
# On the closed machine: check an archive made by export_data.sh and put its datasets into the data folder (see --help).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "import_data.sh: no virtual environment at $venv; creating it (once, about a minute)" >&2
  "$root/scripts/setup.sh" >&2
fi
export EVALCHEMY_HOME="$root"
exec "$venv/bin/python" -c 'from evalchemy.cli import import_main; import_main()' "$@"
