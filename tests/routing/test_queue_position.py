"""routing.selectors.queue_position: how many jobs are ahead of one, and on which backend."""
from datetime import timedelta

import pytest
from django.utils import timezone

from routing import services
from routing.models import Attempt, Job, Priority
from routing.selectors import queue_position

pytestmark = pytest.mark.django_db


def _waiting(user, minutes_ago: int, priority=Priority.NORMAL) -> Job:
    job = services.job_submit(user=user, kind="image", preference="local", prompt="a bridge", priority=priority)
    Job.objects.filter(id=job.id).update(status="queued", waiting=True, waiting_for="local",
                                         created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return Job.objects.get(id=job.id)


def test_waiting_jobs_count_the_ones_admitted_before_them_plus_the_gpus_own_queue(alice, bob, local_backend):
    local_backend.queue_depth = 2
    local_backend.save()
    oldest, middle, newest = _waiting(alice, 3), _waiting(bob, 2), _waiting(alice, 1)

    assert [queue_position(job) for job in (oldest, middle, newest)] == [
        {"ahead": 2, "backend": "local"}, {"ahead": 3, "backend": "local"}, {"ahead": 4, "backend": "local"}]


def test_a_higher_priority_job_goes_ahead_of_older_ones(alice, bob, local_backend):
    old = _waiting(alice, 3)
    urgent = _waiting(bob, 1, priority=Priority.HIGH)

    assert (queue_position(urgent)["ahead"], queue_position(old)["ahead"]) == (0, 1)


def test_jobs_already_running_on_the_gpu_are_ahead_of_every_waiting_job(alice, bob, local_backend):
    running = services.job_submit(user=bob, kind="image", preference="local", prompt="x")
    Attempt.objects.create(job=running, backend=local_backend, number=1, status="running", handle={})
    waiting = _waiting(alice, 1)

    assert queue_position(waiting) == {"ahead": 1, "backend": "local"}


def test_a_job_queued_on_a_backend_shows_the_position_that_backend_last_reported(alice, local_backend):
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="x")
    Job.objects.filter(id=job.id).update(status="submitted")
    attempt = Attempt.objects.create(job=job, backend=local_backend, number=1, status="submitted", handle={},
                                     queue_position=3)
    job.refresh_from_db()

    assert queue_position(job) == {"ahead": 3, "backend": "local"}
    Attempt.objects.filter(id=attempt.id).update(status="running", queue_position=None)
    assert queue_position(job) is None  # running: nothing ahead to show


def test_a_job_with_no_attempt_in_flight_and_not_waiting_has_no_position(alice, local_backend):
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="x")
    Job.objects.filter(id=job.id).update(status="succeeded")
    job.refresh_from_db()

    assert queue_position(job) is None
