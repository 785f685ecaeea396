"""Caps bound what is really spent: real Redis, real Celery workers, the fake RunPod.

A per-second backend's hold is a meter (billing/ledger.py): each poll extends it past the time
used so far; when a cap refuses, the remote job is cancelled and the time it ran is charged.
The fake RunPod's record of how long each job ran is the provider's truth the ledger is held to.
"""
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import ledger
from billing.models import LedgerEntry, SpendCounter
from billing.pricing import money
from routing import services
from routing.models import Attempt, Backend, Job, JobStatus
from tests.conftest import configure, wait_for
from tests.fakes.runpod import ENDPOINT_ID, FakeRunPod

pytestmark = pytest.mark.integration

PRICE = Decimal("0.001")  # $/s
ESTIMATE_SECONDS = 5.0  # what the router expects a run to take
RUN_SECONDS = 15.0  # what a run really takes: three times the estimate
POLL = 1.0  # RUNPOD_POLL_INTERVAL: the meter's step
CAP = Decimal("0.10")  # daily cap: exactly 20 estimates


@pytest.fixture
def runpod(settings, workers, local_backend, fake_comfyui):
    with FakeRunPod(queue_delay=0.1, run_delay=RUN_SECONDS) as fake:
        configure(settings, workers, RUNPOD_API_KEY="test-key", RUNPOD_API_BASE_URL=fake.url,
                  RUNPOD_ENDPOINT_BASE_URL=fake.serverless_url, RUNPOD_ENDPOINT_ID=ENDPOINT_ID,
                  RUNPOD_POLL_INTERVAL=POLL, DAILY_CAP_USD=CAP)
        Backend.objects.filter(id=local_backend.id).update(  # the local GPU answers, its queue is full
            url=fake_comfyui.url, health="up", last_probe_at=timezone.now(), queue_depth=settings.LOCAL_QUEUE_LIMIT)
        Backend.objects.filter(kind="pod").update(enabled=False)
        Backend.objects.filter(name="runpod").update(price_per_second=PRICE, expected_image_seconds=ESTIMATE_SECONDS)
        yield fake


def test_twenty_slow_serverless_jobs_spend_no_more_than_the_cap_plus_one_poll_interval(runpod, workers, alice):
    workers.start(concurrency=4)
    jobs = [services.job_submit(user=alice, kind="image", preference="cloud", prompt="a lighthouse", seed=i)
            for i in range(20)]

    jobs = wait_for(lambda: _all_final(jobs), 120, 0.5, "every job to end")

    assert all(job.attempts.count() == 1 for job in jobs)  # 20 estimates fit the cap exactly: all ran
    stopped = [job for job in jobs if job.status != JobStatus.SUCCEEDED]
    remote = [runpod.jobs[job.attempts.get().handle["job_id"]] for job in stopped]
    wait_for(lambda: all(job.status == "CANCELLED" for job in remote), 20, 0.1, "RunPod to cancel them")
    provider = runpod.billed_seconds()
    provider_cost = sum(Decimal(str(seconds)) for seconds in provider.values()) * PRICE
    charged = ledger.ledger_total(user=alice)
    one_poll = 20 * PRICE * Decimal(str(POLL))  # one poll interval of every running job's price
    assert charged <= CAP + one_poll, charged
    assert provider_cost <= CAP + one_poll, provider_cost  # what RunPod bills is bounded too
    assert abs(provider_cost - charged) <= one_poll, (provider_cost, charged)  # and recorded
    # Without the meter all 20 ran to the end: 20 x 15 s x $0.001 = $0.30 against a $0.10 cap.
    assert stopped and all("Daily spending limit" in job.attempts.get().error for job in stopped)
    # (All 20 run at once and each needs 3x its estimate: the cap runs out while every one is a
    # third done, and no job is still queued whose room could go to the others. See the next test.)
    # Every hold is settled and the counter is the ledger.
    open_holds = [a for a in Attempt.objects.all() if not LedgerEntry.objects.filter(key=f"release:{a.id}").exists()]
    assert open_holds == []
    day = SpendCounter.objects.get(scope=SpendCounter.Scope.USER_DAY, user=alice)
    assert day.amount == charged


