"""Failover and preference switching with real workers and two fake ComfyUI servers."""
from decimal import Decimal

import pytest
from django.utils import timezone

from routing import maintenance, services
from routing.models import Attempt, Backend, Job, JobStatus
from tests.conftest import Workers, wait_for
from tests.fakes.comfyui import FakeComfyUI

pytestmark = pytest.mark.integration

FAST_POLLS = {"COMFYUI_WATCH_SECONDS": "1", "COMFYUI_POLL_INTERVAL": "0.2"}


@pytest.fixture
def pool(transactional_db, redis_server):
    redis_server.client().flushall()
    workers = Workers(redis_server.url, env=FAST_POLLS)
    yield workers
    workers.stop_all()


@pytest.fixture
def two_comfyuis(local_backend):
    first, second = FakeComfyUI(step_delay=0.05, steps=4).start(), FakeComfyUI(step_delay=0.02).start()
    now = timezone.now()
    Backend.objects.filter(id=local_backend.id).update(url=first.url, health="up", last_probe_at=now)
    spare = Backend.objects.create(name="spare", kind="comfyui", category="cloud", url=second.url,
                                   price_per_second=Decimal("0.0003"), health="up", last_probe_at=now)
    yield first, second, Backend.objects.get(id=local_backend.id), spare
    first.stop()
    second.stop()


def _wait_final(job_id, timeout=60):
    return wait_for(lambda: (j := Job.objects.get(id=job_id)).is_final and j, timeout, 0.1, "job to finish")


def test_a_job_fails_over_when_the_local_comfyui_dies_mid_job_and_returns_later(pool, two_comfyuis, alice):
    first, second, local, spare = two_comfyuis
    first.steps, first.step_delay = 40, 0.1  # about 4 s: time to kill it while it runs
    pool.start()
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="lighthouse", seed=1)
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.RUNNING, 30, 0.05, "job to run")
    first.stop()

    job = _wait_final(job.id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    attempts = list(job.attempts.order_by("number"))
    assert [(a.backend.name, a.status) for a in attempts] == [("local", "failed"), ("spare", "succeeded")]
    assert attempts[0].retryable and "not reachable" in attempts[0].error
    assert job.failovers == 1 and job.outputs.count() == 1

    first.restart()
    first.steps, first.step_delay = 2, 0.01
    for _ in range(2):
        maintenance.backend_probe(backend_id=local.id)
    assert Backend.objects.get(id=local.id).health == "up"
    later = services.job_submit(user=alice, kind="image", preference="auto", prompt="again", seed=2)
    later = _wait_final(later.id)
    assert later.status == JobStatus.SUCCEEDED and later.backend == local


def test_switching_preference_between_two_jobs_changes_where_the_second_runs(pool, two_comfyuis, alice):
    first, second, local, spare = two_comfyuis
    pool.start()
    one = services.job_submit(user=alice, kind="image", preference="local", prompt="one", seed=1)
    two = services.job_submit(user=alice, kind="image", preference="cloud", prompt="two", seed=2)
    one, two = _wait_final(one.id), _wait_final(two.id)
    assert (one.status, one.backend.name) == (JobStatus.SUCCEEDED, "local")
    assert (two.status, two.backend.name) == (JobStatus.SUCCEEDED, "spare")
    assert Attempt.objects.count() == 2
