#!/usr/bin/env bash
# Create .venv from requirements.txt with Python 3.11+ (installing Debian's venv module
# when the system Python lacks it), and a .env with generated secrets on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python_bin=$(command -v "$candidate"); break
  fi
done
if [ -z "$python_bin" ]; then
  echo "Comfy Hybrid needs Python 3.11 or newer (apt-get install python3.11)." >&2; exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

if ! "$python_bin" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "==> installing Python's venv module (Debian/Ubuntu package python3-venv)"
  version=$("$python_bin" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  as_root apt-get update -qq || true
  as_root apt-get install -y -qq "python${version}-venv" || as_root apt-get install -y -qq python3-venv
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
echo "==> installing Python packages from requirements.txt"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt

if [ ! -f .env ]; then
  echo "==> writing .env with generated secrets (edit it to configure backends)"
  .venv/bin/python - <<'PY'
import secrets
from pathlib import Path
Path(".env").write_text(
    "# Generated on first run. See README.md, Configuration.\n"
    f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
    f"WEBHOOK_SECRET={secrets.token_urlsafe(32)}\n"
    f"FLOWER_BASIC_AUTH=admin:{secrets.token_urlsafe(12)}\n"
)
Path(".env").chmod(0o600)
PY
fi
mkdir -p var/static
