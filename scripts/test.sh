#!/usr/bin/env bash
# Sets up the project (including the embedded model server) and runs the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" --local-model
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
