#!/usr/bin/env bash
# Run every test. Tests start their own Redis (a private one on a free port) and their own
# Celery workers; PostgreSQL tests use the server on 127.0.0.1:5432 when it answers and
# are skipped with a reason when it does not.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/static test-output
exec .venv/bin/python -m pytest "$@"
