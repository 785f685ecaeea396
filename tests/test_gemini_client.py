"""The Gemini client through the real google-genai SDK, pointed at the fake Gemini.

Both transports: the Gemini Developer API and Vertex AI express mode. No Django database.
"""
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT
from tests.fakes.gemini import FakeGemini
from workers.clients import BackendError, Done, Failed, Progress, client_class
from workers.clients.gemini import (
    ERR_WORKFLOW,
    GeminiClient,
    GeminiOptions,
    closest_aspect,
    veo_duration,
)

TRANSPORTS = ["gemini", "vertex"]
WRONG_KEY = "AIzaSy-wrong-key-that-must-never-leak-42"


@pytest.fixture
def fake():
    with FakeGemini(op_seconds=0.3) as server:
        yield server


def make_client(fake, transport="gemini", key=None, **options):
    defaults = {"base_url": fake.url, "timeout": 5.0, "video_poll_seconds": 0.1, "retry_seconds": 0.5,
                "retry_max_seconds": 8.0}
    return GeminiClient(fake.api_key if key is None else key,
                        GeminiOptions(transport=transport, **{**defaults, **options}))


def spec(kind="image", **fields):
    base = {"job_id": "job-1", "attempt_id": "7f3c9a12-0000-4000-8000-000000000001", "kind": kind,
            "workflow": {}, "custom_workflow": False, "prompt": "a lighthouse at dusk", "negative_prompt": "",
            "width": 512, "height": 512, "seed": 7, "duration_seconds": 4 if kind == "video" else 0}
    return {**base, **fields}


