"""4. Routing decision time as the backlog grows: `routing.services.job_route`, database and
all (lock the job, read every backend, in-flight counts, pod room, the caps, the policy,
create the attempt, take a hold on the caps for a paid backend, commit, send the submit).

Backlog at level B: B unfinished jobs (half waiting for admission behind the local GPU,
half in flight on RunPod serverless with an active attempt) and B finished jobs with their
attempts (history), spread over 50 users. All four default backends are configured (dummy
keys, never called) and healthy, so each decision weighs four real candidates. Measured jobs
alternate "auto" (goes to the free local GPU) and "cloud" (cheapest paid option: a hold).
Each measured attempt is closed right after it is timed so the local queue stays below its
limit and every sample takes the same path.

Baseline: the same measurement with no backlog (level 0) in the same run: the ratio of the
p99 at the largest backlog to the p99 at 0 says whether decisions stay flat.
"""
import time
import uuid
from decimal import Decimal

from . import harness

NAME = "routing"
TITLE = "routing decision (job_route, database included) vs backlog size"
SIZES = {"tiny": {"levels": [0, 200, 1000], "samples": 30, "warmup": 5},
         "quick": {"levels": [0, 1000, 10000], "samples": 120, "warmup": 10},
         "full": {"levels": [0, 1000, 10000], "samples": 400, "warmup": 20}}
TARGET_P99_MS = 2.0
TARGET_FLAT = 1.5
USERS = 50
AGAIN = "0 again"


def run(ctx) -> dict:
    from django.test import override_settings

    params = SIZES[ctx.size]
    with override_settings(RUNPOD_API_KEY="bench-dummy-key", RUNPOD_ENDPOINT_ID="bench",
                           GEMINI_API_KEY="bench-dummy-key"):
        _configure_backends()
        users = _users()
        levels, decide_only = {}, _decide_alone(params["samples"])
        for level in params["levels"]:
            _grow_backlog(level, users)
            levels[str(level)] = _measure(ctx, params)
        _drop_backlog()  # and measure the empty case once more: how much is the machine's noise
        levels[AGAIN] = _measure(ctx, params)
    ctx.redis.client().flushall()  # the submit messages nobody consumed
    first, last = str(params["levels"][0]), str(params["levels"][-1])
    baseline = (levels[first]["p99_ms"] + levels[AGAIN]["p99_ms"]) / 2
    value = harness.ratio(levels[last]["p99_ms"], baseline)
    lines = [f"backlog {level:>7}: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms (n={s['n']}); in the "
             f"database driver p50 {s['sql_p50_ms']:.2f} ms over {s['queries_per_decision']:.0f} queries"
             for level, s in levels.items()]
    slow = levels[last]["slowest_queries"][0]
    lines += [f"slowest query at backlog {last}: {slow['ms_per_decision']:.2f} ms per decision: {slow['sql'][:90]}",
              f"policy.decide() alone (pure function, 4 candidates): p50 {decide_only['p50_ms'] * 1000:.1f} µs, "
              f"p99 {decide_only['p99_ms'] * 1000:.1f} µs",
              f"ratio p99 at {last} ÷ mean p99 at 0 (before and after): {value:.2f}"]
    return {
        "params": {**params, "users": USERS, "candidates": 4},
        "figures": {"levels": levels, "decide_only": decide_only},
        "baseline": {"level": "0 (mean of before and after)", "p99_ms": round(baseline, 3)},
        "ratio": value, "ratio_meaning": f"p99 at backlog {last} ÷ p99 with no backlog",
        "targets": [
            harness.target(f"p99 at backlog {last} (ms)", levels[last]["p99_ms"], f"≤ {TARGET_P99_MS} ms",
                           levels[last]["p99_ms"] <= TARGET_P99_MS),
            harness.target(f"p99 at {last} ÷ p99 at 0 (flat)", value, f"≤ {TARGET_FLAT}", value <= TARGET_FLAT),
        ],
        "lines": lines,
    }


def _configure_backends() -> None:
    from django.utils import timezone

    from routing.models import Backend

    Backend.objects.update(enabled=False)
    Backend.objects.filter(name__in=["local", "runpod", "pods", "gemini"]).update(
        enabled=True, health="up", last_probe_at=timezone.now() + _far(), queue_depth=0)
    Backend.objects.filter(name="local").update(url="http://127.0.0.1:9")  # never contacted


def _far():
    from datetime import timedelta

    return timedelta(days=1)  # "probed in the future": stays fresh however long the run takes


def _users() -> list:
    from django.contrib.auth import get_user_model

    from billing.models import SpendCap

    model = get_user_model()
    users = model.objects.bulk_create([model(username=f"backlog-{uuid.uuid4().hex[:10]}") for _ in range(USERS)])
    SpendCap.objects.bulk_create([SpendCap(user=user, daily=10**6, monthly=10**6) for user in users])
    return users


