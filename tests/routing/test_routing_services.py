"""Routing with the database: hybrid split, fair admission, remembered preference."""
from decimal import Decimal

import pytest
from django.utils import timezone

from routing import outcomes, services
from routing.models import Attempt, AttemptStatus, Backend, Job, JobStatus, Preference

pytestmark = pytest.mark.django_db


@pytest.fixture
def local(local_backend):
    Backend.objects.filter(id=local_backend.id).update(health="up", last_probe_at=timezone.now())
    return Backend.objects.get(id=local_backend.id)


@pytest.fixture
def spare_cloud(db):
    """A ComfyUI-based cloud backend (like a static pod): configured without any key."""
    return Backend.objects.create(name="spare", kind="comfyui", category="cloud", url="http://127.0.0.1:9",
                                  price_per_second=Decimal("0.0003"), health="up", last_probe_at=timezone.now())


def _submit(user, n=1, **kw):
    return [services.job_submit(user=user, kind="image", preference=kw.pop("preference", "auto"),
                                prompt=f"job {i}", **kw) for i in range(n)]


def _finish(attempt):
    Attempt.objects.filter(id=attempt.id).update(status=AttemptStatus.SUCCEEDED)
    Job.objects.filter(id=attempt.job_id).update(status=JobStatus.SUCCEEDED)


def test_a_backlog_splits_between_a_busy_local_gpu_and_the_cloud(alice, local, spare_cloud):
    Backend.objects.filter(id=local.id).update(queue_depth=2)  # someone else's prompts on the GPU
    for job in _submit(alice, 10):
        services.job_route(job_id=job.id)
    placed = [a.backend.name for a in Attempt.objects.select_related("backend").order_by("created_at")]
    assert placed.count("local") == 3 and placed.count("spare") == 7


def test_one_users_burst_does_not_starve_another_users_single_job(alice, bob, local):
    for job in _submit(alice, 20):
        services.job_route(job_id=job.id)
    [bobs] = _submit(bob)
    services.job_route(job_id=bobs.id)
    assert Attempt.objects.filter(backend=local).count() == 5
    assert Job.objects.filter(waiting=True, status=JobStatus.QUEUED).count() == 16
    bobs.refresh_from_db()
    assert bobs.waiting and "Waiting for the local GPU" in bobs.reason

    _finish(Attempt.objects.filter(job__user=alice).first())
    assert services.jobs_admit_waiting() == 1
    assert Job.objects.get(id=bobs.id).status == JobStatus.ROUTED


def test_a_high_priority_job_is_admitted_before_older_normal_ones(alice, local):
    for job in _submit(alice, 7):
        services.job_route(job_id=job.id)
    [urgent] = _submit(alice, priority=2)
    services.job_route(job_id=urgent.id)
    assert Job.objects.get(id=urgent.id).waiting
    _finish(Attempt.objects.first())
    assert services.jobs_admit_waiting() == 1
    assert Job.objects.get(id=urgent.id).status == JobStatus.ROUTED
    assert Job.objects.filter(waiting=True, status=JobStatus.QUEUED).count() == 2


def test_switching_preference_changes_where_the_next_job_goes(alice, local, spare_cloud):
    [first] = _submit(alice, preference="local")
    [second] = _submit(alice, preference="cloud")
    assert services.job_route(job_id=first.id).backend == local
    assert services.job_route(job_id=second.id).backend == spare_cloud
    assert Preference.objects.get(user=alice).preference == "cloud"


def test_the_decision_and_its_reasons_are_stored_on_the_job(alice, local, spare_cloud):
    [job] = _submit(alice)
    services.job_route(job_id=job.id)
    job.refresh_from_db()
    assert job.reason.startswith("local: local GPU is free")
    assert {"local", "spare", "runpod", "gemini"} <= set(job.decision)
    assert job.decision["gemini"].startswith("not configured")


def _run_one_job(user, backend, fake, settings, expected_seconds: float) -> Attempt:
    """One job from routing to its end on the fake ComfyUI, this process playing the worker."""
    settings.COMFYUI_WATCH_SECONDS, settings.COMFYUI_POLL_INTERVAL = 2, 0.05
    Backend.objects.filter(id=backend.id).update(url=fake.url, expected_image_seconds=expected_seconds)
    [job] = _submit(user)
    attempt = services.job_route(job_id=job.id)
    services.attempt_submit(attempt_id=attempt.id)
    seq = 0
    while services.attempt_poll(attempt_id=attempt.id, seq=seq) is not None:
        seq += 1
    assert Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED
    return Attempt.objects.get(id=attempt.id)


def test_the_expected_time_is_learned_from_finished_jobs(alice, local, fake_comfyui, settings):
    _run_one_job(alice, local, fake_comfyui, settings, 100.0)
    assert Backend.objects.get(id=local.id).expected_image_seconds < 81


def test_a_local_gpus_first_run_replaces_its_guessed_time(alice, local, fake_comfyui, settings):
    attempt = _run_one_job(alice, local, fake_comfyui, settings, 15.0)
    assert Backend.objects.get(id=local.id).expected_image_seconds == pytest.approx(attempt.seconds)


def test_a_local_gpus_first_runs_are_averaged_then_the_average_moves(alice, local):
    jobs = _submit(alice, 7)
    for number, job in enumerate(jobs, start=1):
        attempt = Attempt.objects.create(job=job, backend=local, number=1, status=AttemptStatus.SUCCEEDED)
        outcomes._learn_time(Attempt.objects.select_related("backend", "job").get(id=attempt.id), 2.0 * number)
        expected = Backend.objects.get(id=local.id).expected_image_seconds
        if number <= 5:  # plain mean of 2, 4, ... 2n
            assert expected == pytest.approx(number + 1)
    assert expected == pytest.approx((6 * 0.8 + 12 * 0.2) * 0.8 + 14 * 0.2)


def test_a_paid_backends_time_moves_by_the_average_from_its_first_run(alice, spare_cloud):
    Backend.objects.filter(id=spare_cloud.id).update(expected_image_seconds=25.0)
    [job] = _submit(alice)
    attempt = Attempt.objects.create(job=job, backend=spare_cloud, number=1, status=AttemptStatus.SUCCEEDED)
    outcomes._learn_time(Attempt.objects.select_related("backend", "job").get(id=attempt.id), 5.0)
    assert Backend.objects.get(id=spare_cloud.id).expected_image_seconds == pytest.approx(21.0)  # its hold stays near
