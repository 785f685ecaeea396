"""A misconfigured Gemini (a refused key, an unknown model) is down at once, with the reason,
and its jobs move on: the probe and the job services against the fake Gemini, no workers."""
import pytest

from billing.models import LedgerEntry
from routing import maintenance, services
from routing.health import health_record
from routing.models import Attempt, AttemptStatus, Backend, Job, JobStatus
from tests.fakes.gemini import FakeGemini

pytestmark = pytest.mark.django_db

WRONG_KEY = "AIzaSy-wrong-key-for-the-probe-31"


@pytest.fixture
def fake():
    with FakeGemini(op_seconds=0.2) as server:
        yield server


@pytest.fixture
def gemini(local_backend, fake, settings):
    settings.GEMINI_API_KEY, settings.GEMINI_BASE_URL = fake.api_key, fake.url
    settings.GEMINI_TRANSPORT, settings.GEMINI_API_VERSION = "gemini", ""
    settings.GEMINI_VIDEO_MODEL, settings.GEMINI_HTTP_TIMEOUT = "gemini-omni-1.1-flash", 5.0
    settings.GEMINI_RETRY_SECONDS = 0.05
    return Backend.objects.get(name="gemini")


def test_one_misconfigured_failure_marks_a_backend_down_and_two_successes_bring_it_back(gemini):
    down = health_record(backend_id=gemini.id, ok=False, detail="key refused", misconfigured=True)
    assert down.health == "down" and down.last_error == "key refused" and down.down_since

    assert health_record(backend_id=gemini.id, ok=True).health == "down"
    assert health_record(backend_id=gemini.id, ok=True).health == "up"


def test_a_probe_with_a_wrong_key_marks_gemini_down_at_once_with_the_reason(gemini, settings, fake):
    settings.GEMINI_API_KEY = WRONG_KEY

    maintenance.backend_probe(backend_id=gemini.id)

    backend = Backend.objects.get(id=gemini.id)
    assert backend.health == "down" and "refused GEMINI_API_KEY" in backend.last_error
    assert "API key not valid" in backend.last_error and WRONG_KEY not in backend.last_error
    assert {r["action"] for r in fake.requests} == {"getModel"}  # models.get, not countTokens


def test_a_probe_naming_a_retired_video_model_marks_gemini_down_with_the_setting(gemini, fake):
    fake.retired = {"gemini-omni-1.1-flash"}

    maintenance.backend_probe(backend_id=gemini.id)

    backend = Backend.objects.get(id=gemini.id)
    assert backend.health == "down" and "GEMINI_VIDEO_MODEL 'gemini-omni-1.1-flash'" in backend.last_error


def test_a_probe_on_express_mode_with_a_video_model_marks_gemini_down_with_what_to_do(gemini, settings, fake):
    settings.GEMINI_TRANSPORT = "vertex"

    maintenance.backend_probe(backend_id=gemini.id)

    backend = Backend.objects.get(id=gemini.id)
    assert backend.health == "down" and "GEMINI_VIDEO_MODEL empty" in backend.last_error
    assert fake.requests == []


def test_a_probe_that_cannot_reach_google_keeps_the_three_failures_rule(gemini, settings):
    settings.GEMINI_BASE_URL, settings.GEMINI_RETRY_ATTEMPTS = "http://127.0.0.1:9", 1
    maintenance.backend_probe(backend_id=gemini.id)
    maintenance.backend_probe(backend_id=gemini.id)

    assert Backend.objects.get(id=gemini.id).health != "down"
    maintenance.backend_probe(backend_id=gemini.id)
    assert Backend.objects.get(id=gemini.id).health == "down"


def test_a_job_whose_attempt_is_refused_for_the_key_waits_instead_of_failing(gemini, settings, alice, fake):
    settings.GEMINI_API_KEY = WRONG_KEY
    job = services.job_submit(user=alice, kind="image", preference="gemini", prompt="a lighthouse", seed=3)
    attempt = services.job_route(job_id=job.id)
    assert services.attempt_submit(attempt_id=attempt.id)

    assert services.attempt_poll(attempt_id=attempt.id, seq=0) is None

    attempt = Attempt.objects.get(id=attempt.id)
    assert attempt.status == AttemptStatus.FAILED and attempt.retryable and attempt.outage
    assert Backend.objects.get(id=gemini.id).health == "down"
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED  # not failed: routed again
    assert services.job_route(job_id=job.id) is None  # Gemini is down: nothing to place it on
    job = Job.objects.get(id=job.id)
    assert job.status == JobStatus.QUEUED and job.waiting and "refused GEMINI_API_KEY" in job.reason
    assert len(fake.calls("generateContent")) == 1 and not attempt.call_open


@pytest.mark.slow
def test_a_wrong_key_at_video_submit_is_not_resent_to_the_same_backend(gemini, settings, alice, fake):
    settings.GEMINI_API_KEY = WRONG_KEY
    job = services.job_submit(user=alice, kind="video", preference="gemini", prompt="a lighthouse", seed=3,
                              duration_seconds=4)
    attempt = services.job_route(job_id=job.id)

    assert services.attempt_submit(attempt_id=attempt.id) is False  # not a countdown: no resend

    attempt = Attempt.objects.get(id=attempt.id)
    assert attempt.status == AttemptStatus.FAILED and attempt.retryable
    assert Backend.objects.get(id=gemini.id).health == "down"
    assert len(fake.calls("createInteraction")) == 1
    assert not Job.objects.get(id=job.id).is_final
    # Google refused it before starting anything: no run to record as the installation's spend,
    # and the hold is given back.
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.UNMATCHED).exists()
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).exists()
