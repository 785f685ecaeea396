"""A GPU fleet, simulated with real processes: each "machine" is a fake ComfyUI and the worker
that joined with it (`manage.py gpu_worker`), consuming only its own backend's queue. A
control worker routes; this process plays beat (probes sent through each machine's queue, the
sweeper) on every tick of its wait loop.
"""
import signal

import pytest

from routing import maintenance, services
from routing.fleet import LOST
from routing.models import Attempt, Backend, HealthState, Job, JobStatus
from tests.conftest import configure, wait_for
from tests.fakes.comfyui import FakeComfyUI
from workers import tasks

pytestmark = pytest.mark.integration

FAST = {"COMFYUI_POLL_INTERVAL": 0.1, "COMFYUI_WATCH_SECONDS": 1.0, "POLL_INTERVAL_SECONDS": 0.2,
        "SWEEP_AFTER_SECONDS": 5, "WORKER_LOST_SECONDS": 6, "LOCAL_QUEUE_LIMIT": 3}


@pytest.fixture
def machines(settings, workers, local_backend):
    """Fake ComfyUIs by machine name; each test starts the ones it needs."""
    configure(settings, workers, **FAST)
    Backend.objects.filter(id=local_backend.id).update(enabled=False)  # the fleet is a, b, c
    made = {}

    def machine(name, gpu, step_delay=0.05):
        fake = FakeComfyUI(step_delay=step_delay, steps=4, gpu_name=gpu, vram_total=24 * 2**30)
        fake.start()
        made[name] = fake
        process = workers.start_gpu_worker(fake.url, name)
        return fake, process

    workers.start(queues="control", concurrency=2, name="control")
    yield machine
    for fake in made.values():
        fake.stop()


def beat_until(condition, timeout: float, message: str):
    """Beat's probe round, as probe_backends sends it (through each backend's own queue), and the
    sweeper, then the condition."""
    def tick():
        for backend_id, queue in maintenance.backends_to_probe():
            tasks.probe_backend.apply_async([backend_id], queue=queue, expires=30)
        maintenance.sweep()
        return condition()

    return wait_for(tick, timeout, 0.5, message)


def submit(user, count, **fields):
    options = {"kind": "image", "preference": "local", "prompt": "a lighthouse", **fields}
    return [services.job_submit(user=user, seed=i, **options) for i in range(count)]


def finished(jobs):
    rows = [Job.objects.get(id=job.id) for job in jobs]
    return rows if all(row.is_final for row in rows) else None


def ran_where_taken(job, fakes):
    """The job's one succeeded attempt ran on the ComfyUI of the worker that submitted it, and on
    no other machine's."""
    done = [a for a in job.attempts.select_related("backend") if a.status == "succeeded"]
    assert len(done) == 1, [(a.backend.name, a.status) for a in job.attempts.all()]
    attempt = done[0]
    assert attempt.worker.startswith(f"{attempt.backend.name}@"), attempt.worker
    assert str(attempt.id) in fakes[attempt.backend.name].history
    assert not any(str(attempt.id) in fake.prompts for name, fake in fakes.items() if name != attempt.backend.name)
    return attempt


def test_a_burst_of_forty_jobs_uses_both_machines_each_on_its_own_comfyui(machines, alice, bob):
    fake_a, _ = machines("box-a", "NVIDIA GeForce RTX 4090")
    fake_b, _ = machines("box-b", "NVIDIA RTX A6000")
    fakes = {"box-a": fake_a, "box-b": fake_b}
    a, b = Backend.objects.get(name="box-a"), Backend.objects.get(name="box-b")
    assert (a.queue, b.queue) == ("local.box-a", "local.box-b")
    assert (a.gpu_name, a.vram_total, b.gpu_name) == ("NVIDIA GeForce RTX 4090", 24 * 2**30, "NVIDIA RTX A6000")

    jobs = submit(alice, 20) + submit(bob, 20)
    jobs = beat_until(lambda: finished(jobs), 240, "all 40 jobs to finish")
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 40, [job.error for job in jobs if job.error][:3]
    placed = [ran_where_taken(job, fakes) for job in jobs]
    by_machine = {name: sum(1 for a in placed if a.backend.name == name) for name in fakes}
    assert all(count > 0 for count in by_machine.values()), by_machine
    assert all(job.outputs.count() == 1 for job in jobs)
    assert {a.gpu for a in placed} == {"NVIDIA GeForce RTX 4090, 24 GB", "NVIDIA RTX A6000, 24 GB"}