def test_a_run_in_progress_gets_the_room_of_jobs_still_queued_on_runpod(runpod, workers, alice, settings):
    configure(settings, workers, DAILY_CAP_USD=Decimal("0.02"))
    workers.start(concurrency=4)
    submit = lambda seed: services.job_submit(user=alice, kind="image", preference="cloud", prompt="a fox", seed=seed)
    running = submit(0)
    wait_for(lambda: Attempt.objects.filter(job=running, running_at__isnull=False).exists(), 30, 0.1, "it to run")
    runpod.queue_delay = 3600  # RunPod has no free worker for the next ones
    queued = [submit(1), submit(2)]  # three $0.005 holds; the running job alone needs $0.015
    wait_for(lambda: Attempt.objects.filter(job__in=queued, status="submitted").count() == 2, 30, 0.1, "them to queue")

    running, *queued = wait_for(lambda: _all_final([running, *queued]), 60, 0.5, "every job to end")

    assert running.status == JobStatus.SUCCEEDED, running.attempts.get().error
    assert [job.status for job in queued] == [JobStatus.FAILED] * 2
    assert all(job.attempts.count() == 1 for job in queued)  # a stop is final: no retry loop against the cap
    attempts = [job.attempts.get() for job in queued]
    assert all(a.error.startswith("Stopped after 0 s") and a.cost == 0 for a in attempts), [a.error for a in attempts]
    remote = [runpod.jobs[a.handle["job_id"]] for a in attempts]  # the cancel is a task of its own
    wait_for(lambda: all(job.status == "CANCELLED" for job in remote), 20, 0.1, "RunPod to cancel them")
    charged = ledger.ledger_total(user=alice)
    assert charged == running.cost and charged <= Decimal("0.02")


def _all_final(jobs):
    rows = [Job.objects.get(id=job.id) for job in jobs]
    return rows if all(row.is_final for row in rows) else None


# --- a worker killed during a paid call ---------------------------------------------------------
def _sweep_until(condition, timeout, message):
    from routing import maintenance

    def tick():
        maintenance.sweep()
        return condition()

    return wait_for(tick, timeout, 0.3, message)


def _unmatched():
    return list(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.UNMATCHED))


def test_a_worker_killed_during_runpod_run_leaves_no_unrecorded_run(runpod, workers, alice, settings):
    configure(settings, workers, SWEEP_AFTER_SECONDS=1, SUBMIT_LEASE_SECONDS=1, RUNPOD_HTTP_TIMEOUT=60)
    runpod.run_delay, runpod.run_answer_delay = 0.2, 3600  # RunPod queues the job, its answer never comes
    doomed = workers.start(queues="cloud", concurrency=1, name="doomed")
    workers.start(queues="control", concurrency=1, name="control")
    job = services.job_submit(user=alice, kind="image", preference="cloud", prompt="a lighthouse")
    wait_for(lambda: len(runpod.jobs) == 1, 30, 0.1, "the /run to reach RunPod")

    workers.kill(doomed)  # SIGKILL in the crash window: RunPod has the job, we have no id
    runpod.run_answer_delay = 0
    workers.start(queues="cloud", concurrency=1, name="after")
    job = _sweep_until(lambda: _all_final([job]), 60, "the job to end")[0]

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len(runpod.jobs) == 2  # the first run cannot be found again (no listing, no idempotency)
    [charge] = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE)
    [lost] = _unmatched()
    assert lost.user_id is None and lost.amount == ledger.first_hold(job.attempts.get()) > 0
    # Every provider-side run is in the ledger: one charged to the user, one as the operator's.
    assert len(runpod.jobs) == len([charge]) + len([lost])
    installation = SpendCounter.objects.get(scope=SpendCounter.Scope.GLOBAL_MONTH)
    assert installation.amount == charge.amount + lost.amount
    assert SpendCounter.objects.get(scope=SpendCounter.Scope.USER_DAY, user=alice).amount == charge.amount


def test_a_worker_killed_during_gemini_generate_content_leaves_no_unrecorded_run(workers, alice, settings):
    from tests.fakes.gemini import DEFAULT_API_KEY, FakeGemini

    with FakeGemini() as gemini:
        configure(settings, workers, SWEEP_AFTER_SECONDS=1, GEMINI_API_KEY=DEFAULT_API_KEY,
                  GEMINI_BASE_URL=gemini.url, GEMINI_HTTP_TIMEOUT=60)
        gemini.paid_answer_delay = 3600  # Google makes the image; its answer never comes
        doomed = workers.start(queues="gemini", concurrency=1, name="doomed")
        workers.start(queues="control", concurrency=1, name="control")
        job = services.job_submit(user=alice, kind="image", preference="gemini", prompt="a lighthouse")
        wait_for(lambda: len(gemini.calls("generateContent")) == 1, 30, 0.1, "the call to reach Google")

        workers.kill(doomed)
        gemini.paid_answer_delay = 0
        workers.start(queues="gemini", concurrency=1, name="after")
        job = _sweep_until(lambda: _all_final([job]), 60, "the job to end")[0]

        assert job.status == JobStatus.SUCCEEDED, job.error
        made = len(gemini.calls("generateContent"))
    assert made == 2
    charges = list(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE))
    lost = _unmatched()
    assert made == len(charges) + len(lost)
    assert [entry.amount for entry in lost] == [ledger.first_hold(job.attempts.get())]
    assert lost[0].user_id is None and "worker died" in lost[0].note


