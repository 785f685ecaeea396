"""The SDK's own recorded traffic (tests/captures/gemini-sdk-3.4.0.json) against Google's
documented endpoints, the fake, and our client. See tests/captures/README.md for the sources."""
import json
import re
import time

import pytest
import requests

from tests.captures.record_gemini import KEY_MARK, capture_path, record
from tests.fakes.gemini import FakeGemini
from workers.clients import Progress
from workers.clients.gemini import GeminiClient, GeminiOptions

CAPTURE = json.loads(capture_path("3.4.0").read_text())
# (transport, method, path) Google documents for that transport, and where.
DOCUMENTED = [
    ("gemini", "GET", r"/v1beta/models/[^/:]+", "ai.google.dev/api/models#method:-models.get"),
    ("gemini", "POST", r"/v1beta/models/[^/:]+:generateContent", "ai.google.dev/api/generate-content"),
    ("gemini", "POST", r"/v1beta/interactions", "ai.google.dev/gemini-api/docs/video (Interactions API)"),
    ("gemini", "GET", r"/v1beta/interactions/[^/:]+", "ai.google.dev/gemini-api/docs/video (Interactions API)"),
    ("vertex", "POST", r"/v1/publishers/google/models/[^/:]+:countTokens", "express-mode REST reference"),
    ("vertex", "POST", r"/v1/publishers/google/models/[^/:]+:generateContent", "express-mode REST reference"),
]


def _documented(transport: str, method: str, path: str) -> bool:
    return any(t == transport and m == method and re.fullmatch(p, path) for t, m, p, _ in DOCUMENTED)


def _requests(transport=None, documented=None):
    return [(exchange, request) for exchange in CAPTURE["exchanges"] for request in exchange["requests"]
            if transport in (None, exchange["transport"]) and documented in (None, exchange["documented"])]


def _normal(capture: dict) -> dict:
    """The capture without what varies by machine (the Python version in the user agent)."""
    text = json.dumps(capture, sort_keys=True)
    return json.loads(re.sub(r"gl-python/[0-9.]+", "gl-python/X", text))


@pytest.mark.slow
def test_the_capture_is_what_the_installed_sdk_sends():
    assert CAPTURE["sdk"] == "google-genai 3.4.0"
    assert _normal(record()) == _normal(CAPTURE), "the SDK's wire changed: re-record and read the diff"


def test_every_request_the_service_offers_is_a_documented_endpoint_of_its_transport():
    offered = _requests(documented=True)

    assert len(offered) == 7
    for exchange, request in offered:
        assert _documented(exchange["transport"], request["method"], request["path"]), (exchange["call"], request)


def test_what_express_mode_does_not_offer_is_what_the_sdk_would_send_for_veo_and_models_get():
    sent = {(r["method"], r["path"]) for _, r in _requests("vertex", documented=False)}

    assert sent == {("GET", "/v1/publishers/google/models/gemini-3.1-flash-image"),
                    ("POST", "/v1/publishers/google/models/veo-3.1-generate-001:predictLongRunning"),
                    ("POST", "/v1/publishers/google/models/veo-3.1-generate-001:fetchPredictOperation")}
    for method, path in sent:
        assert not _documented("vertex", method, path)


def test_the_sdk_refuses_veo_on_the_gemini_api_before_sending_anything():
    [veo] = [e for e in CAPTURE["exchanges"] if e["transport"] == "gemini" and "Veo" in e["call"]]

    assert veo["requests"] == [] and "Gemini Developer API mode" in veo["sdk_refused"]


def test_the_key_travels_in_the_x_goog_api_key_header_and_nowhere_else():
    for exchange, request in _requests():
        assert request["headers"]["x-goog-api-key"] == KEY_MARK, exchange["call"]
        assert "key" not in request["query"]
        assert request["headers"]["user-agent"].startswith("google-genai-sdk/3.4.0")


def test_the_video_is_asked_for_in_the_background_and_polled_by_its_id():
    [(_, start)] = [(e, r) for e, r in _requests("gemini") if r["path"] == "/v1beta/interactions"]
    [(_, poll)] = [(e, r) for e, r in _requests("gemini") if r["path"].startswith("/v1beta/interactions/")]

    assert start["method"] == "POST" and start["body"]["background"] is True
    assert start["body"]["response_format"]["type"] == "video" and start["body"]["response_modalities"] == ["video"]
    assert poll["method"] == "GET" and poll["query"] == {"stream": "false"} and poll["body"] is None


@pytest.fixture
def fake():
    with FakeGemini(op_seconds=0) as server:
        yield server


def _replay(fake, request, interaction_id=None):
    path = request["path"]
    if interaction_id:
        path = path.replace("v1_capture0001", interaction_id)
    headers = {**request["headers"], "x-goog-api-key": fake.api_key}
    return requests.request(request["method"], fake.url + path, params=request["query"], headers=headers,
                            data=json.dumps(request["body"]) if request["body"] is not None else None, timeout=5)


def test_the_fake_answers_every_documented_request_as_captured():
    with FakeGemini(op_seconds=0) as fake:
        started = None
        for exchange, request in _requests(documented=True):
            answer = _replay(fake, request, started)
            assert answer.status_code == 200, (exchange["call"], answer.text[:300])
            if request["path"] == "/v1beta/interactions":
                started = answer.json()["id"]
        assert len(fake.requests) == 7


def test_the_fake_refuses_what_express_mode_does_not_offer_as_google_refuses_api_keys(fake):
    for exchange, request in _requests("vertex", documented=False):
        answer = _replay(fake, request)
        assert answer.status_code == 401, exchange["call"]
        assert answer.json()["error"]["status"] == "UNAUTHENTICATED"


def _shape(value):
    """The keys of a JSON body, recursively (values differ; the shape must not)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


def _template(path: str) -> str:
    return re.sub(r"/interactions/[^/]+$", "/interactions/{id}", path)


@pytest.mark.parametrize("transport", ["gemini", "vertex"])
@pytest.mark.slow
def test_our_client_sends_exactly_the_requests_the_capture_shows(fake, transport):
    client = GeminiClient(fake.api_key, GeminiOptions(
        transport=transport, base_url=fake.url, timeout=50.0, video_poll_seconds=0.01,
        video_model="gemini-omni-1.1-flash" if transport == "gemini" else ""))
    client.health()
    client.poll(client.submit({"kind": "image", "prompt": "a lighthouse at dusk", "seed": 7, "width": 1024,
                               "height": 576, "attempt_id": "a"}))
    if transport == "gemini":
        handle = client.submit({"kind": "video", "prompt": "a lighthouse at dusk", "seed": 7, "width": 1024,
                                "height": 576, "duration_seconds": 4, "attempt_id": "a"})
        while isinstance(client.poll(handle), Progress):
            time.sleep(0.01)

    captured = {(r["method"], _template(r["path"])): r for _, r in _requests(transport, documented=True)}
    sent = [(r["method"], _template(r["path"]), r) for r in fake.requests]
    assert {(m, p) for m, p, _ in sent} == set(captured)
    for method, path, request in sent:
        model = captured[(method, path)]
        assert _shape(request["body"] or None) == _shape(model["body"]), path
        assert request["query"] == model["query"] and request["headers"]["x-goog-api-key"] == fake.api_key
