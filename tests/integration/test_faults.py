"""Faults with real processes: every job ends exactly once, with exactly one charge.

Each test injects one fault into real Redis / real Celery workers / fake backends and waits,
bounded in time, for the outcome. Traffic stays on loopback.
"""
import subprocess
import time
from decimal import Decimal

import psutil
import pytest
import redis as redis_lib
from django.db.models import Sum
from django.utils import timezone

from billing.models import LedgerEntry
from billing.pricing import money
from routing import maintenance, services
from routing.models import Attempt, Backend, Job, JobStatus, Output
from tests.conftest import ROOT, Workers, wait_for
from tests.fakes.comfyui import FakeComfyUI
from workers.schedules import ensure_schedules

pytestmark = pytest.mark.integration

ENV = {"COMFYUI_WATCH_SECONDS": "1", "COMFYUI_POLL_INTERVAL": "0.2", "COMFYUI_HTTP_TIMEOUT": "1",
       "SWEEP_AFTER_SECONDS": "2", "SWEEP_EVERY_SECONDS": "1", "HEALTH_PROBE_SECONDS": "3600",
       "SUBMIT_RATE_PER_MINUTE": "100000", "JOB_MAX_ATTEMPTS": "3"}


@pytest.fixture
def pool(transactional_db, redis_server, settings):
    redis_server.client().flushall()
    settings.SWEEP_EVERY_SECONDS, settings.HEALTH_PROBE_SECONDS = 1, 3600
    ensure_schedules()  # beat reads them from the (flushed) test database
    workers = Workers(redis_server.url, env=ENV)
    yield workers
    workers.stop_all()
    if redis_server.process.poll() is not None:  # a test stopped it: leave it running
        redis_server.start()


@pytest.fixture
def backends(local_backend):
    """local → fake1 (free); spare → fake2, a priced ComfyUI in the cloud category."""
    fake1, fake2 = FakeComfyUI(step_delay=0.01, steps=2).start(), FakeComfyUI(step_delay=0.01, steps=2).start()
    now = timezone.now()
    Backend.objects.filter(id=local_backend.id).update(url=fake1.url, health="up", last_probe_at=now)
    spare = Backend.objects.create(name="spare", kind="comfyui", category="cloud", url=fake2.url,
                                   price_per_second=Decimal("0.01"), expected_image_seconds=10.0, health="up",
                                   last_probe_at=now)
    yield fake1, fake2, spare
    fake1.stop()
    fake2.stop()


def _submit(user, n=1, preference="auto", **kw):
    return [services.job_submit(user=user, kind="image", preference=preference, prompt=f"job {i}", seed=i, **kw)
            for i in range(n)]


def routed(job) -> Attempt:
    """The job's first attempt: a job is routed where it is submitted (services.route_now)."""
    return Attempt.objects.select_related("backend").get(job_id=job.id, number=1)


def _all_final(jobs, timeout=90):
    ids = [job.id for job in jobs]
    wait_for(lambda: Job.objects.filter(id__in=ids, status__in=("succeeded", "failed", "cancelled")).count()
             == len(ids), timeout, 0.2, f"{len(ids)} jobs to finish")
    return list(Job.objects.filter(id__in=ids))


def _assert_exactly_once(jobs):
    """Succeeded, one output each, one charge per paid attempt, ledger = job costs."""
    for job in jobs:
        assert job.status == JobStatus.SUCCEEDED, (job.id, job.error)
        assert Output.objects.filter(job=job).count() == 1
        assert Attempt.objects.filter(job=job, status="succeeded").count() == 1
    ids = [job.id for job in jobs]
    charges = LedgerEntry.objects.filter(job_id__in=ids, kind="charge")
    assert charges.count() == len(set(charges.values_list("attempt_id", flat=True)))
    # SQLite sums decimals as floats: compare at the ledger's 6 places
    ledger = money(charges.aggregate(t=Sum("amount"))["t"] or 0)
    assert ledger == money(sum((job.cost for job in Job.objects.filter(id__in=ids)), Decimal("0")))
    holds = LedgerEntry.objects.filter(job_id__in=ids, kind="hold").count()
    assert holds == LedgerEntry.objects.filter(job_id__in=ids, kind="release").count()  # every hold settled


