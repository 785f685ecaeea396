"""What the benchmarks share: a scratch database, a private Redis, real Celery workers, a user
with an API token, the fake backends, and the figures (percentiles, ratios, JSON).

Nothing here touches the developer's database or Redis: the database is a scratch SQLite file
(or a scratch PostgreSQL database with --postgres, dropped at the end) and Redis is a private
redis-server on a free port. The process helpers are the test suite's (tests/conftest.py).
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from project import queues as project_queues
from tests.conftest import RedisServer, Workers, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIZES = ("tiny", "quick", "full")
POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The same concurrency for the project's tasks and the raw baseline: one worker process
# consuming every queue, so both measurements use exactly the same workers.
WORKER_CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))
# The ComfyUI priced like a cloud GPU (only_backend, paid): a ComfyUI backend has its own queue.
PAID_COMFYUI = "bench-gpu"
ALL_QUEUES = ",".join((*project_queues.ALL, project_queues.for_comfyui(PAID_COMFYUI), "bench"))


# --- figures --------------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: list) -> dict:
    """p50/p90/p99/mean/min/max in milliseconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "mean_ms": round(sum(ms) / len(ms), 3),
            "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def ratio(ours: float, baseline: float) -> float:
    return round(ours / baseline, 4) if baseline else float("inf")


