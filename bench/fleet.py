"""7. A GPU fleet: four GPUs of different speeds, and the control plane with fifty backends.

Makespan. Four fake ComfyUIs, each in its own process like a server on its own machine, run a
job in 1×, 1.5×, 2× and 3× the fastest one's time (sampler steps of different lengths). Each
joined with `manage.py gpu_worker`: a real worker process that alone consumes its backend's
queue; the shared bench worker routes (the `control` queue). Beat's probe round is sent once,
so each backend has its inventory, as in production. A warm-up burst lets every GPU run a few
jobs (a real fleet has learned its run times), then a burst of N jobs is submitted through the
API at once. Makespan: from the first submission to the last job marked succeeded.
Baseline: the ideal split of the same work, N ÷ the sum of the GPUs' rates, from the run times
the GPUs reported in this same burst (ComfyUI's execution_start → execution_success).

Routing with fifty backends. `routing.services.job_route`, database included, measured as
bench/routing_time.py does, with fifty local ComfyUI backends (rows, healthy, each with the
inventory a probe read from a fake; none is contacted), beside the same measure with one
backend as the baseline, and policy.decide() alone on fifty candidates.
"""
import os
import signal
import statistics
import threading
import time
from pathlib import Path

from . import harness
from .routing_time import _far, _measure, time_decide

NAME = "fleet"
TITLE = "GPU fleet: 4 GPUs of different speeds (makespan vs ideal split), routing with 50 backends"
# step_delay × STEPS: the fastest GPU's run time (0.6 s and 1 s: short for a GPU, long enough that
# the control plane's own latency on a busy machine is not what is measured; bench/dispatch.py
# and bench/throughput.py measure that).
SIZES = {"tiny": {"jobs": 16, "warmup_jobs": 8, "step_delay": 0.03, "samples": 30, "warmup": 5},
         "quick": {"jobs": 48, "warmup_jobs": 12, "step_delay": 0.15, "samples": 150, "warmup": 10},
         "full": {"jobs": 100, "warmup_jobs": 16, "step_delay": 0.25, "samples": 400, "warmup": 20}}
SPEEDS = (1.0, 1.5, 2.0, 3.0)  # each GPU's run time ÷ the fastest one's
STEPS = 4
GPU_CONCURRENCY = 2  # as deploy/Procfile and the GPU-node unit run it
FLEET_SIZE = 50
TARGET_MAKESPAN = 1.15
TARGET_P99_MS = 2.0  # issue 18's routing target


def run(ctx) -> dict:
    params = SIZES[ctx.size]
    try:
        burst = _makespan(ctx, params)
    finally:
        ctx.stop_workers()  # routing is measured in this process alone, as bench/routing_time.py does
    routing = _routing_at_scale(ctx, params)
    one, fifty = routing["1"], routing[str(FLEET_SIZE)]
    scale = harness.ratio(fifty["p99_ms"], one["p99_ms"])
    return {
        "params": {**params, "speeds": SPEEDS, "steps": STEPS, "fleet_size": FLEET_SIZE},
        "figures": {"burst": burst, "routing": routing},
        "baseline": {"ideal_makespan_s": burst["ideal_s"], "routing_one_backend": one},
        "ratio": burst["ratio"], "ratio_meaning": "makespan ÷ the ideal split (total work ÷ the GPUs' summed rates)",
        "targets": [
            harness.target("makespan ÷ ideal split, 4 GPUs at 1/1.5/2/3×", burst["ratio"], f"≤ {TARGET_MAKESPAN}",
                           burst["ratio"] <= TARGET_MAKESPAN),
            harness.target(f"routing p99 with {FLEET_SIZE} local backends (ms)", fifty["p99_ms"],
                           f"≤ {TARGET_P99_MS} ms", fifty["p99_ms"] <= TARGET_P99_MS),
        ],
        "lines": _burst_lines(burst) + _routing_lines(routing, scale),
    }


