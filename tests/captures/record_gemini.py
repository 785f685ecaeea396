"""Record google-genai's own HTTP traffic for each transport against a loopback server.

    .venv/bin/python -m tests.captures.record_gemini      # rewrites gemini-sdk-<version>.json

The SDK is pointed at a recording server on 127.0.0.1 through HttpOptions(base_url=...). That
server answers each call with the shape Google documents (README.md beside this file), just
enough for the SDK to go on; what matters is what the SDK sends: method, path, query, headers
and body. The SDK calls are the ones workers/clients/gemini.py makes (same options), plus the
video calls it does not make, to show what they would send and why they are not made: Veo on
the Gemini API (refused by the SDK before anything is sent) and on Vertex express mode (sent,
but not among express mode's methods). The key is a dummy and is replaced in the file.
"""
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from google import genai
from google.genai import types
from google.genai import version as genai_version

KEY = "capture-dummy-key"
KEY_MARK = "<GEMINI_API_KEY>"
IMAGE, VIDEO, VEO = "gemini-3.1-flash-image", "gemini-omni-1.1-flash", "veo-3.1-generate-001"
INTERACTION = "v1_capture0001"
PROMPT = "a lighthouse at dusk"
KEPT_HEADERS = ("x-goog-api-key", "content-type", "accept", "user-agent", "x-goog-api-client", "x-server-timeout")
HERE = Path(__file__).resolve().parent
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC"
MP4 = "AAAAGGZ0eXBpc29tAAACAGlzb21pc28y"

# (method, path regex, status, answer): documented response shapes, minimal.
ANSWERS = [
    ("GET", r"/v1beta/models/[^/:]+$", 200,
     lambda model: {"name": f"models/{model}", "version": "001", "displayName": model,
                "supportedGenerationMethods": ["generateContent", "countTokens"]}),
    ("POST", r":generateContent$", 200,
     lambda model: {"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                                        "data": PNG}}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 1290, "totalTokenCount": 1296}}),
    ("POST", r":countTokens$", 200, lambda model: {"totalTokens": 4}),
    ("POST", r"/v1beta/interactions$", 200,
     lambda model: {"id": INTERACTION, "status": "in_progress", "model": VIDEO, "object": "interaction"}),
    ("GET", r"/v1beta/interactions/[^/]+$", 200,
     lambda model: {"id": INTERACTION, "status": "completed", "model": VIDEO, "object": "interaction",
                "steps": [{"type": "model_output", "content": [{"type": "video", "mime_type": "video/mp4",
                                                                  "data": MP4}]}]}),
    ("POST", r":predictLongRunning$", 200,
     lambda model: {"name": f"publishers/google/models/{VEO}/operations/capture-op-1"}),
    ("POST", r":fetchPredictOperation$", 200,
     lambda model: {"name": f"publishers/google/models/{VEO}/operations/capture-op-1", "done": True,
                "response": {"videos": [{"bytesBase64Encoded": MP4, "mimeType": "video/mp4"}],
                             "raiMediaFilteredCount": 0}}),
    ("GET", r"/v1/publishers/google/models/[^/:]+$", 200,
     lambda model: {"name": f"publishers/google/models/{VEO}", "versionId": "001"}),
]


def _model_of(path: str) -> str:
    found = re.search(r"models/([^/:]+)", path)
    return found.group(1) if found else ""


class _Recorder(BaseHTTPRequestHandler):
    log: list = []

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in KEPT_HEADERS}
        if "x-goog-api-key" in headers:
            headers["x-goog-api-key"] = KEY_MARK if headers["x-goog-api-key"] == KEY else "<another key>"
        self.log.append({"method": self.command, "path": split.path, "query": dict(parse_qsl(split.query)),
                         "headers": dict(sorted(headers.items())), "body": json.loads(raw) if raw else None})
        for method, pattern, status, answer in ANSWERS:
            if method == self.command and re.search(pattern, split.path):
                body = answer(_model_of(split.path))
                break
        else:
            status, body = 404, {"error": {"code": 404, "message": "not recorded", "status": "NOT_FOUND"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _client(url: str, transport: str) -> genai.Client:
    """As workers/clients/gemini.py builds it for a paid call (one attempt, 50 s)."""
    options = types.HttpOptions(base_url=url, api_version="v1beta" if transport == "gemini" else "v1",
                                timeout=50_000, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=KEY, vertexai=transport == "vertex", http_options=options)


def _image_config():
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"], seed=7, image_config=types.ImageConfig(aspect_ratio="16:9"),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))


# (transport, what, documented: the service offers it on this transport, the SDK calls)
SCENARIOS = [
    ("gemini", "health: models.get of the image model", True, lambda c: c.models.get(model=IMAGE)),
    ("gemini", "health: models.get of the video model", True, lambda c: c.models.get(model=VIDEO)),
    ("gemini", "image: models.generate_content", True,
     lambda c: c.models.generate_content(model=IMAGE, contents=PROMPT, config=_image_config())),
    ("gemini", "video: interactions.create in the background", True,
     lambda c: c.interactions.create(
         model=VIDEO, input=PROMPT, response_modalities=["video"], background=True,
         response_format={"type": "video", "aspect_ratio": "16:9", "duration": "4s", "delivery": "inline"},
         generation_config={"seed": 7})),
    ("gemini", "video: interactions.get (the poll)", True, lambda c: c.interactions.get(INTERACTION)),
    ("gemini", "Veo: models.generate_videos", False,
     lambda c: c.models.generate_videos(model=VEO, source=types.GenerateVideosSource(prompt=PROMPT))),
    ("vertex", "health: models.count_tokens of the image model", True,
     lambda c: c.models.count_tokens(model=IMAGE, contents="ping")),
    ("vertex", "image: models.generate_content", True,
     lambda c: c.models.generate_content(model=IMAGE, contents=PROMPT, config=_image_config())),
    ("vertex", "models.get (not in express mode)", False, lambda c: c.models.get(model=IMAGE)),
    ("vertex", "Veo: models.generate_videos (not in express mode)", False,
     lambda c: c.models.generate_videos(
         model=VEO, source=types.GenerateVideosSource(prompt=PROMPT),
         config=types.GenerateVideosConfig(number_of_videos=1, duration_seconds=4, aspect_ratio="16:9"))),
    ("vertex", "Veo: operations.get (not in express mode)", False,
     lambda c: c.operations.get(types.GenerateVideosOperation(
         name=f"publishers/google/models/{VEO}/operations/capture-op-1"))),
]


def record() -> dict:
    """Run every scenario through the installed SDK; the capture as a dict."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    exchanges = []
    try:
        for transport, what, documented, call in SCENARIOS:
            _Recorder.log = []
            refused = None
            try:
                call(_client(url, transport))
            except ValueError as error:  # the SDK refusing before it sends anything
                refused = f"{type(error).__name__}: {error}"
            exchanges.append({"transport": transport, "call": what, "documented": documented,
                              "sdk_refused": refused, "requests": list(_Recorder.log)})
    finally:
        server.shutdown()
        server.server_close()
    return {"sdk": f"google-genai {genai_version.__version__}", "recorded_by": "tests/captures/record_gemini.py",
            "base_url": "http://127.0.0.1:<port> (HttpOptions.base_url)", "exchanges": exchanges}


def capture_path(version: str = genai_version.__version__) -> Path:
    return HERE / f"gemini-sdk-{version}.json"


def main() -> None:
    path = capture_path()
    path.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
