#!/usr/bin/env bash
# Carrying datasets to a closed network (see --help of each):
#   export_data.sh  on a connected machine: pack the datasets a config needs into one archive;
#   import_data.sh  on the closed machine: check such an archive and put its datasets into the data folder.
# import_data.sh is a link to this file; the name it is called by picks the command.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="$(basename "$0")"
case "$name" in
  export_data.sh) command=export_main ;;
  import_data.sh) command=import_main ;;
  *) echo "$name: call this script as export_data.sh or import_data.sh" >&2; exit 2 ;;
esac
venv="${EVALCHEMY_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "$name: no virtual environment at $venv; creating it (once, about a minute)" >&2
  "$root/scripts/setup.sh" >&2
fi
export EVALCHEMY_HOME="$root"
exec "$venv/bin/python" -c "from evalchemy.cli.transfer_commands import $command; $command()" "$@"