# --- the burst on four GPUs -----------------------------------------------------------------
def _makespan(ctx, params) -> dict:
    from routing.models import Attempt, Backend

    pool = ctx.workers()  # the shared worker routes: it consumes `control`
    fakes, processes, urls = [], [], []
    try:
        Backend.objects.update(enabled=False)
        for index, speed in enumerate(SPEEDS):
            fake, url = harness.start_fake_process(
                "--steps", str(STEPS), "--step-delay", str(params["step_delay"] * speed),
                "--gpu-name", f"Bench GPU {speed:g}x", "--vram-total", str(24 * 2**30))
            fakes.append(fake)
            urls.append(url)
            processes.append(pool.start_gpu_worker(url, f"gpu{index}", concurrency=GPU_CONCURRENCY))
        names = [f"gpu{index}" for index in range(len(SPEEDS))]
        _probe_once(names)
        client = ctx.api()
        _burst(ctx, client, params["warmup_jobs"])
        learned = dict(Backend.objects.filter(name__in=names).values_list("name", "expected_image_seconds"))
        started = time.time()
        with _ConnectionSampler(ctx, processes) as connections:
            jobs = _burst(ctx, client, params["jobs"])
        attempts = list(Attempt.objects.filter(job__in=jobs, status="succeeded").select_related("backend"))
        runs = {name: _runs(url) for name, url in zip(names, urls)}
        for process in processes:
            pool.kill(process, signal.SIGTERM)  # a warm stop: it marks its GPU down
    finally:
        for fake in fakes:
            fake.kill()
            fake.wait(10)
    return {**_burst_figures(jobs, attempts, started, names, learned, runs),
            "connections_per_gpu_worker": connections.peak}


class _ConnectionSampler:
    """The most TCP connections one GPU worker (its main process and its pool) held open at once
    to Redis and to PostgreSQL during the burst, sampled every 0.2 s. SQLite: none (a file).
    Celery closes a task's database connection when the task ends, so PostgreSQL's count is the
    tasks running at once, plus the main process's."""

    def __init__(self, ctx, processes):
        self.ctx, self.processes, self.stop = ctx, processes, threading.Event()
        self.peak = {"redis": 0, "postgresql": 0 if ctx.postgres else None, "processes": GPU_CONCURRENCY + 1}

    def __enter__(self):
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)

    def _sample(self):
        while not self.stop.wait(0.2):
            for process in self.processes:
                self.peak["redis"] = max(self.peak["redis"], _connections(process.pid, self.ctx.redis.port))
                if self.ctx.postgres:
                    self.peak["postgresql"] = max(self.peak["postgresql"], _connections(process.pid, 5432))