def _running(job, timeout=30):
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.RUNNING, timeout, 0.05, "job to run")


@pytest.mark.parametrize("what", ["whole worker", "pool child"])
def test_a_worker_killed_mid_job_leaves_the_job_to_finish_once_with_one_charge(pool, backends, alice, what):
    fake1, fake2, spare = backends
    fake2.steps, fake2.step_delay = 25, 0.1
    first = pool.start(name="victim")
    pool.start_beat()
    [job] = _submit(alice, preference="cloud")
    _running(job)
    if what == "whole worker":
        pool.kill(first)
    else:
        for child in psutil.Process(first.pid).children(recursive=True):
            child.kill()
    pool.start(name="rescuer")
    [job] = _all_final([job])
    _assert_exactly_once([job])
    assert job.backend == spare and len(fake2.prompts) == 1  # the prompt ran once on ComfyUI
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


@pytest.mark.parametrize("restart", ["with its data", "empty"])
def test_every_job_completes_when_redis_restarts_under_load(pool, backends, redis_server, alice, restart):
    fake1, fake2, spare = backends
    fake1.steps, fake1.step_delay = 10, 0.05
    pool.start()
    pool.start_beat()
    jobs = _submit(alice, 6)
    _running(jobs[0])
    redis_server.stop()
    if restart == "empty":
        redis_server.wipe()
    time.sleep(1.5)
    redis_server.start()
    jobs = _all_final(jobs, timeout=120)
    _assert_exactly_once(jobs)


def test_a_job_submitted_while_redis_is_down_is_stored_and_runs_when_it_is_back(
        pool, backends, redis_server, alice, alice_client):
    pool.start()
    pool.start_beat()
    redis_server.stop()
    response = alice_client.post("/submit/", {"kind": "image", "preference": "local", "prompt": "offline",
                                              "width": 512, "height": 512}, follow=True)
    assert response.status_code == 200 and "Your job is queued" in response.content.decode()
    job = Job.objects.get()  # routed where it was submitted; its submit message could not be sent
    assert job.status == JobStatus.ROUTED and job.attempts.get().status == "pending"
    redis_server.start()
    [job] = _all_final([job])
    _assert_exactly_once([job])


@pytest.mark.parametrize("fault", ["hang", "http500", "garbage"])
def test_a_backend_that_breaks_mid_job_fails_over_after_bounded_retries(
        transactional_db, backends, alice, settings, fault):
    settings.COMFYUI_WATCH_SECONDS, settings.COMFYUI_POLL_INTERVAL, settings.COMFYUI_HTTP_TIMEOUT = 0.3, 0.05, 0.5
    settings.POLL_INTERVAL_SECONDS = 0.01
    fake1, fake2, spare = backends
    fake1.steps, fake1.step_delay = 100, 0.05
    [job] = _submit(alice)
    attempt = routed(job)
    services.attempt_submit(attempt_id=attempt.id)
    fake1.fail_mode = fault
    seq = 0
    while (countdown := services.attempt_poll(attempt_id=attempt.id, seq=seq)) is not None:
        seq += 1
        time.sleep(countdown)
    assert seq < 10  # bounded: a few failed polls, not an endless chain
    failed = Attempt.objects.get(id=attempt.id)
    assert failed.status == "failed" and failed.retryable
    second = services.job_route(job_id=job.id)
    assert second.backend == spare and Job.objects.get(id=job.id).failovers == 1