def poll_until_final(client, handle, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.poll(handle)
        if not isinstance(result, Progress):
            return result
        time.sleep(result.next_poll or 0.05)
    raise AssertionError("the job did not finish")


# --- images -------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_image_job_returns_the_png_that_google_generated(fake, transport):
    client = make_client(fake, transport)

    handle = client.submit(spec(width=1024, height=576, negative_prompt="fog"))
    assert fake.requests == []  # submit only records the request: the submit task stays quick
    result = client.poll(handle)

    assert isinstance(result, Done)
    [output] = result.outputs
    assert output.mime == "image/png" and output.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert output.filename == "gemini-7f3c9a12.png"
    [call] = fake.calls("generateContent")
    assert call["transport"] == transport and call["api_key"] == fake.api_key
    assert call["path"].startswith("/v1beta/models/" if transport == "gemini" else "/v1/publishers/google/models/")
    config = call["body"]["generationConfig"]
    assert config["responseModalities"] == ["IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9"} and config["seed"] == 7
    assert call["body"]["contents"][0]["parts"][0]["text"] == "a lighthouse at dusk\n\nAvoid: fog"


def test_an_image_poll_reports_running_before_the_call(fake):
    client = make_client(fake)
    seen = []

    client.poll(client.submit(spec()), on_progress=seen.append)

    assert seen and seen[0].running


@pytest.mark.parametrize("filtered, reason", [(True, "IMAGE_SAFETY"), ("prompt", "PROHIBITED_CONTENT")])
def test_a_safety_filtered_image_fails_with_googles_reason_and_is_not_retryable(fake, filtered, reason):
    fake.filtered = filtered
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and not result.retryable
    assert reason in result.error


# --- video --------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_video_job_starts_an_operation_polls_it_and_returns_the_mp4(fake, transport):
    client = make_client(fake, transport)

    handle = client.submit(spec("video", width=576, height=1024, duration_seconds=5, negative_prompt="rain"))
    first = client.poll(handle)
    result = poll_until_final(client, handle)

    assert "/operations/" in handle["operation"] and handle["transport"] == transport
    assert isinstance(first, Progress) and first.running and first.next_poll == 0.1
    assert isinstance(result, Done)
    [output] = result.outputs
    assert output.mime == "video/mp4" and output.data[4:8] == b"ftyp"
    [start] = fake.calls("predictLongRunning")
    parameters = start["body"]["parameters"]
    assert parameters["durationSeconds"] == 6 and parameters["aspectRatio"] == "9:16"
    assert parameters["negativePrompt"] == "rain"
    if transport == "gemini":  # the file URI quirk: fetched from our base URL, then redirected
        assert fake.calls("getOperation") and len(fake.calls("download")) == 1 and fake.calls("blob")
    else:  # Vertex: fetchPredictOperation, bytes inline
        assert fake.calls("fetchPredictOperation") and not fake.calls("download")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_safety_filtered_video_fails_with_googles_reason_and_is_not_retryable(fake, transport):
    fake.filtered = True
    client = make_client(fake, transport)

    result = poll_until_final(client, client.submit(spec("video")))

    assert isinstance(result, Failed) and not result.retryable
    assert "usage guidelines" in result.error


def test_a_video_that_never_finishes_fails_over_after_its_deadline(fake):
    fake.op_seconds = 60
    client = make_client(fake, video_give_up_seconds=0.2)
    handle = client.submit(spec("video"))
    time.sleep(0.25)

    result = client.poll(handle)

    assert isinstance(result, Failed) and result.retryable and "did not finish" in result.error


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("switch", ["fail_429", "fail_500"])
def test_a_429_or_500_when_starting_a_video_is_retryable(fake, switch):
    setattr(fake, switch, 1)

    with pytest.raises(BackendError) as caught:
        make_client(fake).submit(spec("video"))

    assert caught.value.retryable
    assert ("429" in caught.value.message) if switch == "fail_429" else ("500" in caught.value.message)


@pytest.mark.parametrize("switch", ["fail_429", "fail_500"])
def test_a_429_or_500_on_an_image_call_waits_and_tries_again(fake, switch):
    client = make_client(fake)
    handle = client.submit(spec())
    setattr(fake, switch, 1)

    waiting = client.poll(handle)
    result = client.poll(handle)

    assert isinstance(waiting, Progress) and 0.5 <= waiting.next_poll <= 8.0
    assert isinstance(result, Done)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_500_while_polling_a_video_keeps_the_operation_and_backs_off(fake, transport):
    client = make_client(fake, transport)
    handle = client.submit(spec("video"))
    fake.fail_500 = 2

    first, second = client.poll(handle), client.poll(handle)
    result = poll_until_final(client, handle)

    assert isinstance(first, Progress) and isinstance(second, Progress)
    assert isinstance(result, Done) and len(fake.calls("predictLongRunning")) == 1


def test_the_backoff_doubles_with_each_error_and_stays_within_its_bounds(fake):
    client = make_client(fake, retry_seconds=2.0, retry_max_seconds=30.0)

    waits = [client.backoff(elapsed) for elapsed in (0, 2, 4, 8, 16, 32, 64, 500)]

    assert waits == [2, 2, 4, 8, 16, 30, 30, 30]


def test_googles_retry_delay_is_used_when_it_sends_one(fake):
    client = make_client(fake)
    handle = client.submit(spec())
    fake.fail_429, fake.retry_delay = 1, "7s"

    result = client.poll(handle)

    assert isinstance(result, Progress) and result.next_poll == 7.0


def test_429s_past_the_attempts_deadline_fail_over(fake):
    client = make_client(fake, image_give_up_seconds=0.1)
    handle = client.submit(spec())
    time.sleep(0.15)
    fake.fail_429 = 1

    result = client.poll(handle)

    assert isinstance(result, Failed) and result.retryable and "gave up after" in result.error


def test_a_400_is_permanent_and_shows_googles_message(fake):
    fake.bad_request = "Request contains an invalid argument: the prompt is too long."
    client = make_client(fake)

    image = client.poll(client.submit(spec()))
    with pytest.raises(BackendError) as video:
        client.submit(spec("video"))

    assert isinstance(image, Failed) and not image.retryable
    assert "the prompt is too long" in image.error and "400" in image.error
    assert not video.value.retryable and "the prompt is too long" in video.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_403_is_permanent_and_shows_googles_message(fake, transport):
    fake.forbidden = "Your project has been denied access. Please contact support."
    client = make_client(fake, transport)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and not result.retryable
    assert "denied access" in result.error and "403" in result.error


@pytest.mark.parametrize("transport, words", [("gemini", "API key not valid"), ("vertex", "UNAUTHENTICATED")])
def test_a_wrong_key_is_permanent_and_never_appears_in_the_handle_or_the_error(fake, transport, words):
    client = make_client(fake, transport, key=WRONG_KEY)

    handle = client.submit(spec())
    result = client.poll(handle)
    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))

    assert isinstance(result, Failed) and not result.retryable and words in result.error
    assert not caught.value.retryable
    for text in (json.dumps(handle), result.error, str(caught.value), caught.value.message, repr(client)):
        assert WRONG_KEY not in text
    assert fake.requests[0]["api_key"] == WRONG_KEY  # sent as a header, and only there


def test_the_key_is_scrubbed_even_if_google_echoes_it(fake):
    fake.bad_request = f"API key {fake.api_key} is not allowed to use this model."
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert fake.api_key not in result.error and "[redacted]" in result.error


def test_a_retired_model_fails_over_at_once(fake):
    fake.retired = {"gemini-3.1-flash-image"}
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and result.retryable and "not found" in result.error


