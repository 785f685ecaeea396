"""Pod services against the fake RunPod, driven in-process with `now` (no Celery, no sleeps of minutes).

Tasks the services would send are captured, not run; each test runs the next step itself.
"""
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.pods import busy_seconds, pod_cost
from routing.defaults import ensure_default_backends
from routing.models import Attempt, AttemptStatus, Backend, Job, JobStatus
from routing.selectors import estimate
from tests.conftest import wait_for
from tests.fakes.runpod import FakeRunPod
from workers.pods import placement, services
from workers.pods import autoscale as pod_autoscale
from workers.pods.models import CloudPod, PodAssignment, PodStatus


@pytest.fixture
def fake():
    with FakeRunPod(pod_start_delay=0.2) as server:
        yield server


@pytest.fixture
def pods(db, settings, fake):
    settings.RUNPOD_API_KEY = "test-key"
    settings.RUNPOD_API_BASE_URL = fake.url
    settings.RUNPOD_POD_URL_TEMPLATE = fake.pod_url_template
    settings.RUNPOD_POD_IMAGE = "comfy-hybrid-worker:test"
    settings.RUNPOD_MAX_PODS = 2
    settings.RUNPOD_POD_MAX_JOBS = 3
    ensure_default_backends()
    return Backend.objects.get(name="pods")


def waiting_jobs(user, backend, count):
    attempts = []
    for _ in range(count):
        job = Job.objects.create(user=user, prompt="a fox", status=JobStatus.ROUTED, backend=backend)
        attempts.append(Attempt.objects.create(job=job, backend=backend, number=1))
    return attempts


@pytest.fixture
def sent(monkeypatch):
    """Task names the services send (after commit), recorded instead of sent."""
    names = []
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, **options: names.append(name))
    return names


def ready_pod(fake, backend, **fields):
    """A pod that exists on the fake and is ready in our rows."""
    row = CloudPod.objects.create(backend=backend, name=f"comfy-hybrid-{CloudPod.objects.count()}")
    services.pod_spawn(pod_id=row.id)
    wait_for(lambda: services.pod_check(pod_id=row.id) == PodStatus.READY, 5, 0.05, "the pod to be ready")
    CloudPod.objects.filter(id=row.id).update(**fields)
    return CloudPod.objects.get(id=row.id)


def finish(attempt, at):
    Attempt.objects.filter(id=attempt.id).update(status=AttemptStatus.SUCCEEDED, started_at=at - timedelta(seconds=20),
                                                 finished_at=at)


def test_the_autoscaler_spawns_pods_for_waiting_jobs_up_to_the_maximum(
        pods, alice, sent, django_capture_on_commit_callbacks):
    waiting_jobs(alice, pods, 10)

    with django_capture_on_commit_callbacks(execute=True):
        first = pod_autoscale.autoscale()
    second = pod_autoscale.autoscale()

    assert len(first["spawned"]) == 2 and second["spawned"] == []  # 10 jobs / 3 per pod = 4, capped at 2
    assert sent.count("workers.pod_tasks.spawn_pod") == 2
    assert list(CloudPod.objects.values_list("status", flat=True)) == ["starting", "starting"]


def test_the_autoscaler_spawns_nothing_without_waiting_jobs_or_without_budget(pods, alice, monkeypatch):
    assert pod_autoscale.autoscale()["spawned"] == []
    waiting_jobs(alice, pods, 2)
    monkeypatch.setattr("workers.pods.autoscale.cloud_budget_left", lambda now=None: Decimal("0.01"))

    assert pod_autoscale.autoscale()["spawned"] == []


def test_without_a_pod_image_the_pods_backend_is_not_configured_and_nothing_is_spawned(pods, alice, settings):
    from routing.backends import missing_settings

    settings.RUNPOD_POD_IMAGE = ""
    assert missing_settings(pods) == ["RUNPOD_POD_IMAGE"]  # so the router never sends jobs there
    waiting_jobs(alice, pods, 1)
    assert pod_autoscale.autoscale()["spawned"] == []


