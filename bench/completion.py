"""3. Completion detection: from the backend finishing to the job marked succeeded.

"The backend finished" is read from the outside: the fake ComfyUI stamps every execution
message in milliseconds, and history's `status.messages` carries the `execution_success`
stamp written just before history and the final `executing` event. "Marked succeeded" is
`Job.finished_at`, set by the worker once the outputs are downloaded (same clock: one machine).

Each job runs for a while (a few sampler steps) so the poll task is already listening on
ComfyUI's WebSocket when the job ends: that is the normal path. The fallback is measured
with fail_mode="drop_ws" (the socket dies mid-job without a close frame): the poll then reads
/history every COMFYUI_POLL_INTERVAL seconds until its watch window ends. The baseline is that
fallback, i.e. what plain polling at the configured interval gives.
"""
import time
from datetime import datetime, timezone

from django.conf import settings

from . import harness

NAME = "completion"
TITLE = "backend finished → job succeeded: WebSocket watch vs polling fallback"
SIZES = {"tiny": {"samples": 3, "polling_samples": 2, "warmup": 1},
         "quick": {"samples": 15, "polling_samples": 8, "warmup": 2},
         "full": {"samples": 60, "polling_samples": 25, "warmup": 3}}
TARGET_MS = 50.0
TARGET_PREVIEWS = 1.10  # previews must not slow the end of a job down measurably
STEPS, STEP_DELAY = 4, 0.05  # ~0.2 s of "sampling": the poll is listening before the end


def run(ctx) -> dict:
    from tests.fakes.comfyui import FakeComfyUI

    params = SIZES[ctx.size]
    ctx.workers()
    fake = FakeComfyUI(steps=STEPS, step_delay=STEP_DELAY).start()
    try:
        ctx.only_backend(fake.url, paid=False)
        client = ctx.api()
        _samples(ctx, client, fake, params["warmup"])
        websocket = _samples(ctx, client, fake, params["samples"])
        fake.preview_method = "auto"  # a preview frame after every sampler step, as --preview-method auto
        previewed = _samples(ctx, client, fake, params["samples"])
        fake.preview_method, fake.fail_mode = None, "drop_ws"
        polling = _samples(ctx, client, fake, params["polling_samples"])
    finally:
        fake.stop()
    ws, poll = harness.latency_summary(websocket), harness.latency_summary(polling)
    with_previews = harness.latency_summary(previewed)
    value = harness.ratio(ws["p50_ms"], poll["p50_ms"])
    preview_cost = harness.ratio(with_previews["p50_ms"], ws["p50_ms"])
    interval = settings.COMFYUI_POLL_INTERVAL
    return {
        "params": {**params, "steps": STEPS, "step_delay": STEP_DELAY, "poll_interval_s": interval,
                   "watch_seconds": settings.COMFYUI_WATCH_SECONDS},
        "figures": {"websocket": ws, "websocket_with_previews": with_previews, "previews_ratio": preview_cost},
        "baseline": {"polling_fallback": poll},
        "ratio": value, "ratio_meaning": "WebSocket p50 ÷ polling-fallback p50",
        "targets": [harness.target("WebSocket detection p50 (ms)", ws["p50_ms"], f"≤ {TARGET_MS:.0f} ms",
                                   ws["p50_ms"] <= TARGET_MS),
                    harness.target("with live previews ÷ without, p50", preview_cost, f"≤ {TARGET_PREVIEWS}",
                                   preview_cost <= TARGET_PREVIEWS)],
        "lines": [
            f"WebSocket watch: p50 {ws['p50_ms']:.1f} ms, p99 {ws['p99_ms']:.1f} ms (n={ws['n']}; includes the "
            "history read, the output download and the database update)",
            f"polling fallback (socket dropped, /history every {interval:g} s): p50 {poll['p50_ms']:.0f} ms, "
            f"p99 {poll['p99_ms']:.0f} ms (n={poll['n']})",
            f"with live previews (a frame per sampler step, kept in Redis at most every "
            f"{settings.PREVIEW_EVERY_SECONDS:g} s): p50 {with_previews['p50_ms']:.1f} ms, {preview_cost:.2f}× without",
            f"ratio {value:.3f} (WebSocket ÷ polling)",
        ],
    }


def _samples(ctx, client, fake, count: int) -> list:
    from routing.models import Attempt

    seconds = []
    for _ in range(count):
        job = harness.wait_jobs_final([ctx.submit(client)], timeout=60)[0]
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.id} ended {job.status}: {job.error}")
        prompt_id = str(Attempt.objects.get(job=job, status="succeeded").handle["prompt_id"])
        finished = _execution_success(fake.history[prompt_id])
        seconds.append((job.finished_at - finished).total_seconds())
        time.sleep(0.05)  # let the worker finish its follow-up tasks (admission) before the next job
    return seconds


def _execution_success(entry: dict) -> datetime:
    for name, data in entry["status"]["messages"]:
        if name == "execution_success":
            return datetime.fromtimestamp(data["timestamp"] / 1000, tz=timezone.utc)
    raise RuntimeError("the fake recorded no execution_success")
