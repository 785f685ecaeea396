#!/usr/bin/env bash
# Browser tests drive Debian's Chromium through Playwright (never a browser download).
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
echo "==> installing Debian's chromium for the browser tests"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
  echo "    could not install chromium: the browser tests will be skipped" >&2
fi
