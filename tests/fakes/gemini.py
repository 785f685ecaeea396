"""A fake Google Gemini API on loopback, speaking both transports' wire formats.

Shapes follow /work/shared/reference/external-apis.md section 3 (google-genai 3.4.0 against
Google's REST API):

Gemini Developer API (generativelanguage.googleapis.com)::

    POST /{v}/models/{m}:generateContent         image models, inlineData parts
    POST /{v}/models/{m}:countTokens              cheap call used as a health probe
    POST /{v}/models/{m}:predictLongRunning       Veo start  -> {"name": "models/{m}/operations/{id}"}
    GET  /{v}/models/{m}/operations/{id}          Veo poll   -> generateVideoResponse.generatedSamples
    GET  /{v}/files/{id}:download?alt=media       the video; 302 to a blob URL, like Google

Vertex AI express mode (aiplatform.googleapis.com, API key, no project/location)::

    POST /{v}/publishers/google/models/{m}:generateContent
    POST /{v}/publishers/google/models/{m}:countTokens
    POST /{v}/publishers/google/models/{m}:predictLongRunning
    POST /{v}/publishers/google/models/{m}:fetchPredictOperation   {"operationName": ...}
                                                  done -> response.videos[].bytesBase64Encoded

The SDK quirk: a Developer API video URI must look like
`https://generativelanguage.googleapis.com/{v}/files/<id>:download?alt=media`; the SDK takes the
file id out of it and fetches `/files/<id>:download` from the *configured* base URL.

Switches are plain attributes and may be changed while the server runs::

    with FakeGemini(op_seconds=1) as fake:
        fake.fail_429 = 2          # the next 2 API calls answer 429 RESOURCE_EXHAUSTED
        fake.fail_500 = 1          # the next call answers 500 INTERNAL
        fake.filtered = True       # results are safety-filtered ("prompt": the prompt is blocked)
        fake.bad_request = "..."   # every call answers 400 INVALID_ARGUMENT with this message
        fake.forbidden = "..."     # every call answers 403 PERMISSION_DENIED with this message
        fake.retired = {"veo-x"}   # these models answer 404 NOT_FOUND
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
    ("POST", rf"^/{VERSION}/publishers/google/models/{MODEL}:(?P<action>generateContent|countTokens|"
             r"predictLongRunning|fetchPredictOperation)$", "vertex", None),
    ("POST", rf"^/{VERSION}/models/{MODEL}:(?P<action>generateContent|countTokens|predictLongRunning)$",
     "gemini", None),
    ("GET", rf"^/{VERSION}/models/{MODEL}/operations/(?P<op>[^/:]+)$", "gemini", "getOperation"),
    ("GET", rf"^/{VERSION}/files/(?P<file>[^/:]+):download$", "gemini", "download"),
    ("GET", r"^/blobs/(?P<file>[^/:]+)$", "blob", "blob"),
]
# Aspect ratios the fake understands, and the pixel size it draws for each (small: fast tests).
ASPECTS = {"1:1": (64, 64), "2:3": (64, 96), "3:2": (96, 64), "3:4": (64, 85), "4:3": (85, 64),
           "4:5": (64, 80), "5:4": (80, 64), "9:16": (64, 114), "16:9": (114, 64), "21:9": (149, 64)}
IMAGE_BLOCK_MESSAGE = ("Unable to show the generated image. The image was filtered out because it violated "
                       "Google's Generative AI Prohibited Use policy.")
VIDEO_BLOCK_REASON = ("Veo could not generate videos because the input prompt contains content that "
                      "violates our usage guidelines. Support code: 58061214.")


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


# --------------------------------------------------------------------------- the server

PAID_ACTIONS = ("generateContent", "predictLongRunning")  # the calls Google bills (per image, per Veo second)


class FakeGemini:
    """Fake Gemini API + Vertex express on 127.0.0.1. Switches may be changed while running."""

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1", api_key: str = DEFAULT_API_KEY,
                 op_seconds: float = 1.0, latency: float = 0.0):
        self.host, self.port = host, port
        self.api_key = api_key
        self.op_seconds = op_seconds  # how long a Veo operation stays not-done
        self.held = False  # True: every Veo operation stays not-done, whatever its age, until set False
        self.latency = latency  # added to every API answer
        # Seconds a paid call's answer is held after the run is made (the image generated, the
        # Veo operation started), as when a connection dies mid-call; other calls answer at once.
        self.paid_answer_delay = 0.0
        self.filtered = False  # True: outputs are safety-filtered; "prompt": the prompt is blocked
        self.fail_429 = 0  # the next N API calls answer 429 RESOURCE_EXHAUSTED
        self.fail_500 = 0  # the next N API calls answer 500 INTERNAL
        self.retry_delay = None  # e.g. "7s": a google.rpc.RetryInfo detail on 429 answers
        self.bad_request = None  # str: every API call answers 400 INVALID_ARGUMENT with it
        self.forbidden = None  # str: every API call answers 403 PERMISSION_DENIED with it
        self.retired = set()  # model ids answering 404 NOT_FOUND, like a shut-down model
        self.requests: list[dict] = []
        self.operations: dict[str, dict] = {}  # operation id -> state
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
                  "model": (route[0].groupdict().get("model") if route else None), "body": body,
                  "api_key": request.headers.get("x-goog-api-key"), "time": time.time()}
        self.requests.append(record)
        if route is None:
            return _error(404, "NOT_FOUND", f"The requested URL {request.path} was not found on this server.")
        match, transport, action = route
        if action == "blob":
            return self._blob(match["file"])
        refusal = self._refusal(request, transport, match.groupdict().get("model"))
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
            if match and request.method == method:
                return match, transport, action or match["action"]
        return None

    def _refusal(self, request, transport: str, model):
        """What Google checks before doing any work: the key, quota, then the request."""
        key = request.headers.get("x-goog-api-key")
        if not key:
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API consumer identity "
                          "to call this API.")
        if key != self.api_key:
            if transport == "vertex":
                return _error(401, "UNAUTHENTICATED", "API keys are not supported by this API. Expected OAuth2 "
                              "access token or other authentication credentials that assert a principal.")
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
        if model in self.retired:
            return _error(404, "NOT_FOUND", f"models/{model} is not found for API version "
                          f"{request.path.split('/')[1]}, or is not supported for this method.")
        return None

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

    # ---- Veo long-running operations

    def _predictLongRunning(self, request, match, transport, body) -> web.Response:
        instances, parameters = body.get("instances") or [], body.get("parameters") or {}
        if not instances or not (instances[0] or {}).get("prompt"):
            return _error(400, "INVALID_ARGUMENT", "A prompt is required.")
        duration = int(parameters.get("durationSeconds") or 8)
        if duration not in (4, 6, 8):
            return _error(400, "INVALID_ARGUMENT", f"Unsupported duration {duration}s: use 4, 6 or 8.")
        op_id = uuid.uuid4().hex[:12]
        prefix = "publishers/google/models" if transport == "vertex" else "models"
        name = f"{prefix}/{match['model']}/operations/{op_id}"
        self.operations[op_id] = {"name": name, "transport": transport, "model": match["model"],
                                  "version": match["version"], "started": time.monotonic(),
                                  "filtered": bool(self.filtered), "duration": duration, "parameters": parameters}
        return web.json_response({"name": name})

    def _getOperation(self, request, match, transport, body) -> web.Response:
        return self._operation(match["op"], "gemini")

    def _fetchPredictOperation(self, request, match, transport, body) -> web.Response:
        op_id = str(body.get("operationName") or "").rpartition("/operations/")[2]
        return self._operation(op_id, "vertex")

    def _operation(self, op_id: str, transport: str) -> web.Response:
        state = self.operations.get(op_id)
        if state is None or state["transport"] != transport:
            return _error(404, "NOT_FOUND", f"Operation {op_id} not found.")
        if self.held or time.monotonic() - state["started"] < self.op_seconds:
            return web.json_response({"name": state["name"]})
        response = self._vertex_result(state) if transport == "vertex" else self._developer_result(state)
        return web.json_response({"name": state["name"], "done": True, "response": response})

    def _developer_result(self, state: dict) -> dict:
        result = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"}
        if state["filtered"]:
            result["generateVideoResponse"] = {"raiMediaFilteredCount": 1,
                                               "raiMediaFilteredReasons": [VIDEO_BLOCK_REASON]}
            return result
        file_id = uuid.uuid4().hex[:12]
        self.files[file_id] = mp4_bytes(state["duration"])
        uri = f"{DEVELOPER_HOST}/{state['version']}/files/{file_id}:download?alt=media"
        result["generateVideoResponse"] = {"generatedSamples": [{"video": {"uri": uri}}]}
        return result

    def _vertex_result(self, state: dict) -> dict:
        result = {"@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"}
        if state["filtered"]:
            result.update(raiMediaFilteredCount=1, raiMediaFilteredReasons=[VIDEO_BLOCK_REASON])
            return result
        data = base64.b64encode(mp4_bytes(state["duration"])).decode()
        result.update(raiMediaFilteredCount=0, videos=[{"bytesBase64Encoded": data, "mimeType": "video/mp4"}])
        return result

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