def test_a_dropped_websocket_falls_back_to_polling_and_finishes_on_the_same_backend(
        transactional_db, backends, alice, settings):
    settings.COMFYUI_WATCH_SECONDS, settings.COMFYUI_POLL_INTERVAL = 1, 0.05
    fake1, fake2, spare = backends
    fake1.steps, fake1.step_delay, fake1.fail_mode = 8, 0.05, "drop_ws"
    [job] = _submit(alice)
    attempt = routed(job)
    services.attempt_submit(attempt_id=attempt.id)
    seq = 0
    while services.attempt_poll(attempt_id=attempt.id, seq=seq) is not None:
        seq += 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts.count() == 1 and job.failovers == 0


def test_a_job_never_hangs_forever_the_sweeper_fails_it_at_its_deadline(transactional_db, backends, alice,
                                                                          settings):
    settings.JOB_DEADLINE_SECONDS = 60
    fake1, *_ = backends
    fake1.fail_mode = "hang"
    [job] = _submit(alice)
    attempt = routed(job)
    Attempt.objects.filter(id=attempt.id).update(status="running", handle={"prompt_id": "x", "client_id": "y"})
    Job.objects.filter(id=job.id).update(created_at=timezone.now() - timezone.timedelta(minutes=5))
    assert maintenance.sweep()["expired"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error == "Timed out: no result after 1 minutes"
    assert Attempt.objects.get(id=attempt.id).status == "failed"


def test_two_beat_processes_run_each_periodic_task_once_per_interval(pool, backends, alice, redis_server, settings):
    fake1, *_ = backends
    env = {**ENV, "HEALTH_PROBE_SECONDS": "3"}
    settings.HEALTH_PROBE_SECONDS = 3
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.all().delete()
    ensure_schedules()
    pool.env = env
    pool.start()
    started = time.monotonic()
    pool.start_beat("beat-a")
    pool.start_beat("beat-b")
    jobs = _submit(alice, 3, preference="cloud")
    jobs = _all_final(jobs)
    time.sleep(max(0, 10 - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    probes = Backend.objects.get(name="local").consecutive_successes
    assert 1 <= probes <= elapsed / 3 + 1  # two beats without the guard would probe twice as often
    _assert_exactly_once(jobs)


def test_a_burst_of_1000_api_jobs_all_succeed_once_with_a_consistent_ledger(pool, backends, alice, settings):
    from routing import tokens
    from django.test import Client

    settings.SUBMIT_RATE_PER_MINUTE = 100000
    fake1, fake2, spare = backends
    fake1.steps = fake2.steps = 0
    fake1.step_delay = fake2.step_delay = 0
    pool.start(concurrency=4)
    _, key = tokens.token_create(user=alice, name="burst")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    ids = []
    for i in range(1000):
        response = api.post("/api/jobs", {"prompt": f"burst {i}", "seed": i}, content_type="application/json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    jobs = _all_final([Job(id=i) for i in ids], timeout=400)
    _assert_exactly_once(jobs)
    assert Attempt.objects.filter(job_id__in=ids).count() == 1000
    assert len(fake1.prompts) + len(fake2.prompts) == 1000


def test_the_deploy_redis_config_keeps_messages_across_a_restart(tmp_path):
    from tests.conftest import free_port, redis_binary

    port = free_port()
    args = [redis_binary(), str(ROOT / "deploy" / "redis.conf"), "--port", str(port), "--dir", str(tmp_path),
            "--bind", "127.0.0.1"]
    client = redis_lib.Redis(port=port, socket_connect_timeout=0.5)

    def up():
        try:
            return client.ping()
        except redis_lib.RedisError:
            return False

    for round_ in range(2):
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(up, 10, message="redis")
            if round_ == 0:
                client.lpush("control", "a queued task message")
                time.sleep(1.2)  # appendfsync everysec: on disk within a second
            else:
                assert client.lrange("control", 0, -1) == [b"a queued task message"]
        finally:
            process.kill()  # not a clean shutdown: only the AOF can bring the message back
            process.wait(10)