def test_spawning_tries_gpu_types_in_order_and_keeps_the_one_runpod_could_place(pods, fake):
    fake.unavailable_gpus.add("NVIDIA GeForce RTX 4090")
    row = CloudPod.objects.create(backend=pods, name="comfy-hybrid-a")

    services.pod_spawn(pod_id=row.id)

    row.refresh_from_db()
    remote = fake.pods[row.runpod_id]
    assert row.gpu_type == "NVIDIA GeForce RTX 3090" and row.cost_per_hour == Decimal("0.43")
    assert row.url == f"{fake.url}/proxy/{row.runpod_id}-8188"
    assert remote.name == "comfy-hybrid-a" and remote.image == "comfy-hybrid-worker:test" and remote.ports == "8188/http"
    assert "COMFY_HYBRID_MODE=pod" in remote.env and "POD_IDLE_STOP_SECONDS=900" in remote.env
    assert "test-key" not in " ".join(remote.env)  # our key never goes to a pod
    # the name is looked up first (a redelivery adopts), then each GPU type is checked before it is asked for
    assert fake.graphql_ops == ["myself", "gpuTypes", "gpuTypes", "podFindAndDeployOnDemand"]


def test_a_redelivered_spawn_adopts_the_pod_the_first_delivery_made(pods, fake):
    row = CloudPod.objects.create(backend=pods, name="comfy-hybrid-b")
    earlier = fake.add_orphan_pod(name="comfy-hybrid-b")

    services.pod_spawn(pod_id=row.id)
    services.pod_spawn(pod_id=row.id)

    assert CloudPod.objects.get(id=row.id).runpod_id == earlier
    assert len(fake.pods) == 1


def test_a_pod_is_ready_only_once_runpod_reports_a_runtime_and_its_comfyui_answers(
        pods, fake, alice, sent, django_capture_on_commit_callbacks):
    fake.pod_start_delay = 0.4
    waiting_jobs(alice, pods, 2)
    row = CloudPod.objects.create(backend=pods, name="comfy-hybrid-c")
    services.pod_spawn(pod_id=row.id)

    assert services.pod_check(pod_id=row.id) == PodStatus.STARTING
    time.sleep(0.45)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.pod_check(pod_id=row.id) == PodStatus.READY

    assert sent == ["workers.tasks.submit_attempt"] * 2  # the waiting jobs go to it
    assert CloudPod.objects.get(id=row.id).ready_at is not None


def test_a_pod_that_never_gets_ready_is_given_up_and_terminated(pods, fake):
    fake.pod_start_delay = 3600
    row = CloudPod.objects.create(backend=pods, name="comfy-hybrid-d")
    services.pod_spawn(pod_id=row.id)
    later = timezone.now() + timedelta(seconds=901)

    assert services.pod_check(pod_id=row.id, now=later) == PodStatus.TERMINATING
    assert services.pod_terminate(pod_id=row.id)

    row.refresh_from_db()
    assert row.status == PodStatus.FAILED and "not ready after 900s" in row.last_error
    assert fake.terminated == [row.runpod_id]


def test_placing_a_job_picks_the_least_loaded_pod_with_room_and_is_idempotent(pods, fake, alice, settings):
    settings.RUNPOD_POD_MAX_JOBS = 2
    one, two = ready_pod(fake, pods), ready_pod(fake, pods)
    attempts = waiting_jobs(alice, pods, 5)

    placed = [placement.pod_place(attempt=a) for a in attempts]

    assert [p["id"] if p else None for p in placed[:4]].count(one.runpod_id) == 2
    assert [p["id"] for p in placed[:4]].count(two.runpod_id) == 2
    assert placed[4] is None  # both full: it waits
    assert placement.pod_place(attempt=attempts[0]) == placed[0]
    assert PodAssignment.objects.count() == 4
    assert set(CloudPod.objects.values_list("status", flat=True)) == {"busy"}


def test_the_reaper_terminates_a_pod_idle_for_three_minutes_after_its_last_job(pods, fake, alice, settings):
    settings.RUNPOD_WARM_WINDOW_SECONDS = 0  # the fixed limits, whatever the demand
    pod = ready_pod(fake, pods)
    attempt = waiting_jobs(alice, pods, 1)[0]
    placement.pod_place(attempt=attempt)
    ended = timezone.now()
    finish(attempt, ended)

    assert services.pod_reap_idle(now=ended + timedelta(seconds=179)) == []
    assert services.pod_reap_idle(now=ended + timedelta(seconds=181)) == [pod.id]
    assert CloudPod.objects.get(id=pod.id).status == PodStatus.TERMINATING