def target(what: str, value, rule: str, met: bool) -> dict:
    """One target line: what was measured, its value, the bar, whether it is met."""
    return {"what": what, "value": value, "target": rule, "met": bool(met)}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def write_result(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def show(result: dict) -> str:
    """The human-readable block: the benchmark's own lines, then the targets."""
    lines = [f"== {result['name']}: {result['title']} ({result['mode']}, {result.get('database') or 'no database'}, "
             f"{result['elapsed_seconds']:.1f} s)"]
    lines += [f"   {line}" for line in result.get("lines", [])]
    lines.append(f"   ratio to baseline: {result['ratio']} ({result['ratio_meaning']})")
    for t in result["targets"]:
        lines.append(f"   target {'MET ' if t['met'] else 'MISSED'}  {t['what']}: {t['value']} (target {t['target']})")
    return "\n".join(lines)


# --- the environment ------------------------------------------------------------------------
class BenchWorkers(Workers):
    """The test suite's worker pool, but running `bench.celery_app` (project tasks + baselines)
    against the scratch database the benchmark process uses."""

    def __init__(self, broker_url: str, database_url: str, log_dir: Path, env: dict | None = None):
        # DATABASE_URL in env too: the GPU workers (`manage.py gpu_worker`, started by the test
        # suite's helper) read the same scratch database, PostgreSQL included.
        super().__init__(broker_url, {"DATABASE_URL": database_url, **(env or {})})
        self.database_url = database_url
        self.log_dir = log_dir

    def start(self, queues: str = ALL_QUEUES, concurrency: int = WORKER_CONCURRENCY, name: str = "bench"):
        env = {**os.environ, "CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.broker_url,
               "DATABASE_URL": self.database_url, "PYTHONUNBUFFERED": "1", **self.env}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"worker-{name}{len(self.processes)}.log"
        handle = open(log, "w")
        # --loglevel INFO as in deploy/Procfile: the same per-task logging cost for both sides.
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-Q", queues,
             "-c", str(concurrency), "-n", f"{name}{len(self.processes)}@%h", "--loglevel", "INFO",
             "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(process)
        self.logs.append(log)
        wait_for(lambda: "ready" in log.read_text() or process.poll() is not None, 90, 0.1, "worker to be ready")
        if process.poll() is not None:
            raise RuntimeError(f"the bench worker died at start:\n{log.read_text()[-3000:]}")
        return process


class Context:
    """One benchmark session: created once, shared by every benchmark that runs in it."""

    def __init__(self, *, size: str, postgres: bool = False, out_dir: Path = RESULTS):
        self.size = size
        self.postgres = postgres
        self.out_dir = out_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="comfy-bench-"))
        self.redis = None
        self.pool = None
        self.database_url = ""
        self._pg_name = ""
        self._user = None
        self._token = ""

    # -- lifecycle: the environment must be set before Django is imported ----------------
    def start(self) -> "Context":
        self.redis = RedisServer().start()
        self.database_url = self._create_database()
        os.environ.update({
            "DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url, "CELERY_BROKER_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url, "MEDIA_ROOT": str(self.tmp / "media"),
            "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1", "LOG_LEVEL": "WARNING",
            # The bench user submits thousands of jobs a minute; the caps are not under test.
            "SUBMIT_RATE_PER_MINUTE": "100000000", "GLOBAL_MONTHLY_CAP_USD": "1000000",
            "DAILY_CAP_USD": "1000000", "MONTHLY_CAP_USD": "1000000",
        })
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        return self

    def _create_database(self) -> str:
        if not self.postgres:
            return f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        import psycopg

        self._pg_name = f"comfy_bench_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self._pg_name}"')
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + self._pg_name

    @property
    def database(self) -> str:
        return "postgresql" if self.postgres else "sqlite"

    def close(self) -> None:
        self.stop_workers()
        if self.database_url:
            from django.db import connections

            connections.close_all()
        if self._pg_name:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
        if self.redis:
            self.redis.stop()
            shutil.rmtree(self.redis.dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- workers ---------------------------------------------------------------------------
    def workers(self) -> BenchWorkers:
        """Start the shared worker process on first use."""
        if self.pool is None:
            self.pool = BenchWorkers(self.redis.url, self.database_url, self.out_dir / "logs")
            self.pool.start()
        return self.pool

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.stop_all()
            self.pool = None
        if self.redis:
            self.redis.client().flushall()

    # -- who submits -----------------------------------------------------------------------
    @property
    def user(self):
        if self._user is None:
            from django.contrib.auth import get_user_model

            from billing.models import SpendCap
            from routing.tokens import token_create

            self._user = get_user_model().objects.create_user("bench", "bench@example.com", "bench-password-1")
            SpendCap.objects.create(user=self._user, daily=10**6, monthly=10**6)
            _, self._token = token_create(user=self._user, name="bench")
        return self._user

    def api(self):
        """A Django test client that authenticates like an API caller (Bearer token)."""
        from django.test import Client

        self.user  # noqa: B018  (creates the user and its token)
        return Client(HTTP_AUTHORIZATION=f"Bearer {self._token}")

    def submit(self, client, **fields) -> str:
        body = {"kind": "image", "preference": "auto", "prompt": "a lighthouse at dusk", "seed": 7}
        body.update(fields)
        response = client.post("/api/jobs", body, content_type="application/json")
        if response.status_code != 201:
            raise RuntimeError(f"POST /api/jobs answered {response.status_code}: {response.content[:500]!r}")
        return response.json()["id"]

    # -- backends --------------------------------------------------------------------------
    def only_backend(self, url: str, *, paid: bool) -> int:
        """Route every job to one ComfyUI at `url`: the free local backend, or a ComfyUI priced
        per second like a cloud GPU (so routing holds money and the end charges it)."""
        from django.conf import settings

        from routing.models import Backend

        Backend.objects.update(enabled=False)
        if not paid:
            Backend.objects.filter(name="local").update(url=url, enabled=True, queue_depth=0)
            return Backend.objects.get(name="local").id
        backend, _ = Backend.objects.update_or_create(name=PAID_COMFYUI, defaults={
            "kind": "comfyui", "category": "cloud", "url": url, "enabled": True,
            "price_per_second": settings.RUNPOD_PRICE_PER_SECOND, "expected_image_seconds": 1.0})
        return backend.id


def wait_jobs_final(job_ids, timeout: float, *, stall: float | None = None):
    """Wait until every job is in a final state; returns their rows. With `stall`, give up
    (without raising) once no job has finished for that many seconds: the caller reports the
    stuck ones instead of the whole benchmark failing."""
    from routing.models import FINAL_JOB_STATES, Job

    ids = list(job_ids)
    deadline, done, last_change = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        count = Job.objects.filter(id__in=ids, status__in=FINAL_JOB_STATES).count()
        if count == len(ids):
            break
        if count != done:
            done, last_change = count, time.monotonic()
        if stall is not None and time.monotonic() - last_change > stall:
            break
        if time.monotonic() > deadline:
            if stall is not None:
                break
            raise AssertionError(f"timed out after {timeout}s waiting for {len(ids)} jobs to finish ({count} did)")
        time.sleep(0.02)
    return list(Job.objects.filter(id__in=ids))


class StampedList(list):
    """Drop-in for FakeComfyUI.received: remembers when each request arrived (time.time())
    and wakes a waiter on every POST /prompt. The fake itself is not modified."""

    def __init__(self):
        super().__init__()
        self.stamps = []
        self.prompt_posted = threading.Condition()

    def append(self, item):
        now = time.time()
        super().append(item)
        self.stamps.append(now)
        if tuple(item) == ("POST", "/prompt"):
            with self.prompt_posted:
                self.prompt_posted.notify_all()

    def prompt_times(self) -> list:
        return [t for item, t in zip(self, self.stamps) if tuple(item) == ("POST", "/prompt")]


def start_fake_process(*args: str, module: str = "tests.fakes.comfyui"):
    """A FakeComfyUI in its own process (like a real server on another machine): (process, url).
    `module` is the program to run (`python -m module --port N *args`)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"the fake ComfyUI did not start: {line}{process.stdout.read()[:2000]}")
    return process, line.split("listening on", 1)[1].strip()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
