"""2. Dispatch overhead: from POST /api/jobs to the ComfyUI receiving POST /prompt.

Measured one job at a time on an idle system (each job finishes before the next is sent),
against the free local backend: API view → route_job on `control` (policy, attempt) →
submit_attempt on `local` (workflow from the template, a look in /history and /queue so a
redelivery never runs twice) → POST /prompt. The fake ComfyUI runs in this process; its
`received` list is swapped for one that timestamps each request (the fake is not modified).

Baseline: a raw Celery round trip, `bench.echo.delay(i).get()`, on the same Redis and the
same worker process, interleaved with the jobs so both see the same machine load.
"""
import time

from . import harness
from .tasks import echo

NAME = "dispatch"
TITLE = "submit → backend receives POST /prompt vs raw Celery delay().get()"
SIZES = {"tiny": {"samples": 5, "warmup": 2}, "quick": {"samples": 40, "warmup": 5},
         "full": {"samples": 200, "warmup": 10}}
TARGET = 3.0


def run(ctx) -> dict:
    from tests.fakes.comfyui import FakeComfyUI

    params = SIZES[ctx.size]
    ctx.workers()
    fake = FakeComfyUI(steps=0, step_delay=0).start()
    fake.received = harness.StampedList()
    try:
        ctx.only_backend(fake.url, paid=False)
        client = ctx.api()
        ours, api, raw = [], [], []
        for index in range(params["warmup"] + params["samples"]):
            dispatch_seconds, api_seconds = _one_job(ctx, client, fake)
            round_trip = _one_round_trip(index)
            if index >= params["warmup"]:
                ours.append(dispatch_seconds)
                api.append(api_seconds)
                raw.append(round_trip)
    finally:
        fake.stop()
    ours_summary, raw_summary = harness.latency_summary(ours), harness.latency_summary(raw)
    api_summary = harness.latency_summary(api)
    value = harness.ratio(ours_summary["p50_ms"], raw_summary["p50_ms"])
    p99_ratio = harness.ratio(ours_summary["p99_ms"], raw_summary["p99_ms"])
    return {
        "params": params,
        "figures": {"dispatch": ours_summary, "api_response": api_summary, "p99_ratio": p99_ratio},
        "baseline": {"celery_round_trip": raw_summary},
        "ratio": value, "ratio_meaning": "dispatch p50 ÷ raw delay().get() p50",
        "targets": [harness.target("dispatch p50 ÷ raw round trip p50", value, f"≤ {TARGET}", value <= TARGET)],
        "lines": [
            f"submit → POST /prompt: p50 {ours_summary['p50_ms']:.1f} ms, p99 {ours_summary['p99_ms']:.1f} ms "
            f"(n={ours_summary['n']}; of which the API answering: p50 {api_summary['p50_ms']:.1f} ms)",
            f"raw delay().get():     p50 {raw_summary['p50_ms']:.1f} ms, p99 {raw_summary['p99_ms']:.1f} ms",
            f"ratio p50 {value:.2f}, p99 {p99_ratio:.2f}",
        ],
    }


def _one_job(ctx, client, fake) -> tuple[float, float]:
    posted = fake.received.prompt_times()
    started = time.time()
    job_id = ctx.submit(client)
    answered = time.time()
    with fake.received.prompt_posted:  # the predicate is checked first: no wake-up is missed
        ok = fake.received.prompt_posted.wait_for(lambda: len(fake.received.prompt_times()) > len(posted), 30)
    if not ok:
        raise RuntimeError(f"job {job_id} never reached the fake ComfyUI")
    arrived = fake.received.prompt_times()[len(posted)]
    harness.wait_jobs_final([job_id], timeout=30)  # idle system before the next sample
    return arrived - started, answered - started


def _one_round_trip(index: int) -> float:
    started = time.perf_counter()
    result = echo.delay(index)
    value = result.get(timeout=30)
    seconds = time.perf_counter() - started
    result.forget()
    assert value == index
    return seconds