def test_an_expensive_pod_is_reaped_after_two_minutes(pods, fake, settings):
    settings.RUNPOD_WARM_WINDOW_SECONDS = 0
    pod = ready_pod(fake, pods, cost_per_hour=Decimal("3.29"))

    assert services.pod_reap_idle(now=pod.ready_at + timedelta(seconds=119)) == []
    assert services.pod_reap_idle(now=pod.ready_at + timedelta(seconds=121)) == [pod.id]


def test_an_idle_pod_is_stopped_at_once_unless_the_cloud_work_coming_would_pay_for_keeping_it(
        pods, fake, alice, settings):
    settings.RUNPOD_WARM_WINDOW_SECONDS = 900
    pod = ready_pod(fake, pods, cost_per_hour=Decimal("0.69"))
    attempt = waiting_jobs(alice, pods, 1)[0]
    placement.pod_place(attempt=attempt)
    ended = timezone.now()
    finish(attempt, ended)
    # one image in 15 min would cost $0.00775 on serverless, far from the pod's $0.1725 over them
    assert services.pod_reap_idle(now=ended + timedelta(seconds=1)) == [pod.id]

    # 23 cloud images in the window: $0.178 on serverless, more than the pod's 15 min: kept warm
    other = ready_pod(fake, pods, cost_per_hour=Decimal("0.69"))
    runpod = Backend.objects.get(name="runpod")
    for _ in range(23):
        Attempt.objects.create(job=Job.objects.create(user=alice, prompt="x", status=JobStatus.RUNNING,
                                                      backend=runpod), backend=runpod, number=1)
    assert services.pod_reap_idle(now=other.ready_at + timedelta(seconds=60)) == []
    assert services.pod_reap_idle(now=other.ready_at + timedelta(seconds=181)) == [other.id]


def test_jobs_waiting_for_a_pod_keep_an_idle_one_for_its_idle_limit(pods, fake, alice, settings):
    settings.RUNPOD_WARM_WINDOW_SECONDS = 900
    pod = ready_pod(fake, pods)
    waiting_jobs(alice, pods, 1)  # not placed yet: the next dispatch gives it this pod

    assert services.pod_reap_idle(now=pod.ready_at + timedelta(seconds=60)) == []


def test_a_busy_pod_is_never_reaped(pods, fake, alice):
    pod = ready_pod(fake, pods)
    placement.pod_place(attempt=waiting_jobs(alice, pods, 1)[0])

    assert services.pod_reap_idle(now=timezone.now() + timedelta(hours=5)) == []
    assert CloudPod.objects.get(id=pod.id).status == PodStatus.BUSY


def test_terminating_records_uptime_and_as_idle_what_the_jobs_were_not_charged(pods, fake, alice):
    pod = ready_pod(fake, pods)
    now = timezone.now()
    CloudPod.objects.filter(id=pod.id).update(created_at=now - timedelta(seconds=600), cost_per_hour=Decimal("0.72"))
    done, failed = waiting_jobs(alice, pods, 2)
    for attempt in (done, failed):
        placement.pod_place(attempt=attempt)
    # the done job was charged its 60 s of execution at $0.72/h when it ended; the failed one nothing
    Attempt.objects.filter(id=done.id).update(status=AttemptStatus.SUCCEEDED, started_at=now - timedelta(seconds=300),
                                              finished_at=now - timedelta(seconds=240), cost=Decimal("0.012"))
    Job.objects.filter(id=done.job_id).update(status=JobStatus.SUCCEEDED, cost=Decimal("0.012"))
    Attempt.objects.filter(id=failed.id).update(status=AttemptStatus.FAILED, started_at=now - timedelta(seconds=250),
                                                finished_at=now - timedelta(seconds=200))
    services.pod_give_up(pod_id=pod.id, error="test")
    CloudPod.objects.filter(id=pod.id).update(last_error="")

    assert services.pod_terminate(pod_id=pod.id, now=now)
    assert not services.pod_terminate(pod_id=pod.id, now=now)  # a second delivery changes nothing

    pod.refresh_from_db()
    assert pod.status == PodStatus.TERMINATED and pod.jobs_processed == 1
    assert pod.uptime_cost == Decimal("0.120000")  # 600 s at $0.72/h
    assert pod.busy_seconds == 100  # 300→240 and 250→200 overlap: 100 s with work in flight
    assert PodAssignment.objects.get(attempt=done).cost == Decimal("0.012")
    assert pod.idle_cost == Decimal("0.108000")  # everything the job was not charged for
    assert Job.objects.get(id=done.job_id).cost == Decimal("0.012")  # nothing added at the pod's end
    assert fake.terminated == [pod.runpod_id]
    from billing.models import LedgerEntry

    [idle] = LedgerEntry.objects.filter(key=f"pod-idle:{pod.id}")
    assert idle.kind == "idle" and idle.amount == pod.idle_cost and idle.user_id is None


