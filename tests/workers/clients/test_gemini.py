"""The Gemini client through the real google-genai SDK, pointed at the fake Gemini.

Both transports: the Gemini Developer API (images and video) and Vertex AI express mode (images
only: it has no video method). No Django database.
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
from workers.clients import gemini
from workers.clients.gemini import (
    ERR_NO_VIDEO_MODEL,
    ERR_NO_VIDEO_ON_EXPRESS,
    ERR_WORKFLOW,
    GeminiClient,
    GeminiOptions,
    closest_aspect,
    video_duration,
)

TRANSPORTS = ["gemini", "vertex"]
WRONG_KEY = "AIzaSy-wrong-key-that-must-never-leak-42"


@pytest.fixture
def fake():
    with FakeGemini(op_seconds=0.3) as server:
        yield server


def make_client(fake, transport="gemini", key=None, **options):
    defaults = {"base_url": fake.url, "timeout": 5.0, "video_poll_seconds": 0.1, "retry_seconds": 0.05,
                "retry_max_seconds": 8.0, "video_model": "gemini-omni-1.1-flash" if transport == "gemini" else ""}
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
@pytest.mark.slow
def test_a_safety_filtered_image_fails_with_googles_reason_and_is_not_retryable(fake, filtered, reason):
    fake.filtered = filtered
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and not result.retryable
    assert reason in result.error


# --- video --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_video_job_starts_an_interaction_polls_it_and_returns_the_mp4(fake):
    client = make_client(fake)

    handle = client.submit(spec("video", width=576, height=1024, duration_seconds=5, negative_prompt="rain"))
    fake.held = True  # still generating at the first poll, however long the machine took to get there
    try:
        first = client.poll(handle)
    finally:
        fake.held = False
    result = poll_until_final(client, handle)

    assert handle["interaction"] and handle["transport"] == "gemini"
    assert isinstance(first, Progress) and first.running and first.next_poll == 0.1
    assert isinstance(result, Done)
    [output] = result.outputs
    assert output.mime == "video/mp4" and output.data[4:8] == b"ftyp"
    [start] = fake.calls("createInteraction")
    assert start["path"] == "/v1beta/interactions" and start["api_key"] == fake.api_key
    body = start["body"]
    assert body["model"] == "gemini-omni-1.1-flash" and body["background"] is True
    assert body["input"] == "a lighthouse at dusk\n\nAvoid: rain" and body["generation_config"] == {"seed": 7}
    assert body["response_format"] == {"type": "video", "aspect_ratio": "9:16", "duration": "5s",
                                       "delivery": "inline"}
    polls = fake.calls("getInteraction")
    assert len(polls) >= 2 and {p["path"] for p in polls} == {f"/v1beta/interactions/{handle['interaction']}"}


@pytest.mark.slow
def test_a_video_delivered_as_a_files_uri_is_downloaded_with_the_key(fake):
    fake.video_delivery = "uri"
    client = make_client(fake)

    result = poll_until_final(client, client.submit(spec("video")))

    assert isinstance(result, Done) and result.outputs[0].data[4:8] == b"ftyp"
    [download] = fake.calls("download")
    assert download["api_key"] == fake.api_key and download["query"] == {"alt": "media"}
    assert len(fake.calls("blob")) == 1  # Google's redirect to storage was followed


@pytest.mark.slow
def test_a_video_gemini_declines_fails_with_its_words_and_is_not_retryable(fake):
    fake.filtered = True
    client = make_client(fake)

    result = poll_until_final(client, client.submit(spec("video")))

    assert isinstance(result, Failed) and not result.retryable and not result.misconfigured
    assert "usage guidelines" in result.error


@pytest.mark.slow
def test_a_video_that_never_finishes_fails_over_after_its_deadline(fake):
    fake.op_seconds = 60
    client = make_client(fake, video_give_up_seconds=0.2)
    handle = client.submit(spec("video"))
    time.sleep(0.25)

    result = client.poll(handle)

    assert isinstance(result, Failed) and result.retryable and "did not finish" in result.error


def test_video_on_vertex_express_mode_is_a_misconfiguration_found_before_anything_is_sent(fake):
    client = make_client(fake, "vertex", video_model="gemini-omni-1.1-flash")

    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))
    health = client.health()

    assert caught.value.misconfigured and caught.value.retryable and caught.value.message == ERR_NO_VIDEO_ON_EXPRESS
    assert not health.ok and health.misconfigured and health.detail == ERR_NO_VIDEO_ON_EXPRESS
    assert fake.requests == []


def test_veo_with_a_gemini_api_key_is_a_misconfiguration_found_before_anything_is_sent(fake):
    client = make_client(fake, video_model="veo-3.1-generate-001")

    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))

    assert caught.value.misconfigured and "gemini-omni-1.1-flash" in caught.value.message
    assert fake.requests == []


def test_a_video_job_on_an_images_only_backend_fails_over_without_marking_it_down(fake):
    client = make_client(fake, video_model="")

    with pytest.raises(BackendError) as caught:
        client.submit(spec("video"))

    assert caught.value.retryable and not caught.value.misconfigured and not caught.value.outage
    assert caught.value.message == ERR_NO_VIDEO_MODEL and fake.requests == []


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("switch", ["fail_429", "fail_500"])
@pytest.mark.slow
def test_a_429_or_500_when_starting_a_video_is_retryable_and_sent_once(fake, switch):
    setattr(fake, switch, 1)

    with pytest.raises(BackendError) as caught:
        make_client(fake).submit(spec("video"))

    assert caught.value.retryable and not caught.value.misconfigured
    assert ("429" in caught.value.message) if switch == "fail_429" else ("500" in caught.value.message)
    assert caught.value.resend_safe == (switch == "fail_429")  # a 500 may have started a run
    assert len(fake.calls("createInteraction")) == 1  # a paid call: the SDK does not send it again


@pytest.mark.parametrize("switch", ["fail_429", "fail_500"])
@pytest.mark.slow
def test_a_429_or_500_on_an_image_call_waits_and_tries_again(fake, switch):
    client = make_client(fake)
    handle = client.submit(spec())
    setattr(fake, switch, 1)

    waiting = client.poll(handle)
    result = client.poll(handle)

    assert isinstance(waiting, Progress) and 0.05 <= waiting.next_poll <= 8.0
    assert isinstance(result, Done)
    assert len(fake.calls("generateContent")) == 2  # one per poll: the SDK never re-sends a paid call


@pytest.mark.slow
def test_500s_while_polling_a_video_are_retried_by_the_sdk_within_one_poll(fake):
    fake.op_seconds = 0
    client = make_client(fake, retry_attempts=3)
    handle = client.submit(spec("video"))
    fake.fail_500 = 2

    result = client.poll(handle)

    assert isinstance(result, Done) and fake.fail_500 == 0
    assert len(fake.calls("getInteraction")) == 3 and len(fake.calls("createInteraction")) == 1


@pytest.mark.slow
def test_500s_past_the_sdks_attempts_keep_the_interaction_and_poll_again_later(fake):
    client = make_client(fake, retry_attempts=2)
    handle = client.submit(spec("video"))
    fake.fail_500 = 2

    waiting = client.poll(handle)
    result = poll_until_final(client, handle)

    assert isinstance(waiting, Progress) and waiting.next_poll > 0
    assert isinstance(result, Done) and len(fake.calls("createInteraction")) == 1


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


@pytest.mark.slow
def test_429s_past_the_attempts_deadline_fail_over(fake):
    client = make_client(fake, image_give_up_seconds=0.1)
    handle = client.submit(spec())
    time.sleep(0.15)
    fake.fail_429 = 1

    result = client.poll(handle)

    assert isinstance(result, Failed) and result.retryable and "gave up after" in result.error


@pytest.mark.slow
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
@pytest.mark.slow
def test_a_403_is_a_misconfiguration_that_fails_over_with_googles_message(fake, transport):
    fake.forbidden = "Your project has been denied access. Please contact support."
    client = make_client(fake, transport)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and result.retryable and result.outage and result.misconfigured
    assert "denied access" in result.error and "403" in result.error and "GEMINI_API_KEY" in result.error
    assert not result.maybe_billed  # Google refused before doing anything


@pytest.mark.parametrize("transport, words", [("gemini", "API key not valid"), ("vertex", "UNAUTHENTICATED")])
@pytest.mark.slow
def test_a_wrong_key_is_a_misconfiguration_and_never_appears_in_the_handle_or_the_error(fake, transport, words):
    client = make_client(fake, transport, key=WRONG_KEY)

    handle = client.submit(spec())
    result = client.poll(handle)
    health = client.health()

    assert isinstance(result, Failed) and result.misconfigured and result.retryable and words in result.error
    assert not health.ok and health.misconfigured and "refused GEMINI_API_KEY" in health.detail
    for text in (json.dumps(handle), result.error, health.detail, repr(client)):
        assert WRONG_KEY not in text
    assert fake.requests[0]["api_key"] == WRONG_KEY  # sent as a header, and only there
    assert all("key" not in r["query"] for r in fake.requests)


def test_a_wrong_key_when_starting_a_video_is_a_misconfiguration_not_resent(fake):
    with pytest.raises(BackendError) as caught:
        make_client(fake, key=WRONG_KEY).submit(spec("video"))

    assert caught.value.misconfigured and caught.value.retryable and WRONG_KEY not in caught.value.message
    assert len(fake.calls("createInteraction")) == 1


def test_the_key_is_scrubbed_even_if_google_echoes_it(fake):
    fake.bad_request = f"API key {fake.api_key} is not allowed to use this model."
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert fake.api_key not in result.error and "[redacted]" in result.error


def test_a_retired_image_model_is_a_misconfiguration_that_names_its_setting(fake):
    fake.retired = {"gemini-3.1-flash-image"}
    client = make_client(fake)

    result = client.poll(client.submit(spec()))

    assert isinstance(result, Failed) and result.retryable and result.misconfigured
    assert "GEMINI_IMAGE_MODEL 'gemini-3.1-flash-image'" in result.error and "not found" in result.error


def test_a_retired_video_model_is_a_misconfiguration_when_starting_a_video(fake):
    fake.retired = {"gemini-omni-1.1-flash"}

    with pytest.raises(BackendError) as caught:
        make_client(fake).submit(spec("video"))

    assert caught.value.misconfigured and "GEMINI_VIDEO_MODEL" in caught.value.message


def test_an_interaction_google_forgot_fails_over_without_blaming_the_settings(fake):
    client = make_client(fake)
    handle = client.submit(spec("video"))
    fake.interactions.clear()

    result = client.poll(handle)

    assert isinstance(result, Failed) and result.retryable and not result.misconfigured


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


@pytest.mark.slow
def test_a_paid_answer_held_by_the_fake_leaves_the_other_calls_answering(fake):
    fake.paid_answer_delay = 1.0  # the chaos run holds paid answers to kill a worker inside one
    client = make_client(fake, timeout=0.2)

    waiting = client.poll(client.submit(spec()))
    health = client.health()

    assert isinstance(waiting, Progress) and waiting.maybe_billed  # the image was made, its answer held
    assert health.ok, health.detail  # probes still answer: the backend is not made to look down


@pytest.mark.slow
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


def test_health_asks_models_get_for_each_configured_model_on_the_gemini_api(fake):
    health = make_client(fake).health()

    assert health.ok and health.latency_ms is not None
    assert "gemini-3.1-flash-image" in health.detail and "gemini-omni-1.1-flash" in health.detail
    assert [r["path"] for r in fake.requests] == ["/v1beta/models/gemini-3.1-flash-image",
                                                  "/v1beta/models/gemini-omni-1.1-flash"]
    assert not fake.calls("countTokens")


def test_health_counts_tokens_on_vertex_express_mode_which_has_no_models_get(fake):
    health = make_client(fake, "vertex").health()

    assert health.ok and "no video" in health.detail
    assert [r["action"] for r in fake.requests] == ["countTokens"]
    assert fake.requests[0]["path"] == "/v1/publishers/google/models/gemini-3.1-flash-image:countTokens"


@pytest.mark.parametrize("retired, setting", [("gemini-3.1-flash-image", "GEMINI_IMAGE_MODEL"),
                                              ("gemini-omni-1.1-flash", "GEMINI_VIDEO_MODEL")])
def test_health_is_down_and_misconfigured_when_a_configured_model_is_unknown(fake, retired, setting):
    fake.retired = {retired}

    health = make_client(fake).health()

    assert not health.ok and health.misconfigured and f"{setting} {retired!r}" in health.detail


def test_health_is_down_when_the_image_model_cannot_generate_content(fake):
    health = make_client(fake, image_model="gemini-omni-1.2-flash").health()

    assert not health.ok and health.misconfigured and "cannot generateContent" in health.detail


def test_health_is_down_with_googles_message_when_the_key_is_wrong(fake):
    health = make_client(fake, key=WRONG_KEY).health()

    assert not health.ok and "API key not valid" in health.detail and WRONG_KEY not in health.detail


def test_health_is_not_blamed_on_the_settings_when_google_is_unreachable():
    health = GeminiClient("some-key", GeminiOptions(base_url="http://127.0.0.1:9", timeout=2.0,
                                                    retry_attempts=1)).health()

    assert not health.ok and not health.misconfigured and "not reachable" in health.detail


# --- construction and helpers -------------------------------------------------------------
def test_the_registry_builds_it_from_settings_and_the_backends_model_override(settings, fake):
    settings.GEMINI_API_KEY, settings.GEMINI_BASE_URL = fake.api_key, fake.url
    settings.GEMINI_TRANSPORT, settings.GEMINI_API_VERSION, settings.GEMINI_VIDEO_MODEL = "vertex", "", ""
    backend = SimpleNamespace(config={"image_model": "gemini-3-pro-image"})

    client = client_class("gemini").for_backend(backend, "")
    client.poll(client.submit(spec()))

    assert isinstance(client, GeminiClient)
    assert fake.requests[0]["path"] == "/v1/publishers/google/models/gemini-3-pro-image:generateContent"


def test_an_unknown_transport_is_reported_not_raised(fake):
    client = make_client(fake, transport="carrier-pigeon")

    health = client.health()
    result = client.poll({"kind": "image", "transport": "carrier-pigeon"})

    assert "GEMINI_TRANSPORT" in health.detail and health.misconfigured
    assert isinstance(result, Failed) and result.misconfigured


def test_one_sdk_client_is_kept_per_process_and_configuration(fake):
    first, second = make_client(fake), make_client(fake)
    slower = make_client(fake, timeout=9.0)

    for client in (first, second, slower):
        client.poll(client.submit(spec()))

    handle = {"transport": "gemini", "api_version": "v1beta"}
    assert first._sdk(handle, paid=True) is second._sdk(handle, paid=True)
    assert first._sdk(handle, paid=True) is not slower._sdk(handle, paid=True)  # another timeout
    assert first._sdk(handle) is not first._sdk(handle, paid=True)  # reads retry, paid calls do not
    assert make_client(fake, key="another-key")._sdk(handle) is not first._sdk(handle)
    assert fake.api_key not in repr(list(gemini._SDKS))  # cached under the key's hash


def test_the_closest_aspect_ratio_is_chosen():
    assert closest_aspect(512, 512, ("1:1", "16:9", "9:16")) == "1:1"
    assert closest_aspect(1920, 1080, ("1:1", "4:3", "16:9")) == "16:9"
    assert closest_aspect(640, 1024, ("16:9", "9:16")) == "9:16"
    assert closest_aspect(832, 1024, ("1:1", "4:5", "3:4")) == "4:5"


def test_video_length_is_clamped_to_what_gemini_makes():
    assert [video_duration(s) for s in (0, 1, 3, 4, 5.2, 8, 10, 30)] == [3, 3, 3, 4, 6, 8, 10, 10]


@pytest.mark.slow
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
