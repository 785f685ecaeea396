#!/usr/bin/env bash
# Entry point of the Comfy Hybrid cloud image (deploy/runpod-worker).
#
#   serverless  RunPod sets RUNPOD_WEBHOOK_GET_JOB: handler.py starts ComfyUI on 127.0.0.1 and
#               serves jobs through the runpod worker loop.
#   pod         The server's autoscaler sets COMFY_HYBRID_MODE=pod: ComfyUI listens on
#               0.0.0.0:8188 (reached through https://{podId}-8188.proxy.runpod.net), and an
#               idle watchdog runs beside it.
#   sync        `manage.py sync_volume` sets COMFY_HYBRID_MODE=sync: the models listed in
#               COMFY_HYBRID_SYNC are fetched onto the network volume at /workspace (resumable,
#               SHA-256 verified), progress at GET :8188/sync; the server terminates the pod.
#
# The watchdog is the second line of defence against a leaked pod: the server's reaper stops
# idle pods after RUNPOD_IDLE_SECONDS, but if the server is down the pod must still stop
# itself. It does so after POD_IDLE_STOP_SECONDS without a job, with the RunPod API and the
# pod's own environment (RUNPOD_POD_ID, and the pod-scoped RUNPOD_API_KEY RunPod injects):
# terminate if that key may, else stop (GPU billing ends either way; reconcile on the
# server terminates stopped pods it finds later).
set -euo pipefail

MODE="${COMFY_HYBRID_MODE:-auto}"
if [ "$MODE" = auto ]; then
  if [ -n "${RUNPOD_WEBHOOK_GET_JOB:-}" ]; then MODE=serverless; else MODE=pod; fi
fi
if [ "$MODE" = serverless ]; then
  exec python -u "${HANDLER:-/handler.py}"
fi
if [ "$MODE" = sync ]; then
  PYTHONPATH=/opt/comfy-hybrid exec python -u -m workers.installer.volume --root /workspace --port 8188
fi

COMFY_HOST="${COMFY_HOST:-127.0.0.1:8188}"
COMFY="http://${COMFY_HOST}"
START="${COMFY_START_COMMAND:-python -u /comfyui/main.py --listen 0.0.0.0 --port 8188 --disable-auto-launch --preview-method auto}"
IDLE_LIMIT="${POD_IDLE_STOP_SECONDS:-900}"
CHECK_EVERY="${POD_IDLE_CHECK_SECONDS:-30}"
API="${RUNPOD_API_BASE_URL:-https://api.runpod.io}"

# shellcheck disable=SC2086  # the command is a word list on purpose
$START &
COMFY_PID=$!
trap 'kill "$COMFY_PID" 2>/dev/null || true' EXIT

# "queue_remaining latest_prompt_id", or nothing when ComfyUI does not answer.
comfy_state() {
  local queue history
  queue=$(curl -fsS --max-time 10 "$COMFY/prompt") || return 0
  history=$(curl -fsS --max-time 10 "$COMFY/history?max_items=1") || return 0
  python3 - "$queue" "$history" <<'PY' 2>/dev/null || true
import json, sys
queue, history = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(queue["exec_info"]["queue_remaining"], next(iter(history), "-"))
PY
}

# One GraphQL mutation with this pod's own key; fails on HTTP errors and GraphQL "errors".
graphql() {
  local answer
  answer=$(curl -sS --max-time 30 -X POST "$API/graphql" -H "Content-Type: application/json" \
    -H "Authorization: Bearer ${RUNPOD_API_KEY:-}" -d "{\"query\": \"mutation { $1 }\"}") || return 1
  case "$answer" in *'"errors"'*) echo "watchdog: RunPod refused: $answer" >&2; return 1 ;; esac
}

stop_this_pod() {
  echo "watchdog: no job for ${IDLE_LIMIT}s; stopping pod ${RUNPOD_POD_ID:-?}"
  graphql "podTerminate(input: {podId: \\\"${RUNPOD_POD_ID}\\\"})" \
    || graphql "podStop(input: {podId: \\\"${RUNPOD_POD_ID}\\\"}) { id desiredStatus }"
}

last_activity=$(date +%s)
last_seen=""
while kill -0 "$COMFY_PID" 2>/dev/null; do
  sleep "$CHECK_EVERY"
  read -r queued latest <<<"$(comfy_state)" || true
  if [ "${queued:-0}" -gt 0 ] || { [ -n "${latest:-}" ] && [ "$latest" != "$last_seen" ] && [ -n "$last_seen" ]; }; then
    last_activity=$(date +%s)
  fi
  [ -n "${latest:-}" ] && last_seen="$latest"
  if [ $(( $(date +%s) - last_activity )) -ge "$IDLE_LIMIT" ]; then
    if stop_this_pod; then
      exit 0
    fi
    last_activity=$(date +%s)  # the API refused: try again after another idle period
  fi
done
echo "ComfyUI exited; the watchdog stops too (RunPod restarts the container or the reaper ends the pod)"
wait "$COMFY_PID"