def test_a_pods_uptime_is_held_against_the_installations_cap_as_it_accrues(pods, fake, alice, settings, sent):
    from billing import ledger
    from billing.models import SpendCounter

    settings.RUNPOD_AUTOSCALE_SECONDS = 15
    pod = ready_pod(fake, pods)
    now = timezone.now()
    CloudPod.objects.filter(id=pod.id).update(created_at=now - timedelta(seconds=600), cost_per_hour=Decimal("0.72"))
    installation = lambda: SpendCounter.objects.get(scope=SpendCounter.Scope.GLOBAL_MONTH).amount  # noqa: E731
    done = waiting_jobs(alice, pods, 1)[0]
    placement.pod_place(attempt=done)
    Attempt.objects.filter(id=done.id).update(status=AttemptStatus.SUCCEEDED, cost=Decimal("0.012"),
                                              started_at=now - timedelta(seconds=100), finished_at=now)

    pod_autoscale.autoscale(now=now)

    # 600 s up + 30 s until after the next pass, at $0.72/h = $0.126, less the job's $0.012 charge,
    # plus one more step of room
    assert ledger.pod_held(pod.id) == Decimal("0.120000") and installation() == Decimal("0.120000")
    pod_autoscale.autoscale(now=now + timedelta(seconds=5))
    assert ledger.pod_held(pod.id) == Decimal("0.120000")  # still covered: nothing written
    pod_autoscale.autoscale(now=now + timedelta(seconds=60))
    assert ledger.pod_held(pod.id) == Decimal("0.132000")

    # The pod ends: its hold is given back and its idle time recorded instead.
    services.pod_give_up(pod_id=pod.id, error="test")
    CloudPod.objects.filter(id=pod.id).update(last_error="")
    assert services.pod_terminate(pod_id=pod.id, now=now + timedelta(seconds=60))
    pod.refresh_from_db()
    assert pod.idle_cost == Decimal("0.120000")  # 660 s up = $0.132, less the job's $0.012
    assert installation() == pod.idle_cost  # the job's charge is its user's and is not moved here
    assert not ledger.release_pod(pod=pod)  # once


def test_a_pod_the_installations_cap_refuses_is_ended_once_no_job_runs_on_it(
        pods, fake, alice, settings, sent, django_capture_on_commit_callbacks):
    from billing import ledger

    settings.GLOBAL_MONTHLY_CAP_USD = Decimal("0.05")
    pod = ready_pod(fake, pods)
    now = timezone.now()
    CloudPod.objects.filter(id=pod.id).update(created_at=now - timedelta(seconds=600), cost_per_hour=Decimal("0.72"))
    running = waiting_jobs(alice, pods, 1)[0]
    placement.pod_place(attempt=running)
    Attempt.objects.filter(id=running.id).update(status=AttemptStatus.RUNNING, started_at=now)

    pod_autoscale.autoscale(now=now)  # $0.126 of uptime against $0.05 left: refused, but a job runs on it

    assert ledger.pod_held(pod.id) == 0
    assert CloudPod.objects.get(id=pod.id).status == PodStatus.BUSY
    Attempt.objects.filter(id=running.id).update(status=AttemptStatus.FAILED, finished_at=now)  # its meter stopped it
    with django_capture_on_commit_callbacks(execute=True):
        pod_autoscale.autoscale(now=now + timedelta(seconds=15))

    pod.refresh_from_db()
    assert pod.status == PodStatus.TERMINATING
    assert pod.last_error.startswith("The installation's monthly spending limit: this needs about $0.13 but only "
                                     "$0.05 of $0.05 is left"), pod.last_error
    assert "workers.pod_tasks.terminate_pod" in sent