def _grow_backlog(level: int, users: list) -> None:
    """Add rows until the backlog holds `level` unfinished jobs and as many finished ones."""
    from routing.models import Attempt, Backend, Job

    have = Job.objects.filter(prompt="backlog", status__in=("queued", "submitted")).count()
    missing = max(0, level - have)
    runpod = Backend.objects.get(name="runpod")
    jobs, attempts = [], []
    for index in range(missing):
        user = users[index % len(users)]
        waiting = index % 2 == 0
        jobs.append(Job(user=user, prompt="backlog", status="queued" if waiting else "submitted", waiting=waiting,
                        backend=None if waiting else runpod))
        done = Job(user=user, prompt="backlog-history", status="succeeded", backend=runpod)
        jobs.append(done)
        attempts.append(Attempt(job=done, backend=runpod, number=1, status="succeeded", cost=Decimal("0.007")))
        if not waiting:
            attempts.append(Attempt(job=jobs[-2], backend=runpod, number=1, status="submitted",
                                    handle={"id": uuid.uuid4().hex}))
    for start in range(0, len(jobs), 2000):
        Job.objects.bulk_create(jobs[start:start + 2000])
    for start in range(0, len(attempts), 2000):
        Attempt.objects.bulk_create(attempts[start:start + 2000])


def _drop_backlog() -> None:
    from routing.models import Job

    Job.objects.filter(prompt__in=("backlog", "backlog-history")).delete()


def _measure(ctx, params, preferences=("auto", "cloud")) -> dict:
    from django.db import connection

    from routing import services
    from routing.models import Attempt, Job

    seconds, sql_seconds, queries, per_query = [], [], [], {}
    for index in range(params["warmup"] + params["samples"]):
        preference = preferences[index % len(preferences)]
        # The row alone, as job_submit stores it: job_submit also starts routing once it commits,
        # and the decision measured here is that routing.
        job = Job.objects.create(user=ctx.user, kind="image", preference=preference, prompt="measured", seed=1)
        sql = _SqlClock(per_query if index >= params["warmup"] else {})
        with connection.execute_wrapper(sql):
            started = time.perf_counter()
            attempt = services.job_route(job_id=job.id)
            took = time.perf_counter() - started
        if attempt is None:
            raise RuntimeError(f"job {job.id} was not routed: {Job.objects.get(id=job.id).reason}")
        Attempt.objects.filter(id=attempt.id).update(status="succeeded")  # keep the local queue empty
        Job.objects.filter(id=job.id).update(status="succeeded")
        if index >= params["warmup"]:
            seconds.append(took)
            sql_seconds.append(sql.seconds)
            queries.append(sql.queries)
    slowest = sorted(per_query.items(), key=lambda item: -item[1])[:3]
    return {**harness.latency_summary(seconds), "sql_p50_ms": harness.latency_summary(sql_seconds)["p50_ms"],
            "sql_p99_ms": harness.latency_summary(sql_seconds)["p99_ms"],
            "queries_per_decision": round(sum(queries) / len(queries), 1),
            "slowest_queries": [{"sql": text, "ms_per_decision": round(total * 1000 / len(seconds), 3)}
                                for text, total in slowest]}


class _SqlClock:
    """connection.execute_wrapper: time spent inside the database driver, query count, and
    the time per SQL text (added into `per_query`)."""

    def __init__(self, per_query: dict):
        self.seconds, self.queries, self.per_query = 0.0, 0, per_query

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - started
            self.seconds += took
            self.queries += 1
            self.per_query[sql] = self.per_query.get(sql, 0.0) + took


def _decide_alone(samples: int) -> dict:
    """The pure policy on the same four candidates, for scale: the rest is database work."""
    from routing.policy import Candidate

    candidates = [Candidate(1, "local", "local", queue=2), Candidate(2, "runpod", "cloud", cost=Decimal("0.00775"),
                                                                      seconds=25),
                  Candidate(3, "pods", "cloud", cost=Decimal("0.038"), seconds=200),
                  Candidate(4, "gemini", "gemini", cost=Decimal("0.039"), seconds=12, supports_workflows=False)]
    return time_decide(candidates, samples * 10)


def time_decide(candidates: list, repeats: int) -> dict:
    """policy.decide() alone for an auto image job on `candidates`, `repeats` times."""
    from routing.policy import JobFacts, decide

    facts = JobFacts(kind="image", preference="auto", custom_workflow=False)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        decide(facts, candidates, local_queue_limit=5)
        seconds.append(time.perf_counter() - started)
    return harness.latency_summary(seconds)
