"""The job services driven directly (no workers): each step, duplicates, cancel, failover."""
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from routing import maintenance, remote, services
from routing.models import Attempt, AttemptStatus, Backend, Job, JobStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def local(local_backend, fake_comfyui, settings):
    settings.COMFYUI_WATCH_SECONDS = 2
    settings.COMFYUI_POLL_INTERVAL = 0.05
    local_backend.url = fake_comfyui.url
    local_backend.save()
    return local_backend


def _job(user, **fields):
    return services.job_submit(user=user, kind="image", preference="auto", prompt="a bridge", seed=1, **fields)


def _run(attempt, limit=200):
    seq = 0
    for _ in range(limit):
        countdown = services.attempt_poll(attempt_id=attempt.id, seq=seq)
        if countdown is None:
            return
        seq += 1
        time.sleep(countdown or 0)
    raise AssertionError("poll chain never ended")


def test_a_job_goes_through_every_state_to_succeeded(alice, local):
    job = _job(alice)
    attempt = services.job_route(job_id=job.id)
    assert Job.objects.get(id=job.id).status == JobStatus.ROUTED and attempt.backend == local
    assert services.attempt_submit(attempt_id=attempt.id)
    assert Job.objects.get(id=job.id).status == JobStatus.SUBMITTED
    _run(attempt)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.progress == 100 and job.outputs.count() == 1
    assert job.started_at and job.finished_at and job.cost == 0


def test_duplicate_deliveries_change_nothing(alice, local):
    job = _job(alice)
    attempt = services.job_route(job_id=job.id)
    assert services.job_route(job_id=job.id) is None
    assert services.attempt_submit(attempt_id=attempt.id)
    assert not services.attempt_submit(attempt_id=attempt.id)
    _run(attempt)
    assert services.attempt_poll(attempt_id=attempt.id, seq=0) is None  # stale duplicate poll
    assert Attempt.objects.filter(job=job).count() == 1
    assert job.outputs.count() == 1


def test_a_stale_poll_cannot_fork_a_second_poll_chain(alice, local):
    job = _job(alice)
    attempt = services.job_route(job_id=job.id)
    services.attempt_submit(attempt_id=attempt.id)
    # Poll 0 has run and claimed seq 0, and the job still runs. (Polling the fake for real may end
    # the job in poll 0; a stale poll would then be refused for the wrong reason, the job's end.)
    Attempt.objects.filter(id=attempt.id).update(poll_seq=1)
    before = Attempt.objects.get(id=attempt.id)

    assert services.attempt_poll(attempt_id=attempt.id, seq=0) is None  # poll 0 again: stale

    after = Attempt.objects.get(id=attempt.id)
    assert (after.status, after.poll_seq, after.claimed_at) == (AttemptStatus.SUBMITTED, 1, before.claimed_at)
    services.attempt_poll(attempt_id=attempt.id, seq=1)  # the chain's own poll 1 is not refused: it claims
    assert Attempt.objects.get(id=attempt.id).poll_seq == 2


def test_an_unreachable_local_comfyui_makes_the_job_wait_then_fail_with_one_clear_reason_per_backend(
        alice, local_backend, settings):
    local_backend.url = "http://127.0.0.1:9"
    local_backend.save()
    job = _job(alice)
    attempt = services.job_route(job_id=job.id)
    while not isinstance(services.attempt_submit(attempt_id=attempt.id), bool):
        pass  # a refused connection is safe to send again: SUBMIT_RETRIES sends, then the attempt is lost
    assert services.job_route(job_id=job.id) is None  # nothing else can run it: it waits, no new attempt

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.waiting and job.waiting_for == "outage"
    assert job.attempts.get().outage and job.reason.startswith("Waiting for local to answer again")
    assert job.decision["gemini"] == "not configured (GEMINI_API_KEY not set)"

    later = timezone.now() + timedelta(seconds=settings.OUTAGE_WAIT_SECONDS + 1)
    assert maintenance.sweep(now=later)["outage"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts.count() == 1 and job.failovers == job.retries == 0
    assert job.error.startswith(f"Gave up after waiting {settings.OUTAGE_WAIT_SECONDS // 60} minutes for a backend"
                                " to answer again (last error: ComfyUI at http://127.0.0.1:9 is not reachable")
    assert "local: lost this job's last attempt in an outage" in job.error
    assert "gemini: not configured (GEMINI_API_KEY not set)" in job.error


def test_an_invalid_workflow_fails_at_once_without_failover(alice, local):
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    job = _job(alice, workflow=bad)
    attempt = services.job_route(job_id=job.id)
    services.attempt_submit(attempt_id=attempt.id)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.failovers == 0
    assert "node 1 (EmptyImage)" in job.error


def test_cancel_stops_the_job_and_later_tasks_do_nothing(alice, local):
    job = _job(alice)
    attempt = services.job_route(job_id=job.id)
    assert services.job_cancel(user=alice, job_id=job.id)
    assert not services.attempt_submit(attempt_id=attempt.id)
    assert Attempt.objects.get(id=attempt.id).status == AttemptStatus.CANCELLED
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED
    assert not services.job_cancel(user=alice, job_id=job.id)


def test_a_disabled_local_backend_is_never_chosen(alice, local):
    Backend.objects.filter(id=local.id).update(enabled=False)
    job = _job(alice)
    assert services.job_route(job_id=job.id) is None
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "local: disabled by the administrator" in job.error


def test_a_final_message_reads_as_sentences(alice, local_backend, settings):
    """(issue 22: "(is it running?) No other backend…" ran two sentences together)"""
    from routing.models import Attempt

    job = services.job_submit(user=alice, kind="image", preference="local", prompt="x")
    Attempt.objects.create(job=job, backend=local_backend, number=1, status="failed",
                           error="ComfyUI at http://127.0.0.1:9 is not reachable (is it running?)")
    message = services._no_backend_message(job, "local: offline", tried=1)
    assert "(is it running?). No other backend could take the job — local: offline" in message
    Attempt.objects.filter(job=job).update(error="It stopped.")
    assert "It stopped. No other" in services._no_backend_message(job, "x", tried=1)


def test_the_gemini_card_names_its_kind_once(alice_client, local_backend):
    page = alice_client.get("/backends/").content.decode()
    assert "Google Gemini · Google Gemini" not in page and "Google Gemini" in page


def test_progress_never_goes_back_when_a_new_watch_window_starts_from_zero(alice, local_backend):
    """Each poll of a running prompt watches for a while, then a new one starts with 0 %: the
    job keeps the highest percent seen (it dropped to 0 every 5 s on long runs)."""
    from workers.clients import Progress

    job = services.job_submit(user=alice, kind="image", preference="local", prompt="x")
    Job.objects.filter(id=job.id).update(status=JobStatus.SUBMITTED)
    attempt = Attempt.objects.create(job=job, backend=local_backend, number=1, status="submitted", handle={})
    sink = remote.ProgressSink(attempt)
    for percent in (0, 40, 60):
        sink(Progress(percent=percent, running=True))
    remote.ProgressSink(Attempt.objects.get(id=attempt.id))(Progress(percent=0, running=True))  # the next poll

    assert (Job.objects.get(id=job.id).progress, Attempt.objects.get(id=attempt.id).progress) == (60, 60)
    assert Job.objects.get(id=job.id).status == JobStatus.RUNNING