def test_a_run_that_fails_on_runpod_is_recorded_as_the_installations_spend(runpod, workers, alice):
    runpod.script({"status": "FAILED", "error": "CUDA out of memory", "run_delay": 2.0})
    workers.start(concurrency=2)
    job = services.job_submit(user=alice, kind="image", preference="cloud", prompt="a lighthouse")

    [job] = wait_for(lambda: _all_final([job]), 60, 0.3, "the job to end")

    first = job.attempts.order_by("number").first()
    assert first.status == "failed" and first.running_at is not None
    [lost] = _unmatched()
    assert lost.attempt_id == first.id and lost.user_id is None and lost.amount > 0  # RunPod bills failed runs
    assert runpod.billed_seconds()[first.handle["job_id"]] == 2.0
    assert lost.amount == PRICE * 2  # the executionTime RunPod reports for the failed run
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, attempt=first).exists()
    wait_for(lambda: first.handle["job_id"] in runpod.cancelled, 20, 0.1, "the cancel to reach RunPod")


def _stopped_while_queued(runpod, user, ran_for):
    """An attempt we stop while we last saw it queued (a cap made room, the user cancelled),
    which RunPod started `ran_for` seconds ago meanwhile (None: it is still queued there)."""
    from routing.backends import client_for_backend

    backend = Backend.objects.get(name="runpod")
    handle = client_for_backend(backend).submit(
        {"attempt_id": "a", "job_id": "j", "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
    if ran_for is not None:
        runpod.jobs[handle["job_id"]].created -= ran_for + runpod.queue_delay
    job = Job.objects.create(user=user, prompt="a fox", status=JobStatus.RUNNING)
    return Attempt.objects.create(job=job, backend=backend, number=1, status="submitted", handle=handle)


def test_a_run_that_started_after_we_last_looked_is_recorded_once_it_is_cancelled(runpod, alice):
    attempt = _stopped_while_queued(runpod, alice, ran_for=3.0)
    services.attempt_fail(attempt_id=attempt.id, retryable=False, used=Decimal("0"), error="Stopped after 0 s")
    assert _unmatched() == []  # we never saw it run

    services.attempt_cancel_remote(attempt_id=attempt.id)
    services.attempt_cancel_remote(attempt_id=attempt.id)  # a second cancel records nothing more

    remote = runpod.jobs[attempt.handle["job_id"]].as_status()
    assert remote["status"] == "CANCELLED" and remote["executionTime"] >= 3000
    [lost] = _unmatched()
    assert lost.key == f"unmatched:{attempt.id}:failed-run" and lost.user_id is None
    assert lost.amount == money(PRICE * Decimal(remote["executionTime"]) / 1000)  # what RunPod bills
    assert ledger.ledger_total(user=alice) == 0  # the user saw it queued: not theirs to pay


def test_a_given_up_run_that_ran_longer_than_we_saw_is_topped_up_to_runpods_seconds(runpod, alice):
    attempt = _stopped_while_queued(runpod, alice, ran_for=4.0)
    Attempt.objects.filter(id=attempt.id).update(running_at=timezone.now() - timedelta(seconds=1))
    services.attempt_fail(attempt_id=attempt.id, retryable=True, outage=True, error="RunPod did not answer")
    [seen] = _unmatched()  # the second we saw it running
    assert PRICE * Decimal("0.9") <= seen.amount <= PRICE * 2

    services.attempt_cancel_remote(attempt_id=attempt.id)

    remote = runpod.jobs[attempt.handle["job_id"]].as_status()
    assert sorted(e.key for e in _unmatched()) == [seen.key, seen.key + ":after-cancel"]
    assert sum(e.amount for e in _unmatched()) == money(PRICE * Decimal(remote["executionTime"]) / 1000)


def test_a_cancelled_run_that_never_started_records_nothing(runpod, alice):
    runpod.queue_delay = 3600
    attempt = _stopped_while_queued(runpod, alice, ran_for=None)
    services.attempt_fail(attempt_id=attempt.id, retryable=False, used=Decimal("0"), error="Stopped after 0 s")

    services.attempt_cancel_remote(attempt_id=attempt.id)

    assert runpod.jobs[attempt.handle["job_id"]].status == "CANCELLED"
    assert _unmatched() == [] and ledger.ledger_total() == 0


# --- pods: a pod's seconds are metered like a serverless run's -----------------------------------
POD_GPU = "NVIDIA H100 80GB HBM3"  # $3.29/h on the fake (RunPod's secure-cloud price)
POD_CAP = Decimal("0.01")  # about 11 s of H100
POD_POLL = 0.2 + 1.0  # COMFYUI_POLL_INTERVAL + COMFYUI_WATCH_SECONDS: one poll of a pod's job


@pytest.fixture
def pod_cloud(settings, workers, local_backend, fake_comfyui):
    # each job executes for about 3 s on its pod (10 sampler steps of 0.3 s)
    with FakeRunPod(pod_start_delay=0.2, pod_comfy_kwargs={"steps": 10, "step_delay": 0.3}) as fake:
        configure(settings, workers, RUNPOD_API_KEY="test-key", RUNPOD_API_BASE_URL=fake.url,
                  RUNPOD_POD_URL_TEMPLATE=fake.pod_url_template, RUNPOD_POD_IMAGE="comfy-hybrid-worker:test",
                  RUNPOD_MAX_PODS=1, RUNPOD_POD_MAX_JOBS=10, RUNPOD_IDLE_SECONDS=1, RUNPOD_IDLE_SECONDS_EXPENSIVE=1,
                  COMFYUI_POLL_INTERVAL=0.2, COMFYUI_WATCH_SECONDS=1.0, DAILY_CAP_USD=POD_CAP)
        settings.RUNPOD_POD_GPU_TYPES = [POD_GPU]
        workers.env["RUNPOD_POD_GPU_TYPES"] = POD_GPU
        Backend.objects.filter(id=local_backend.id).update(
            url=fake_comfyui.url, health="up", last_probe_at=timezone.now(), queue_depth=settings.LOCAL_QUEUE_LIMIT)
        Backend.objects.filter(name="runpod").update(enabled=False)  # the pod is the only cloud backend
        yield fake


def _ready_pod(fake):
    from workers.pods import services as pod_services
    from workers.pods.models import CloudPod, PodStatus

    row = CloudPod.objects.create(backend=Backend.objects.get(name="pods"), name="comfy-hybrid-meter")
    pod_services.pod_spawn(pod_id=row.id)
    wait_for(lambda: pod_services.pod_check(pod_id=row.id) == PodStatus.READY, 20, 0.1, "the pod to be ready")
    return CloudPod.objects.get(id=row.id)


def test_jobs_on_a_running_pod_spend_no_more_than_the_cap_plus_one_poll_interval(pod_cloud, workers, alice):
    from workers.pods import services as pod_services
    from workers.pods.models import CloudPod, PodStatus

    pod = _ready_pod(pod_cloud)
    rate = pod.cost_per_hour / 3600
    assert pod.cost_per_hour == Decimal("3.29")  # the rate RunPod returned for the GPU it gave
    workers.start(concurrency=4)
    jobs = [services.job_submit(user=alice, kind="image", preference="cloud", prompt="a lighthouse", seed=i)
            for i in range(10)]  # a pod with room is estimated at $0: every job starts on a $0 hold

    jobs = wait_for(lambda: _all_final(jobs), 120, 0.5, "every job to end")

    assert {job.attempts.get().backend.name for job in jobs} == {"pods"}
    done = [job for job in jobs if job.status == JobStatus.SUCCEEDED]
    stopped = [job for job in jobs if job.status != JobStatus.SUCCEEDED]
    # ten 3 s jobs would cost $0.027 at $3.29/h: the cap lets about a third of that run
    assert 2 <= len(done) <= 4 and stopped, [job.error for job in jobs]
    assert all("Daily spending limit" in job.attempts.get().error for job in stopped)
    charged = ledger.ledger_total(user=alice)
    assert charged <= POD_CAP + rate * Decimal(str(POD_POLL)), charged
    assert charged == sum(job.cost for job in jobs)  # each job's seconds on the pod, charged when it ended
    assert all(job.cost == money(rate * Decimal(str(job.attempts.get().seconds))) for job in done)
    day = SpendCounter.objects.get(scope=SpendCounter.Scope.USER_DAY, user=alice)
    assert day.amount == charged  # every hold is settled

    # The pod ends; what RunPod bills for it is in the ledger: the jobs' seconds plus its idle time.
    time.sleep(1.1)
    assert pod_services.pod_reap_idle() == [pod.id]
    wait_for(lambda: CloudPod.objects.get(id=pod.id).status == PodStatus.TERMINATED, 20, 0.1, "the pod to end")
    pod.refresh_from_db()
    assert pod.uptime_cost == charged + pod.idle_cost
    provider = Decimal(str(pod_cloud.billed_pod_cost()))
    assert abs(provider - ledger.ledger_total()) <= rate * 2, (provider, ledger.ledger_total())  # our clock vs RunPod's
