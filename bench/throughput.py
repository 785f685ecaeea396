"""1. Throughput: jobs end to end per second against raw Celery no-op tasks per second.

A job here is the whole path: POST /api/jobs (token auth, validation, insert) → route_job
(candidates, policy, a hold on the caps) → submit_attempt (POST /prompt to a ComfyUI priced
like a cloud GPU, in its own process, "instant": no sampler steps) → poll_attempt (history,
download of the PNG, output stored) → charge in the ledger → succeeded.

Baseline: `bench.noop` tasks sent one by one and joined, on the same Redis and the very same
worker process (one process, the same concurrency, consuming the project's queues and the
bench queue). The baseline is measured before and after the jobs; their mean is used.
"""
import os
import signal
import time

from . import harness
from .tasks import noop

NAME = "throughput"
TITLE = "jobs end to end per second vs raw Celery no-op tasks per second"
SIZES = {"tiny": {"jobs": 6, "noops": 60, "warmup": 1},
         "quick": {"jobs": 60, "noops": 600, "warmup": 3},
         "full": {"jobs": 300, "noops": 3000, "warmup": 5}}
TARGET = 0.20
# A job that has not moved for this long is counted as stuck (its task died: the worker log
# says why) rather than failing the whole run; production's beat sweeper would re-send it.
STALL_SECONDS = 20


def run(ctx) -> dict:
    params = SIZES[ctx.size]
    ctx.workers()
    fake, url = harness.start_fake_process("--steps", "0", "--step-delay", "0")
    try:
        ctx.only_backend(url, paid=True)
        client = ctx.api()
        _jobs(ctx, client, params["warmup"])  # forked children open their connections
        _noops(params["warmup"] * 10)
        raw_before = _noops(params["noops"])
        jobs = _jobs(ctx, client, params["jobs"])
        raw_after = _noops(params["noops"])
    finally:
        os.killpg(fake.pid, signal.SIGTERM)
        fake.wait(10)
    raw = (raw_before["per_second"] + raw_after["per_second"]) / 2
    value = harness.ratio(jobs["per_second"], raw)
    lost = "" if jobs["succeeded"] == jobs["jobs"] else \
        f"; {jobs['failed']} failed, {jobs['stuck']} stuck: see the worker log in {ctx.out_dir / 'logs'}"
    return {
        "params": {**params, "worker_processes": 1, "concurrency": harness.WORKER_CONCURRENCY},
        "figures": jobs,
        "baseline": {"raw_noop_per_second": round(raw, 2), "before": raw_before, "after": raw_after},
        "ratio": value, "ratio_meaning": "jobs/s ÷ raw no-op tasks/s",
        "targets": [harness.target("jobs/s ÷ raw tasks/s", value, f"≥ {TARGET}", value >= TARGET)],
        "lines": [
            f"jobs end to end: {jobs['per_second']:.2f} jobs/s ({jobs['succeeded']}/{jobs['jobs']} succeeded{lost}, "
            f"API submit alone {jobs['submit_per_second']:.1f}/s, latency p50 {jobs['latency']['p50_ms']:.0f} ms)",
            f"raw Celery no-op: {raw:.1f} tasks/s (before {raw_before['per_second']:.1f}, "
            f"after {raw_after['per_second']:.1f})",
            f"ratio {value:.3f} (jobs/s ÷ tasks/s; a job is 3-4 Celery tasks plus HTTP and database work)",
        ],
    }


def _noops(count: int) -> dict:
    from celery.result import ResultSet

    started = time.perf_counter()
    results = ResultSet([noop.delay() for _ in range(count)])
    results.join(timeout=300, propagate=True)
    seconds = time.perf_counter() - started
    for result in results.results:
        result.forget()
    return {"tasks": count, "seconds": round(seconds, 3), "per_second": round(count / seconds, 2)}


def _jobs(ctx, client, count: int) -> dict:
    from datetime import datetime, timezone

    started_wall = datetime.now(timezone.utc)
    started = time.perf_counter()
    ids = [ctx.submit(client) for _ in range(count)]
    submitted = time.perf_counter() - started
    jobs = harness.wait_jobs_final(ids, timeout=60 + count, stall=STALL_SECONDS)
    last = max((job.finished_at for job in jobs if job.finished_at), default=started_wall)
    seconds = (last - started_wall).total_seconds()
    succeeded = [job for job in jobs if job.status == "succeeded"]
    return {
        "jobs": count, "succeeded": len(succeeded), "seconds": round(seconds, 3),
        "failed": sum(1 for job in jobs if job.status == "failed"),
        "stuck": sum(1 for job in jobs if not job.is_final),  # a lost task: see the worker log
        "per_second": round(len(succeeded) / seconds, 3) if seconds > 0 else 0.0,
        "submit_per_second": round(count / submitted, 2),
        "charged": sum(1 for job in succeeded if job.ledger.filter(kind="charge").exists()),
        "latency": harness.latency_summary([(job.finished_at - job.created_at).total_seconds()
                                            for job in succeeded]),
    }
