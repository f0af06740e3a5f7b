#!/usr/bin/env bash
# Sets up the project (the embedded model server, and the real engines with --real-engines as its first argument)
# and runs the whole test suite; other arguments go to pytest. Without the real engines the real_vllm tests skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
setup=(--local-model)
if [ "${1:-}" = --real-engines ]; then
  setup=(--real-engines)
  shift
fi
"$root/scripts/setup.sh" "${setup[@]}"
# The results store's tests start a throw-away PostgreSQL server from Debian's postgresql package.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ "$(id -u)" -eq 0 ]; then
  echo "test.sh: installing postgresql for the results store tests (apt-get)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi
# The report tests open pages in Debian's chromium (Playwright cannot download its own browser here), with a Korean
# font so screenshots show Hangul. CI runs as root on a fresh Debian machine.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing chromium and fonts-noto-cjk for the report tests (apt-get)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >&2
  else
    echo "test.sh: /usr/bin/chromium is missing: the browser tests will be skipped" \
      "(sudo apt-get install chromium fonts-noto-cjk)" >&2
  fi
fi
# The queue tests start a throw-away redis-server (Debian's redis-server package) as the Celery broker.
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing redis-server for the queue tests (apt-get)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  else
    echo "test.sh: redis-server is missing: the queue tests will be skipped (sudo apt-get install redis-server)" >&2
  fi
fi
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
