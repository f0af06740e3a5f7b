#!/usr/bin/env bash
# evalchemy entrypoint: finds the project's virtual environment and hands every argument to the Python CLI.
# All logic lives in Python (evalchemy/cli.py); run with --help for flags and exit codes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${EVALCHEMY_VENV:-$here/.venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "run_evalchemy.sh: no virtual environment at $venv; creating it (once, about a minute)" >&2
  "$here/scripts/setup.sh" >&2
fi

export EVALCHEMY_HOME="$here"
exec "$venv/bin/python" -m evalchemy "$@"
