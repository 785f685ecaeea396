"""A fake Google Gemini API on loopback, speaking both transports' wire formats.

The requests it accepts are the ones google-genai 3.4.0 sends, as recorded in
tests/captures/gemini-sdk-3.4.0.json (tests/captures/record_gemini.py); the answers follow the
shapes Google documents (tests/captures/README.md). What the real service refuses on a
transport, this fake refuses too.

Gemini Developer API (generativelanguage.googleapis.com)::

    GET  /{v}/models/{m}                          models.get: name, supportedGenerationMethods
    POST /{v}/models/{m}:generateContent          image models, inlineData parts
    POST /{v}/models/{m}:countTokens
    POST /{v}/interactions                        video (Gemini Omni Flash), background=true
                                                  -> {"id", "status": "in_progress"}
    GET  /{v}/interactions/{id}                   -> status "completed", steps[].content[] video
    GET  /{v}/files/{id}:download?alt=media       a video delivered by URI; 302 to a blob URL

Vertex AI express mode (aiplatform.googleapis.com, API key, no project/location). Its REST
reference lists countTokens, generateContent and streamGenerateContent only; anything else
(predictLongRunning, fetchPredictOperation, predict, GET of a model) is refused the way Google
refuses a method that takes no API key (401 UNAUTHENTICATED)::

    POST /{v}/publishers/google/models/{m}:generateContent
    POST /{v}/publishers/google/models/{m}:countTokens

A model the transport does not have (see MODELS; Veo on the Developer API was shut down)
answers 404 NOT_FOUND, as Google does.

Switches are plain attributes and may be changed while the server runs::

    with FakeGemini(op_seconds=1) as fake:
        fake.fail_429 = 2          # the next 2 API calls answer 429 RESOURCE_EXHAUSTED
        fake.fail_500 = 1          # the next call answers 500 INTERNAL
        fake.filtered = True       # results are safety-filtered ("prompt": the prompt is blocked)
        fake.bad_request = "..."   # every call answers 400 INVALID_ARGUMENT with this message
        fake.forbidden = "..."     # every call answers 403 PERMISSION_DENIED with this message
        fake.retired = {"m"}       # these models answer 404 NOT_FOUND
        fake.video_delivery = "uri"  # videos come as a Files API URI instead of inline bytes
        fake.requests              # every request: method, path, transport, action, model, body

As a process::

    python -m tests.fakes.gemini --port 8765 --api-key test-key --op-seconds 1
    # prints "listening on http://127.0.0.1:8765" once ready
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import struct
import threading
import time
import uuid
import zlib

from aiohttp import web
from tests.fakes.loopback import serve_until_terminated

DEFAULT_API_KEY = "fake-gemini-key-0123456789"
DEVELOPER_HOST = "https://generativelanguage.googleapis.com"
VERSION = r"(?P<version>v1[a-z0-9]*)"
MODEL = r"(?P<model>[^/:]+)"
ROUTES = [
    # (method, regex on the path, transport, action)
    ("POST", rf"^/{VERSION}/publishers/google/models/{MODEL}:(?P<action>generateContent|countTokens)$",
     "vertex", None),
    ("*", rf"^/{VERSION}/publishers/google/models/{MODEL}(:[A-Za-z]+)?$", "vertex", "refused"),
    ("GET", rf"^/{VERSION}/models/{MODEL}$", "gemini", "getModel"),
    ("POST", rf"^/{VERSION}/models/{MODEL}:(?P<action>generateContent|countTokens)$", "gemini", None),
    ("POST", rf"^/{VERSION}/interactions$", "gemini", "createInteraction"),
    ("GET", rf"^/{VERSION}/interactions/(?P<interaction>[^/:]+)$", "gemini", "getInteraction"),
    ("GET", rf"^/{VERSION}/files/(?P<file>[^/:]+):download$", "gemini", "download"),
    ("GET", r"^/blobs/(?P<file>[^/:]+)$", "blob", "blob"),
]
# What each transport serves: model id -> supportedGenerationMethods (models.get). The
# Developer API's Veo ids are absent: shut down. Omni is reached through interactions, which
# models.get does not list as a method.
IMAGE_METHODS = ["generateContent", "countTokens", "batchGenerateContent"]
MODELS = {
    "gemini": {"gemini-3.1-flash-image": IMAGE_METHODS, "gemini-3-pro-image": IMAGE_METHODS,
               "gemini-2.5-flash-image": IMAGE_METHODS, "gemini-3.5-flash": IMAGE_METHODS,
               "gemini-omni-1.1-flash": [], "gemini-omni-1.2-flash": []},
    "vertex": {"gemini-3.1-flash-image": IMAGE_METHODS, "gemini-3-pro-image": IMAGE_METHODS,
               "gemini-2.5-flash-image": IMAGE_METHODS},
}
VIDEO_MODELS = {"gemini-omni-1.1-flash", "gemini-omni-1.2-flash"}
VIDEO_SECONDS = range(3, 11)
# Aspect ratios the fake understands, and the pixel size it draws for each (small: fast tests).
ASPECTS = {"1:1": (64, 64), "2:3": (64, 96), "3:2": (96, 64), "3:4": (64, 85), "4:3": (85, 64),
           "4:5": (64, 80), "5:4": (80, 64), "9:16": (64, 114), "16:9": (114, 64), "21:9": (149, 64)}
IMAGE_BLOCK_MESSAGE = ("Unable to show the generated image. The image was filtered out because it violated "
                       "Google's Generative AI Prohibited Use policy.")
VIDEO_BLOCK_REASON = ("I can't make that video: the prompt contains content that violates our usage "
                      "guidelines.")
NO_API_KEYS = ("API keys are not supported by this API. Expected OAuth2 access token or other authentication "
               "credentials that assert a principal. See https://cloud.google.com/docs/authentication")
VIDEO_TOKENS_PER_SECOND = 5792  # 720p output, as Google counts it


# --------------------------------------------------------------------------- outputs

def png_bytes(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A real, decodable RGB PNG (a gradient whose colour depends on the seed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    tint = seed % 256
    # Each scanline: filter byte 0 (None), then one RGB triple per pixel.
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 4 % 256, tint))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def mp4_bytes(seconds: int = 8) -> bytes:
    """A small MP4-looking file: ftyp, a moov with an mvhd carrying the duration, and an mdat."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    timescale = 1000
    mvhd = box(b"mvhd", struct.pack(">BxxxIIII", 0, 0, 0, timescale, seconds * timescale) + b"\x00" * 80)
    mdat = box(b"mdat", bytes(range(256)) * 4)
    return ftyp + box(b"moov", mvhd) + mdat