def test_reconcile_terminates_untracked_pods_and_pods_we_ended_but_never_others(pods, fake):
    from billing.models import LedgerEntry

    orphan = fake.add_orphan_pod(name="comfy-hybrid-lost")
    fake.pods[orphan].runtime_at -= 3600  # it has run an hour, billed, with no row here
    foreign = fake.add_orphan_pod(name="my-notebook")
    ended = ready_pod(fake, pods)
    CloudPod.objects.filter(id=ended.id).update(status=PodStatus.TERMINATED)

    report = services.pod_reconcile()

    assert sorted(report["terminated"]) == sorted([orphan, ended.runpod_id])
    assert sorted(fake.terminated) == sorted([orphan, ended.runpod_id])
    assert foreign in fake.pods
    # the orphan's hour is money RunPod bills: in the ledger as the installation's, once
    [lost] = LedgerEntry.objects.filter(pod_id=orphan)
    assert lost.kind == "idle" and Decimal("0.69") <= lost.amount < Decimal("0.70") and lost.user_id is None
    services.pod_reconcile()
    assert LedgerEntry.objects.filter(pod_id=orphan).count() == 1


def test_reconcile_closes_a_pod_that_stopped_itself(pods, fake):
    pod = ready_pod(fake, pods)
    fake.pods[pod.runpod_id].desired = "EXITED"  # start.sh's watchdog stopped it

    assert services.pod_reconcile()["closed"] == [pod.runpod_id]
    assert CloudPod.objects.get(id=pod.id).status == PodStatus.TERMINATING


def test_a_pod_whose_comfyui_stops_answering_is_replaced(pods, fake, settings):
    pod = ready_pod(fake, pods)
    fake.kill_comfy(pod.runpod_id)

    first = services.pod_check(pod_id=pod.id)
    second = services.pod_check(pod_id=pod.id)

    assert first == PodStatus.READY and second == PodStatus.TERMINATING
    assert "ComfyUI stopped answering" in CloudPod.objects.get(id=pod.id).last_error


def test_an_idle_pod_with_room_is_free_and_a_new_pod_costs_spin_up_run_and_idle_tail(pods, fake, alice, settings):
    job = Job.objects.create(user=alice, prompt="x")
    cost, seconds = estimate(pods, job)
    # ready after 180 + 20 s, but billed until the reaper stops it 180 s later: $0.69/h × 380 s
    assert seconds == 180 + 20 and cost == Decimal("0.072833")

    ready_pod(fake, pods)

    assert estimate(pods, job) == (Decimal("0"), 20)


def test_a_new_pod_is_priced_at_the_rate_runpod_reported_for_the_last_one(pods, fake, alice, settings):
    fake.unavailable_gpus = {gpu for gpu in settings.RUNPOD_POD_GPU_TYPES if "H100" not in gpu}
    settings.RUNPOD_POD_GPU_TYPES = [*settings.RUNPOD_POD_GPU_TYPES, "NVIDIA H100 80GB HBM3"]
    first = ready_pod(fake, pods)
    assert first.cost_per_hour == Decimal("3.29")  # what RunPod returned for the H100 it placed
    CloudPod.objects.filter(id=first.id).update(status=PodStatus.TERMINATED)

    cost, seconds = estimate(pods, Job.objects.create(user=alice, prompt="x"))

    # not RUNPOD_POD_PRICE_PER_HOUR; and above $1/h the reaper stops it after 120 s idle, not 180
    assert cost == (Decimal("3.29") * (180 + 20 + 120) / 3600).quantize(cost)


def test_jobs_waiting_too_long_for_a_pod_fail_over(pods, alice, settings):
    settings.RUNPOD_MAX_PODS = 0
    attempt = waiting_jobs(alice, pods, 1)[0]

    pod_autoscale.autoscale(now=timezone.now() + timedelta(seconds=301))

    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.FAILED and attempt.retryable
    assert "No cloud pod became free within 5 minutes" in attempt.error