def test_killing_a_machine_moves_its_jobs_to_the_other_none_lost_or_duplicated(machines, workers, alice):
    fake_a, worker_a = machines("box-a", "GPU A", step_delay=0.3)
    fake_b, _ = machines("box-b", "GPU B", step_delay=0.3)
    fakes = {"box-a": fake_a, "box-b": fake_b}
    a = Backend.objects.get(name="box-a")
    jobs = submit(alice, 16)
    beat_until(lambda: Attempt.objects.filter(backend=a, status__in=("submitted", "running")).exists(), 60,
               "box-a to be running a job")

    workers.kill(worker_a)  # the machine goes: its worker and its ComfyUI, mid-job
    fake_a.stop()
    jobs = beat_until(lambda: finished(jobs), 240, "all 16 jobs to finish")

    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 16, [job.error for job in jobs if job.error][:3]
    for job in jobs:
        ran_where_taken(job, fakes)
        assert job.outputs.count() == 1
    moved = Attempt.objects.filter(backend=a, status="failed")
    assert moved.exists() and all(m.outage and m.error.startswith(LOST) for m in moved)
    a.refresh_from_db()
    assert a.health == HealthState.DOWN and a.last_error.startswith(f"{LOST} local.box-a")
    assert not Attempt.objects.filter(status__in=("pending", "submitted", "running")).exists()


def test_a_third_machine_joins_while_jobs_flow_and_takes_work(machines, alice):
    fake_a, _ = machines("box-a", "GPU A", step_delay=0.2)
    fake_b, _ = machines("box-b", "GPU B", step_delay=0.2)
    jobs = submit(alice, 30)
    beat_until(lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).exists(), 60, "the first job to finish")
    assert Job.objects.filter(status=JobStatus.QUEUED, waiting=True).exists()  # still flowing

    fake_c, _ = machines("box-c", "GPU C", step_delay=0.2)
    jobs = beat_until(lambda: finished(jobs), 240, "all 30 jobs to finish")
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 30, [job.error for job in jobs if job.error][:3]
    fakes = {"box-a": fake_a, "box-b": fake_b, "box-c": fake_c}
    placed = [ran_where_taken(job, fakes) for job in jobs]
    assert any(a.backend.name == "box-c" for a in placed)
    assert Backend.objects.get(name="box-c").health == HealthState.UP


def test_a_stopped_worker_marks_its_machine_down_at_once_and_its_jobs_move(machines, workers, alice):
    fake_a, worker_a = machines("box-a", "GPU A")
    fake_b, _ = machines("box-b", "GPU B")
    fake_a.node_budget = 0  # box-a holds every job it is given, mid-run
    a = Backend.objects.get(name="box-a")
    jobs = submit(alice, 6)
    beat_until(lambda: Attempt.objects.filter(backend=a, status__in=("submitted", "running")).exists(), 60,
               "box-a to hold a job")

    workers.kill(worker_a, signal.SIGTERM)  # stopped on purpose: a warm shutdown
    a.refresh_from_db()
    assert a.health == HealthState.DOWN and "its worker stopped" in a.last_error
    jobs = beat_until(lambda: finished(jobs), 120, "all 6 jobs to finish on box-b")
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 6
    assert all(job.attempts.get(status="succeeded").backend.name == "box-b" for job in jobs)