def _error(code: int, status: str, message: str, details=None) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status}}
    if details:
        body["error"]["details"] = details
    return web.json_response(body, status=code)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- the server

PAID_ACTIONS = ("generateContent", "createInteraction")  # the calls Google bills (per image, per video second)


class FakeGemini:
    """Fake Gemini API + Vertex express on 127.0.0.1. Switches may be changed while running."""

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1", api_key: str = DEFAULT_API_KEY,
                 op_seconds: float = 1.0, latency: float = 0.0):
        self.host, self.port = host, port
        self.api_key = api_key
        self.op_seconds = op_seconds  # how long a video interaction stays in progress
        self.held = False  # True: every video interaction stays in progress, whatever its age, until set False
        self.latency = latency  # added to every API answer
        # Seconds a paid call's answer is held after the run is made (the image generated, the
        # interaction started), as when a connection dies mid-call; other calls answer at once.
        self.paid_answer_delay = 0.0
        self.filtered = False  # True: outputs are safety-filtered; "prompt": the prompt is blocked
        self.fail_429 = 0  # the next N API calls answer 429 RESOURCE_EXHAUSTED
        self.fail_500 = 0  # the next N API calls answer 500 INTERNAL
        self.retry_delay = None  # e.g. "7s": a google.rpc.RetryInfo detail on 429 answers
        self.bad_request = None  # str: every API call answers 400 INVALID_ARGUMENT with it
        self.forbidden = None  # str: every API call answers 403 PERMISSION_DENIED with it
        self.retired = set()  # model ids answering 404 NOT_FOUND, like a shut-down model
        self.video_delivery = "inline"  # or "uri": a Files API URI, fetched from /files/{id}:download
        self.requests: list[dict] = []
        self.interactions: dict[str, dict] = {}  # interaction id -> state
        self.files: dict[str, bytes] = {}  # file id -> bytes (Developer API downloads)
        self._thread = self._loop = self._runner = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "FakeGemini":
        if self._thread is not None:
            return self
        ready, self._start_error = threading.Event(), None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="FakeGemini", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._start_error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = self._loop = None

    def __enter__(self) -> "FakeGemini":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # the port is taken
            self._start_error = error
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        leftovers = asyncio.all_tasks(loop)  # requests still sleeping on `latency`
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    # ---- helpers for tests

    def calls(self, action: str) -> list[dict]:
        return [r for r in self.requests if r["action"] == action]

    # ---- dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = self._match(request)
        body = await _json_body(request)
        record = {"method": request.method, "path": request.path, "query": dict(request.query),
                  "transport": route[1] if route else None, "action": route[2] if route else None,
                  "model": (route[0].groupdict().get("model") if route else None) or body.get("model"),
                  "body": body, "api_key": request.headers.get("x-goog-api-key"),
                  "headers": {k.lower(): v for k, v in request.headers.items()}, "time": time.time()}
        self.requests.append(record)
        if route is None:
            return _error(404, "NOT_FOUND", f"The requested URL {request.path} was not found on this server.")
        match, transport, action = route
        if action == "blob":
            return self._blob(match["file"])
        refusal = self._refusal(request, transport, record["model"], action)
        if refusal is not None:
            return refusal
        if self.latency:
            await asyncio.sleep(self.latency)
        handler = getattr(self, f"_{action}")
        answer = handler(request, match, transport, body)
        if self.paid_answer_delay and action in PAID_ACTIONS:
            await asyncio.sleep(self.paid_answer_delay)
        return answer

    def _match(self, request: web.Request):
        for method, pattern, transport, action in ROUTES:
            match = re.match(pattern, request.path)
            if match and method in ("*", request.method):
                return match, transport, action or match["action"]
        return None

    def _refusal(self, request, transport: str, model, action: str):
        """What Google checks before doing any work: the key, quota, then the request."""
        key = request.headers.get("x-goog-api-key")
        if not key:
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API consumer identity "
                          "to call this API.")
        if action == "refused":  # not in express mode's REST reference: no API keys here
            return _error(401, "UNAUTHENTICATED", NO_API_KEYS)
        if key != self.api_key:
            if transport == "vertex":
                return _error(401, "UNAUTHENTICATED", NO_API_KEYS)
            return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                          [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com"}])
        if self.fail_429 > 0:
            self.fail_429 -= 1
            details = ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay}]
                       if self.retry_delay else None)
            return _error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan "
                          "and billing details.", details)
        if self.fail_500 > 0:
            self.fail_500 -= 1
            return _error(500, "INTERNAL", "An internal error has occurred. Please retry or report in "
                          "https://developers.generativeai.google/guide/troubleshooting")
        if self.bad_request:
            return _error(400, "INVALID_ARGUMENT", self.bad_request)
        if self.forbidden:
            return _error(403, "PERMISSION_DENIED", self.forbidden)
        if model and (model in self.retired or model not in MODELS.get(transport, {})):
            return _error(404, "NOT_FOUND", f"models/{model} is not found for API version "
                          f"{request.path.split('/')[1]}, or is not supported for this method.")
        return None

    # ---- models.get (Developer API)

    def _getModel(self, request, match, transport, body) -> web.Response:
        model = match["model"]
        return web.json_response({"name": f"models/{model}", "version": "001", "displayName": model,
                                  "supportedGenerationMethods": MODELS[transport][model]})

    # ---- generateContent / countTokens (both transports)

    def _generateContent(self, request, match, transport, body) -> web.Response:
        config = body.get("generationConfig") or {}
        if "IMAGE" not in [m.upper() for m in config.get("responseModalities") or ["TEXT"]]:
            text = {"text": "A fake Gemini answers in words only when asked for text."}
            return web.json_response(self._content_response(match["model"], [text], "STOP"))
        if self.filtered == "prompt":
            return web.json_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                      "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
                                      "modelVersion": match["model"]})
        if self.filtered:
            response = self._content_response(match["model"], None, "IMAGE_SAFETY")
            response["candidates"][0]["finishMessage"] = IMAGE_BLOCK_MESSAGE
            return web.json_response(response)
        aspect = (config.get("imageConfig") or {}).get("aspectRatio") or "1:1"
        width, height = ASPECTS.get(aspect, ASPECTS["1:1"])
        data = base64.b64encode(png_bytes(width, height, int(config.get("seed") or 0))).decode()
        parts = [{"inlineData": {"mimeType": "image/png", "data": data}}]
        return web.json_response(self._content_response(match["model"], parts, "STOP"))

    @staticmethod
    def _content_response(model: str, parts, finish_reason: str) -> dict:
        candidate = {"finishReason": finish_reason, "index": 0}
        candidate["content"] = {"role": "model", "parts": parts} if parts else {}
        return {"candidates": [candidate], "modelVersion": model, "responseId": uuid.uuid4().hex[:22],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 1290, "totalTokenCount": 1298}}

    def _countTokens(self, request, match, transport, body) -> web.Response:
        return web.json_response({"totalTokens": 4})

    # ---- video: interactions (Developer API)

    def _createInteraction(self, request, match, transport, body) -> web.Response:
        model, prompt, form = body.get("model"), body.get("input"), body.get("response_format") or {}
        if model not in VIDEO_MODELS:
            return _error(400, "INVALID_ARGUMENT", f"Model {model} cannot generate video.")
        if not isinstance(prompt, str) or not prompt.strip():
            return _error(400, "INVALID_ARGUMENT", "An input prompt is required.")
        if not body.get("background"):
            return _error(400, "INVALID_ARGUMENT", "This fake makes videos in background mode only.")
        duration = str(form.get("duration") or "8s")
        seconds = int(duration[:-1]) if duration.endswith("s") and duration[:-1].isdigit() else 0
        if form.get("type") != "video" or seconds not in VIDEO_SECONDS:
            return _error(400, "INVALID_ARGUMENT", f"Unsupported video duration {duration!r}: use 3s to 10s.")
        if form.get("aspect_ratio", "16:9") not in ("16:9", "9:16"):
            return _error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio {form.get('aspect_ratio')!r}.")
        interaction_id = "v1_" + uuid.uuid4().hex[:20]
        self.interactions[interaction_id] = {
            "id": interaction_id, "model": model, "prompt": prompt, "version": match["version"],
            "started": time.monotonic(), "created": _now(), "seconds": seconds, "filtered": bool(self.filtered),
            "response_format": form, "generation_config": body.get("generation_config") or {},
        }
        return web.json_response(self._interaction(self.interactions[interaction_id], "in_progress"))

    def _getInteraction(self, request, match, transport, body) -> web.Response:
        state = self.interactions.get(match["interaction"])
        if state is None:
            return _error(404, "NOT_FOUND", f"Interaction {match['interaction']} not found.")
        if self.held or time.monotonic() - state["started"] < self.op_seconds:
            return web.json_response(self._interaction(state, "in_progress"))
        return web.json_response(self._interaction(state, "completed"))

    def _interaction(self, state: dict, status: str) -> dict:
        answer = {"id": state["id"], "status": status, "model": state["model"], "created": state["created"],
                  "updated": _now(), "object": "interaction"}
        if status != "completed":
            return answer
        answer["steps"] = [{"type": "user_input", "content": [{"type": "text", "text": state["prompt"]}]},
                           {"type": "model_output", "content": [self._video_content(state)]}]
        answer["usage"] = {"total_input_tokens": 12,
                           "total_output_tokens": 0 if state["filtered"] else VIDEO_TOKENS_PER_SECOND * state["seconds"]}
        return answer

    def _video_content(self, state: dict) -> dict:
        if state["filtered"]:
            return {"type": "text", "text": VIDEO_BLOCK_REASON}
        data = state.setdefault("video", mp4_bytes(state["seconds"]))
        if self.video_delivery != "uri":
            return {"type": "video", "mime_type": "video/mp4", "data": base64.b64encode(data).decode()}
        file_id = state.setdefault("file_id", uuid.uuid4().hex[:12])
        self.files[file_id] = data
        return {"type": "video", "mime_type": "video/mp4",
                "uri": f"{DEVELOPER_HOST}/{state['version']}/files/{file_id}:download?alt=media"}

    # ---- Developer API file download: 302 to a blob, as Google redirects to storage

    def _download(self, request, match, transport, body) -> web.StreamResponse:
        if request.query.get("alt") != "media":
            return _error(400, "INVALID_ARGUMENT", "Only alt=media downloads are supported here.")
        if match["file"] not in self.files:
            return _error(404, "NOT_FOUND", f"File {match['file']} not found.")
        raise web.HTTPFound(f"{self.url}/blobs/{match['file']}")

    def _blob(self, file_id: str) -> web.Response:
        if file_id not in self.files:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=self.files[file_id], content_type="video/mp4")


async def _json_body(request: web.Request) -> dict:
    if request.method != "POST" or not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --------------------------------------------------------------------------- process mode

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Fake Gemini API / Vertex express server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--op-seconds", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = FakeGemini(host=args.host, port=args.port, api_key=args.api_key, op_seconds=args.op_seconds,
                      latency=args.latency).start()
    serve_until_terminated(fake)


if __name__ == "__main__":
    main()
