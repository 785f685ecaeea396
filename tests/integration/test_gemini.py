"""Gemini jobs from the web form through real Redis and real Celery workers to the fake Gemini.

The workers get their settings from the environment (GEMINI_BASE_URL points at the fake);
this process gets the same values through pytest-django's `settings`.
"""
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.prices import gemini_image_price, veo_price_per_second
from routing import maintenance
from routing.defaults import ensure_default_backends
from routing.models import Backend, Job, JobStatus
from tests.conftest import Workers, wait_for
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.gemini import FakeGemini

pytestmark = pytest.mark.integration

GEMINI_SETTINGS = {"GEMINI_VIDEO_POLL_SECONDS": 0.3, "GEMINI_RETRY_SECONDS": 0.2, "GEMINI_HTTP_TIMEOUT": 10.0}


@pytest.fixture
def fake():
    with FakeGemini(op_seconds=1.0) as server:
        yield server


@pytest.fixture
def gemini_workers(fake, redis_server, transactional_db, settings):
    values = {"GEMINI_API_KEY": fake.api_key, "GEMINI_BASE_URL": fake.url, **GEMINI_SETTINGS}
    for name, value in values.items():
        setattr(settings, name, value)
    ensure_default_backends()
    redis_server.client().flushall()
    pool = Workers(redis_server.url, env={name: str(value) for name, value in values.items()})
    yield pool
    pool.stop_all()


def _submit(client, **fields) -> Job:
    data = {"kind": "image", "preference": "gemini", "prompt": "a lighthouse at dusk", "width": 512,
            "height": 512, "seed": 7, "duration_seconds": ""}
    data.update(fields)
    response = client.post("/submit/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return Job.objects.latest("created_at")


def _final(job_id, timeout=30, tick=None) -> Job:
    def check():
        if tick:
            tick()
        job = Job.objects.get(id=job_id)
        return job if job.is_final else None

    return wait_for(check, timeout, 0.1, f"job {job_id} to finish")


def _body(client, output) -> bytes:
    return b"".join(client.get(f"/outputs/{output.id}/").streaming_content)


def test_an_image_job_for_gemini_succeeds_with_its_png_stored_and_charged_per_image(
        gemini_workers, fake, alice_client):
    gemini_workers.start(queues="control,gemini")

    job = _final(_submit(alice_client).id)

    assert job.status == JobStatus.SUCCEEDED, job.error
    gemini = Backend.objects.get(name="gemini")
    assert job.backend == gemini and job.cost == gemini_image_price(gemini) == Decimal("0.067")  # 3.1 Flash Image
    output = job.outputs.get()
    assert output.mime == "image/png" and _body(alice_client, output).startswith(b"\x89PNG")
    [attempt] = job.attempts.all()
    assert attempt.status == "succeeded" and attempt.cost == gemini_image_price(gemini)
    assert fake.api_key not in str(attempt.handle) and attempt.handle["kind"] == "image"
    assert len(fake.calls("generateContent")) == 1


def _polled_while_running(job_id, polls=1) -> None:
    """Wait until the poll chain of the job's held video interaction has started `polls` polls."""
    def check():
        attempt = Job.objects.get(id=job_id).attempts.first()
        return attempt if attempt and (attempt.handle or {}).get("interaction") and attempt.poll_seq >= polls else None

    return wait_for(check, 30, 0.05, "the video interaction to be polled")


def test_a_video_job_for_gemini_succeeds_with_its_mp4_stored_and_charged_per_second(
        gemini_workers, fake, alice_client):
    fake.held = True  # the interaction runs until the test lets it finish: no race with the poll interval
    gemini_workers.start(queues="control,gemini")
    job = _submit(alice_client, kind="video", duration_seconds=4)
    wait_for(lambda: fake.calls("getInteraction"), 30, 0.05, "a poll of the running video interaction")
    assert not Job.objects.get(id=job.id).is_final

    fake.held = False
    job = _final(job.id)

    assert job.status == JobStatus.SUCCEEDED, job.error
    output = job.outputs.get()
    assert output.mime == "video/mp4" and _body(alice_client, output)[4:8] == b"ftyp"
    assert job.cost == Decimal("4") * veo_price_per_second(Backend.objects.get(name="gemini"))
    # one start; at least one poll saw it running and one saw it done
    assert len(fake.calls("createInteraction")) == 1 and len(fake.calls("getInteraction")) >= 2


def test_a_safety_filtered_video_fails_with_googles_reason_and_is_not_charged(gemini_workers, fake, alice_client):
    fake.filtered = True
    gemini_workers.start(queues="control,gemini")

    job = _final(_submit(alice_client, kind="video", duration_seconds=4).id)

    assert job.status == JobStatus.FAILED and "usage guidelines" in job.error
    assert job.cost == 0 and not job.outputs.exists()
    assert [a.retryable for a in job.attempts.all()] == [False]


def test_a_video_jobs_poll_survives_a_worker_killed_in_the_middle(gemini_workers, fake, alice_client, settings):
    fake.held = True  # the interaction cannot end while the worker is killed and replaced
    settings.SWEEP_AFTER_SECONDS = 1  # this process plays beat: the sweeper re-sends the lost poll
    first = gemini_workers.start(queues="control,gemini", name="first")
    job = _submit(alice_client, kind="video", duration_seconds=4)

    attempt = _polled_while_running(job.id, polls=2)  # the poll chain is going (a countdown is pending)
    gemini_workers.kill(first)
    assert not Job.objects.get(id=job.id).is_final  # killed in the middle of the interaction
    gemini_workers.start(queues="control,gemini", name="second")
    fake.held = False
    job = _final(job.id, tick=maintenance.sweep)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.outputs.count() == 1 and job.attempts.count() == 1
    assert job.attempts.get().id == attempt.id and job.attempts.get().status == "succeeded"
    assert len(fake.calls("createInteraction")) == 1  # the interaction was started once and reused
    assert job.cost == Decimal("4") * veo_price_per_second(Backend.objects.get(name="gemini"))


def test_a_wrong_key_marks_gemini_down_with_the_reason_and_the_job_fails_over(
        gemini_workers, fake, alice_client, settings):
    """Gemini is the cheapest choice; its key is refused. The backend is down at once (no
    three-strikes wait) with Google's words, and the job runs on the other backend instead of
    failing."""
    wrong = "AIzaSy-a-wrong-key-that-never-leaks-77"
    settings.GEMINI_API_KEY = wrong
    gemini_workers.env["GEMINI_API_KEY"] = wrong
    Backend.objects.filter(name="local").update(enabled=False)
    with FakeComfyUI(step_delay=0.01, steps=2) as comfy:
        Backend.objects.create(name="spare", kind="comfyui", category="cloud", url=comfy.url, health="up",
                               last_probe_at=timezone.now(), price_per_second=Decimal("0.05"))
        gemini_workers.start(queues="control,gemini,cloud")

        job = _final(_submit(alice_client, preference="auto").id)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert [(a.backend.name, a.status) for a in job.attempts.order_by("number")] == [
        ("gemini", "failed"), ("spare", "succeeded")]
    failed = job.attempts.get(backend__name="gemini")
    assert failed.retryable and failed.outage and "refused GEMINI_API_KEY" in failed.error
    gemini = Backend.objects.get(name="gemini")
    assert gemini.health == "down" and "API key not valid" in gemini.last_error
    assert wrong not in failed.error + gemini.last_error + job.error
    assert len(fake.calls("generateContent")) == 1 and job.backend.name == "spare"