def test_when_runpod_has_no_gpu_the_waiting_jobs_fail_over_at_once(pods, fake, alice):
    fake.unavailable_gpus.update(["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090", "NVIDIA A40"])
    attempt = waiting_jobs(alice, pods, 1)[0]
    row = CloudPod.objects.create(backend=pods, name="comfy-hybrid-e")

    services.pod_spawn(pod_id=row.id)

    assert CloudPod.objects.get(id=row.id).status == PodStatus.FAILED
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.FAILED and attempt.retryable
    assert "no longer any instances available" in attempt.error


@pytest.mark.django_db
def test_beat_sends_each_periodic_task_to_the_queue_its_worker_consumes_with_an_expiry(settings):
    """What beat really sends, from the rows migrate leaves in django-celery-beat's tables: each
    message lands on the queue its task is declared on (the queue of the worker that runs it),
    carries an expiry, and a singleton's once-per-interval window is beat's interval."""
    from django.core.management import call_command
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from project.celery import app

    app.loader.import_default_modules()  # the tasks, found as a worker finds them
    PeriodicTask.objects.all().delete()
    call_command("migrate", verbosity=0)  # post_migrate creates them again, once
    call_command("migrate", verbosity=0)
    entries = [entry for entry in DatabaseScheduler(app=app, lazy=True).all_as_schedule().values()
               if entry.task != "celery.backend_cleanup"]
    assert len({entry.task for entry in entries}) == len(entries) >= 6  # migrating twice added no second row
    with app.connection_for_write() as connection:
        for entry in entries:
            task = app.tasks[entry.task]
            inbox = connection.SimpleQueue(task.queue)
            inbox.clear()
            DatabaseScheduler(app=app, lazy=True).apply_async(entry, advance=False)
            message = inbox.get(timeout=5)
            assert message.headers["task"] == entry.task and message.headers["expires"], entry.task
            message.ack()
            inbox.close()
            if task.once_every:  # a shorter window would let a second beat double it; longer, skip runs
                assert getattr(settings, task.once_every) == entry.schedule.run_every.total_seconds(), entry.task


def test_busy_time_is_the_union_of_the_jobs_on_the_pod_clipped_to_its_life():
    t = timezone.now()
    at = lambda seconds: t + timedelta(seconds=seconds)  # noqa: E731

    assert busy_seconds([(at(10), at(30)), (at(20), at(40)), (at(50), at(60))], at(0), at(100)) == 40
    assert busy_seconds([(at(-10), at(5)), (at(95), at(120))], at(0), at(100)) == 10


def test_the_pods_idle_cost_is_its_uptime_cost_less_what_its_jobs_were_charged():
    t = timezone.now()
    jobs = [(t, t + timedelta(seconds=7))] * 3

    cost = pod_cost(cost_per_hour=Decimal("1.000001"), started=t - timedelta(seconds=50),
                    ended=t + timedelta(seconds=50), jobs=jobs, charged=Decimal("0.001"))

    assert cost.uptime_cost == Decimal("0.027778") and cost.busy_seconds == 7
    assert cost.charged + cost.idle_cost == cost.uptime_cost
    # rounding (a job charged a micro-dollar more than the pod's share of it) never makes it negative
    assert pod_cost(cost_per_hour=Decimal("1"), started=t, ended=t + timedelta(seconds=1), jobs=[],
                    charged=Decimal("0.01")).idle_cost == 0


def test_the_pods_backend_probe_reports_the_runpod_api_and_a_missing_image(pods, fake, settings):
    from routing.backends import client_for_backend

    fake.add_orphan_pod(name="comfy-hybrid-x")
    assert client_for_backend(pods).health().ok
    settings.RUNPOD_API_KEY = "sk-wrong"
    assert client_for_backend(pods).health().detail == "RUNPOD_API_KEY rejected by RunPod (HTTP 401)"
    settings.RUNPOD_API_KEY, settings.RUNPOD_POD_IMAGE = "test-key", ""
    assert client_for_backend(pods).health().detail == "RUNPOD_POD_IMAGE not set"