def test_an_unreachable_gemini_is_retryable():
    client = GeminiClient("some-key", GeminiOptions(base_url="http://127.0.0.1:9", timeout=2.0))

    waiting = client.poll(client.submit(spec()))
    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))

    assert isinstance(waiting, Progress) and waiting.next_poll > 0
    assert not waiting.maybe_billed  # nothing reached Google: no image can have been made
    assert caught.value.retryable and caught.value.resend_safe and "not reachable" in caught.value.message


def test_an_image_call_that_times_out_may_have_been_billed(fake):
    fake.latency = 1.0
    client = make_client(fake, timeout=0.2)

    waiting = client.poll(client.submit(spec()))

    assert isinstance(waiting, Progress) and waiting.maybe_billed  # Google may have made it
    assert len(fake.calls("generateContent")) == 1


def test_a_paid_answer_held_by_the_fake_leaves_the_other_calls_answering(fake):
    fake.paid_answer_delay = 1.0  # the chaos run holds paid answers to kill a worker inside one
    client = make_client(fake, timeout=0.2)

    waiting = client.poll(client.submit(spec()))
    health = client.health()

    assert isinstance(waiting, Progress) and waiting.maybe_billed  # the image was made, its answer held
    assert health.ok, health.detail  # probes still answer: the backend is not made to look down


def test_a_slow_gemini_times_out_and_is_retryable(fake):
    fake.latency = 1.0
    client = make_client(fake, timeout=0.2)

    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))

    assert caught.value.retryable and "did not answer within 0.2s" in caught.value.message


def test_a_custom_workflow_is_refused_permanently(fake):
    with pytest.raises(BackendError) as caught:
        make_client(fake).submit(spec(custom_workflow=True))

    assert not caught.value.retryable and caught.value.message == ERR_WORKFLOW
    assert fake.requests == []


# --- health -------------------------------------------------------------------------------
def test_health_says_not_configured_without_a_key_and_makes_no_call(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "a-key-from-the-environment")  # the SDK must not pick it up

    health = make_client(fake, key="").health()

    assert not health.ok and health.detail == "not configured"
    assert fake.requests == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_is_up_with_its_latency_when_google_answers(fake, transport):
    health = make_client(fake, transport).health()

    assert health.ok and health.latency_ms is not None
    assert "gemini-3.1-flash-image" in health.detail
    assert fake.calls("countTokens")[0]["transport"] == transport


def test_health_is_down_with_googles_message_when_the_key_is_wrong(fake):
    health = make_client(fake, key=WRONG_KEY).health()

    assert not health.ok and "API key not valid" in health.detail and WRONG_KEY not in health.detail


# --- construction and helpers -------------------------------------------------------------
def test_the_registry_builds_it_from_settings_and_the_backends_model_override(settings, fake):
    settings.GEMINI_API_KEY, settings.GEMINI_BASE_URL = fake.api_key, fake.url
    settings.GEMINI_TRANSPORT, settings.GEMINI_API_VERSION = "vertex", ""
    backend = SimpleNamespace(config={"image_model": "gemini-3-pro-image"})

    client = client_class("gemini").for_backend(backend, "")
    client.poll(client.submit(spec()))

    assert isinstance(client, GeminiClient)
    assert fake.requests[0]["path"] == "/v1/publishers/google/models/gemini-3-pro-image:generateContent"


def test_an_unknown_transport_is_reported_not_raised(fake):
    client = make_client(fake, transport="carrier-pigeon")

    assert "GEMINI_TRANSPORT" in client.health().detail
    assert isinstance(client.poll({"kind": "image", "transport": "carrier-pigeon"}), Failed)


def test_the_closest_aspect_ratio_is_chosen():
    assert closest_aspect(512, 512, ("1:1", "16:9", "9:16")) == "1:1"
    assert closest_aspect(1920, 1080, ("1:1", "4:3", "16:9")) == "16:9"
    assert closest_aspect(640, 1024, ("16:9", "9:16")) == "9:16"
    assert closest_aspect(832, 1024, ("1:1", "4:5", "3:4")) == "4:5"


def test_video_length_is_clamped_to_what_veo_accepts():
    assert [veo_duration(s) for s in (0, 1, 4, 5, 6, 7, 8, 30)] == [4, 4, 4, 6, 6, 8, 8, 8]


def test_the_fake_runs_as_a_process_for_subprocess_use():
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.gemini", "--port", "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        client = GeminiClient("fake-gemini-key-0123456789", GeminiOptions(base_url=line.split()[-1], timeout=5))
        assert client.health().ok
    finally:
        process.terminate()
        process.wait(10)