def _connections(root: int, port: int) -> int:
    """Established TCP connections to `port` held by process `root` and its descendants (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    sockets = set()
    for pid in tree:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        sockets.update(link[8:-1] for link in links if link.startswith("socket:["))
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in sockets:
                count += 1
    return count


def _runs(url: str) -> list:
    """(start, end) of every prompt the ComfyUI ran, by its own clock (history's messages)."""
    import requests

    spans = []
    for prompt_id, entry in requests.get(f"{url}/history", timeout=10).json().items():
        stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"] if isinstance(data, dict)}
        if stamps.get("execution_start") and stamps.get("execution_success"):
            spans.append((stamps["execution_start"] / 1000, stamps["execution_success"] / 1000, prompt_id))
    return sorted(spans)


def _probe_once(names) -> None:
    """Beat's probe round, once: each backend's worker reads its ComfyUI's health and inventory."""
    from routing import maintenance
    from routing.models import Backend
    from workers import tasks

    for backend_id, queue in maintenance.backends_to_probe():
        tasks.probe_backend.apply_async([backend_id], queue=queue, expires=30)
    harness.wait_for(lambda: Backend.objects.filter(name__in=names, inventory_at__isnull=False).count() == len(names),
                     60, 0.05, "every GPU's probe to read its inventory")


def _burst(ctx, client, count: int) -> list:
    ids = [ctx.submit(client, preference="local", seed=index) for index in range(count)]
    jobs = harness.wait_jobs_final(ids, timeout=600, stall=120)
    failed = [job for job in jobs if job.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} jobs did not succeed: {failed[0].status} {failed[0].error}")
    return jobs


def _burst_figures(jobs, attempts, started, names, learned, runs) -> dict:
    ended = max(job.finished_at.timestamp() for job in jobs)
    per_gpu = {}
    for name, speed in zip(names, SPEEDS):
        ran = [a for a in attempts if a.backend.name == name]
        seconds = [a.seconds for a in ran if a.seconds]
        last = max((a.finished_at.timestamp() for a in ran), default=started)
        burst = [span for span in runs[name] if span[0] >= started]
        per_gpu[name] = {"speed": speed, "jobs": len(ran), "run_s": round(statistics.median(seconds), 4),
                         "learned_s": round(learned[name], 4), "last_done_s": round(last - started, 3),
                         "first_start_s": round(burst[0][0] - started, 3) if burst else None,
                         **_idle(burst, {str(a.id): a for a in ran}, started)}
    rate = sum(1 / gpu["run_s"] for gpu in per_gpu.values())
    ideal = len(jobs) / rate
    for gpu in per_gpu.values():
        gpu["ideal_jobs"] = round(len(jobs) / gpu["run_s"] / rate, 1)
    makespan = ended - started
    finishes = [gpu["last_done_s"] for gpu in per_gpu.values()]
    first_run = min(a.running_at.timestamp() for a in attempts if a.running_at)
    return {"jobs": len(jobs), "makespan_s": round(makespan, 3), "ideal_s": round(ideal, 3),
            "ratio": harness.ratio(makespan, ideal), "tail_s": round(max(finishes) - min(finishes), 3),
            "first_running_s": round(first_run - started, 3), "gpus": per_gpu}


def _idle(burst: list, attempts: dict, started: float) -> dict:
    """How long a GPU stood idle between its runs of the burst, and each gap over 50 ms: when it
    began (seconds into the burst), how long, and when the next run's attempt was routed and
    submitted (routed late: admission; submitted late: its worker)."""
    gaps = [(before, after, after[0] - before[1]) for before, after in zip(burst, burst[1:])]
    return {"idle_between_s": round(sum(gap for _, _, gap in gaps), 3),
            "gaps_over_50ms": [[round(before[1] - started, 2), round(gap, 3), _lag(attempts.get(after[2]), before[1])]
                               for before, after, gap in gaps if gap > 0.05]}


def _lag(attempt, idle_from: float):
    """For the run after a gap: when its attempt was created (routed) and started (submitted to
    ComfyUI), in seconds after the GPU went idle; negative: before."""
    if attempt is None:
        return None
    submitted = attempt.started_at.timestamp() - idle_from if attempt.started_at else None
    return {"routed": round(attempt.created_at.timestamp() - idle_from, 3),
            "submitted": round(submitted, 3) if submitted is not None else None}


def _burst_lines(burst) -> list:
    held = burst["connections_per_gpu_worker"]
    postgres = f", PostgreSQL {held['postgresql']}" if held["postgresql"] is not None else ""
    lines = [f"burst of {burst['jobs']} jobs on 4 GPUs: makespan {burst['makespan_s']:.2f} s, ideal split "
             f"{burst['ideal_s']:.2f} s → {burst['ratio']:.3f}× (the GPUs' last jobs ended within "
             f"{burst['tail_s']:.2f} s of each other; the first job was running {burst['first_running_s']:.2f} s "
             "after the first submission)"]
    lines.append(f"each GPU worker ({held['processes']} processes) holds Redis {held['redis']}{postgres} "
                 "connections open at most during the burst")
    for name, gpu in burst["gpus"].items():
        lines.append(f"  {name} ({gpu['speed']:g}×): {gpu['jobs']:>3} jobs (ideal {gpu['ideal_jobs']:.1f}), run "
                     f"{gpu['run_s'] * 1000:.0f} ms, learned {gpu['learned_s'] * 1000:.0f} ms after the warm-up, "
                     f"last done at {gpu['last_done_s']:.2f} s; idle {gpu['idle_between_s']:.2f} s between its runs "
                     f"({len(gpu['gaps_over_50ms'])} gaps over 50 ms)")
    return lines


# --- routing with fifty backends ------------------------------------------------------------
def _routing_at_scale(ctx, params) -> dict:
    from routing.models import Backend

    inventory = Backend.objects.filter(name="gpu0").values_list("inventory", flat=True).first() or {}
    Backend.objects.update(enabled=False)
    measured = {}
    for size in (1, FLEET_SIZE):
        _fleet_rows(size, inventory)
        measured[str(size)] = _measure(ctx, params, preferences=("auto",))
    measured["decide_only"] = {str(size): _decide_alone(size, params["samples"]) for size in (1, FLEET_SIZE)}
    measured["profile"] = _profile(ctx, params["samples"])
    Backend.objects.filter(name__startswith="fleet-").update(enabled=False)  # attempts ran there: kept
    ctx.redis.client().flushall()  # the submit messages nobody consumed
    return measured


def _fleet_rows(size: int, inventory: dict) -> None:
    """`size` healthy local ComfyUI backends that look joined and probed (never contacted): the
    ones already there and as many more."""
    from django.utils import timezone

    from routing.fleet import JOIN_DEFAULTS
    from routing.models import Backend

    have = Backend.objects.filter(name__startswith="fleet-").count()
    Backend.objects.bulk_create([Backend(
        name=f"fleet-{index:03}", url=f"http://127.0.0.1:9/{index}", enabled=True, health="up",
        last_probe_at=timezone.now() + _far(), inventory=inventory, inventory_at=timezone.now(),
        gpu_name="Bench GPU", vram_total=24 * 2**30, **{**JOIN_DEFAULTS, "expected_image_seconds": 10.0 + index % 7},
    ) for index in range(have, size)])


def _decide_alone(size: int, samples: int) -> dict:
    """The pure policy on `size` local candidates, for scale."""
    from routing.policy import Candidate

    candidates = [Candidate(index, f"fleet-{index:03}", "local", queue=index % 3, seconds=10.0 + index % 7)
                  for index in range(size)]
    return time_decide(candidates, samples * 5)


def _profile(ctx, samples: int) -> list:
    """Where a decision with fifty backends spends its time: the functions with the most
    cumulative time under job_route, per decision."""
    import cProfile
    import pstats

    from routing import services
    from routing.models import Attempt, Job

    profiler = cProfile.Profile()
    count = max(10, samples // 4)
    for index in range(count):
        job = Job.objects.create(user=ctx.user, kind="image", preference="auto", prompt="profiled", seed=index)
        profiler.enable()
        attempt = services.job_route(job_id=job.id)
        profiler.disable()
        Attempt.objects.filter(id=attempt.id).update(status="succeeded")
        Job.objects.filter(id=job.id).update(status="succeeded")
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        if (function, filename.rsplit("/", 1)[-1]) in PROFILED:
            rows.append({"function": f"{filename.rsplit('/', 2)[-2]}/{filename.rsplit('/', 1)[-1]}:{function}",
                         "ms_per_decision": round(cumulative * 1000 / count, 3)})
    return sorted(rows, key=lambda row: -row["ms_per_decision"])


# (function, file) pairs the profile reports: the steps of a decision, and what they are made of.
PROFILED = {("job_route", "services.py"), ("candidates_for", "selectors.py"), ("job_facts", "selectors.py"),
            ("decide", "policy.py"), ("_place", "services.py"), ("backend_inventory", "selectors.py"),
            ("in_flight_by_backend", "selectors.py"), ("for_user", "caps.py"), ("estimate", "selectors.py"),
            ("effective_health", "health.py"), ("health_detail", "health.py"), ("missing_settings", "backends.py"),
            ("from_db_value", "json.py"), ("from_db", "base.py"), ("execute", "utils.py"),
            ("_fetch_all", "query.py")}


def _routing_lines(routing, scale) -> list:
    lines = [f"job_route with {size:>2} local backend{'s' if size != '1' else ''}: p50 {s['p50_ms']:.2f} ms, "
             f"p99 {s['p99_ms']:.2f} ms (n={s['n']}); database driver p50 {s['sql_p50_ms']:.2f} ms over "
             f"{s['queries_per_decision']:.0f} queries"
             for size, s in routing.items() if size.isdigit()]
    alone = routing["decide_only"]
    lines.append(f"policy.decide() alone: p50 {alone['1']['p50_ms'] * 1000:.1f} µs with 1 candidate, "
                 f"{alone[str(FLEET_SIZE)]['p50_ms'] * 1000:.1f} µs with {FLEET_SIZE}")
    lines.append(f"p99 with {FLEET_SIZE} ÷ p99 with 1: {scale:.2f}; where a {FLEET_SIZE}-backend decision goes "
                 "(cProfile, cumulative ms per decision): "
                 + ", ".join(f"{row['function'].split(':')[-1]} {row['ms_per_decision']:.2f}"
                             for row in routing["profile"][:10]))
    return lines
