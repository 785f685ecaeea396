#!/usr/bin/env bash
# Start web, the five queue workers, beat and Flower under one process manager (honcho).
# FLOWER_BASIC_AUTH comes from .env (Flower reads FLOWER_* variables itself), never argv.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; [ -f .env ] && . ./.env; set +a
web="http://${WEB_BIND:-127.0.0.1}:${WEB_PORT:-8000}"
cat <<BANNER

  Comfy Hybrid is starting. Stop everything with Ctrl-C.
    web      $web/            (sign in; admin at $web/admin/)
    flower   http://${FLOWER_ADDRESS:-127.0.0.1}:${FLOWER_PORT:-5555}/   (user/password: FLOWER_BASIC_AUTH in .env)
    workers  control, local, cloud, gemini, webhooks queues on ${REDIS_URL:-redis://127.0.0.1:6379/0}
             (local: this machine's GPU joined as backend local, manage.py gpu_worker)
    beat     health probes, sweeper and schedules (edit them in the admin: Periodic tasks)
    comfyui  at backend local's URL (admin: Backends), else ${COMFYUI_URL:-http://127.0.0.1:8188}
             (install it from $web/install/)

BANNER
exec .venv/bin/honcho start -f deploy/Procfile -d .
