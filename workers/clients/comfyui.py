"""Client for a ComfyUI server (the local GPU, or a cloud pod), HTTP + WebSocket.

Protocol facts used here (shared/reference/external-apis.md §1 and the ComfyUI 0.8.0 capture):
- `POST /prompt` accepts our own `prompt_id`; we use the attempt id, so a resubmission after
  a crash can find the first one in `/history` or `/queue` instead of running it twice.
- `GET /history/{id}` is `{}` until the prompt has finished; history is written *before* the
  final `executing` event with `node: null`, so that event means "history is ready".
- Per-prompt WebSocket events go only to the socket whose clientId equals the prompt's
  `client_id`; reconnecting with the same id replaces the old socket.
"""
import json
import math
import mimetypes
import time
from typing import Optional
from urllib.parse import urlencode

import websocket
from django.conf import settings

from workers.workflows.requirements import inventory_from_object_info

from .base import BackendError, Client, Done, Failed, Health, Progress, ProgressCallback, RemoteOutput
from .comfyui_errors import validation_error
from .http import Http

HIGH_PRIORITY = 2  # routing.models.Priority.HIGH (clients do not import models)

# Runtime errors that mean "this machine could not do it", not "your workflow is wrong".
RESOURCE_ERRORS = ("OutOfMemory", "CUDA", "out of memory", "HIP", "MPS")


class ComfyUIClient(Client):
    service = "ComfyUI"

    def __init__(self, url: str, timeout: float = 10.0, health_timeout: float = 2.0,
                 watch_seconds: float = 5.0, poll_interval: float = 1.0):
        self.url = url.rstrip("/")
        self.http = Http(self.url, self.service, timeout=timeout)
        self.health_timeout = health_timeout
        self.watch_seconds = watch_seconds
        self.poll_interval = poll_interval

    @classmethod
    def for_backend(cls, backend, url: str) -> "ComfyUIClient":
        return cls(url, timeout=settings.COMFYUI_HTTP_TIMEOUT, health_timeout=settings.COMFYUI_HEALTH_TIMEOUT,
                   watch_seconds=settings.COMFYUI_WATCH_SECONDS, poll_interval=settings.COMFYUI_POLL_INTERVAL)

    # --- submit ---------------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        try:
            return self._submit(spec)
        except BackendError as error:
            # Our prompt id makes a second submit (spec["resubmit"]) find the first one.
            error.resend_safe = error.retryable
            raise

    def _submit(self, spec: dict) -> dict:
        handle = {"prompt_id": spec["attempt_id"], "client_id": f"comfy-hybrid-{spec['attempt_id']}",
                  "nodes": len(spec["workflow"]) if isinstance(spec.get("workflow"), dict) else 0}
        if spec.get("resubmit", True) and self._already_known(handle["prompt_id"]):
            return handle  # a redelivered submit: the first one reached ComfyUI
        body = {"prompt": spec["workflow"], "client_id": handle["client_id"], "prompt_id": handle["prompt_id"]}
        if spec.get("priority") == HIGH_PRIORITY:
            body["front"] = True  # ComfyUI runs it before the prompts already waiting
        elif spec.get("order") is not None:
            # ComfyUI runs its queue by `number`, by default the arrival order, which two workers
            # may reach in either order: the job's acceptance time keeps first come, first served
            # (prompts from ComfyUI's own page keep its smaller counter and go first).
            body["number"] = spec["order"]
        response = self.http.request("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise validation_error(_json_or_empty(response), spec["workflow"])
        if response.status_code >= 400:
            raise BackendError(f"ComfyUI refused the prompt: HTTP {response.status_code}", retryable=True)
        data = _json(response)
        if data.get("prompt_id") != handle["prompt_id"]:
            handle["prompt_id"] = data.get("prompt_id") or handle["prompt_id"]
        return handle

    def _already_known(self, prompt_id: str) -> bool:
        if self._history(prompt_id):
            return True
        running, pending = self._queue_ids()
        return prompt_id in running or prompt_id in pending

    # --- poll -----------------------------------------------------------------------------
    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        """Finished → Done/Failed. Pending → Progress with its queue position. Running →
        listen on the WebSocket for up to `watch_seconds`, reporting progress as it comes."""
        prompt_id = handle["prompt_id"]
        entry = self._history(prompt_id)
        if entry:
            return self._result(prompt_id, entry)
        running, pending = self._queue_ids()
        if prompt_id in pending:  # ahead of it: the waiting prompts before it and the one running
            return Progress(percent=0, running=False, position=len(running) + pending.index(prompt_id),
                            next_poll=self.poll_interval)
        if prompt_id not in running:
            entry = self._history(prompt_id)  # it may have finished between the two calls
            if entry:
                return self._result(prompt_id, entry)
            return Failed("ComfyUI no longer knows this job (was it restarted?)", retryable=True, outage=True)
        if on_progress:  # running now: say so before the watch, not when its window ends
            on_progress(Progress(percent=0, running=True, next_poll=0))
        return self._watch(handle, on_progress)

    def _watch(self, handle: dict, on_progress: Optional[ProgressCallback]):
        prompt_id = handle["prompt_id"]
        deadline = time.monotonic() + self.watch_seconds
        progress = Progress(percent=0, running=True, next_poll=0)  # the watch itself waited
        try:
            ws = websocket.create_connection(self._ws_url(handle["client_id"]), timeout=self.health_timeout)
            # Our first message asks for previews with their prompt id (binary type 4, not 1).
            ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            # ComfyUI registers the socket, then sends `status`; once that arrived every later
            # event reaches us, so a history check after it cannot miss the prompt's end.
            ws.recv()
        except (OSError, websocket.WebSocketException):
            return self._poll_history_until(prompt_id, deadline, progress)
        try:
            entry = self._history(prompt_id)
            if entry:
                return self._result(prompt_id, entry)
            return self._read_events(ws, prompt_id, deadline, progress, on_progress, nodes=handle.get("nodes") or 0)
        finally:
            ws.close()

    def _read_events(self, ws, prompt_id, deadline, progress, on_progress, nodes: int = 0):
        tracker = ProgressTracker(nodes)
        while (remaining := deadline - time.monotonic()) > 0:
            ws.settimeout(remaining)
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            except (OSError, websocket.WebSocketException):
                # The socket dropped: fall back to polling history for the rest of the window.
                return self._poll_history_until(prompt_id, deadline, progress)
            if isinstance(frame, bytes):
                preview = decode_preview(frame, prompt_id)
                if preview and on_progress:
                    on_progress(Progress(percent=progress.percent, running=True, next_poll=0,
                                         preview=preview[1], preview_mime=preview[0]))
                continue
            event = _event(frame)
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = event.get("type")
            if kind == "executing" and data.get("node") is None:
                return self._result(prompt_id, self._history(prompt_id))
            if kind in ("execution_error", "execution_interrupted"):
                entry = self._history(prompt_id)
                return self._result(prompt_id, entry) if entry else _failure(kind, data)
            percent = tracker.update(kind, data)
            if percent is not None and percent != progress.percent:
                progress = Progress(percent=percent, running=True, next_poll=0)
                if on_progress:
                    on_progress(progress)
        return progress

    def _poll_history_until(self, prompt_id, deadline, progress):
        while time.monotonic() < deadline:
            entry = self._history(prompt_id)
            if entry:
                return self._result(prompt_id, entry)
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        return progress

    def _result(self, prompt_id: str, entry: dict):
        if not entry:
            return Failed("ComfyUI reported the job finished but has no record of it", retryable=True,
                          outage=True)
        status = entry.get("status") or {}
        messages = status.get("messages") or []
        if status.get("status_str") == "success" or status.get("completed"):
            return Done(outputs=collect_outputs(entry.get("outputs") or {}), seconds=_elapsed(messages))
        for name, data in reversed(messages):
            if name in ("execution_error", "execution_interrupted"):
                return _failure(name, data)
        return Failed("ComfyUI ended the job without a result", retryable=True)

    # --- cancel, health, download ---------------------------------------------------------
    def cancel(self, handle: dict) -> None:
        prompt_id = handle["prompt_id"]
        self.http.request("POST", "/queue", json={"delete": [prompt_id]})
        self.http.request("POST", "/interrupt", json={"prompt_id": prompt_id})

    def health(self) -> Health:
        started = time.monotonic()
        try:
            stats = self.http.json("GET", "/system_stats", timeout=self.health_timeout)
            queue = self.http.json("GET", "/prompt", timeout=self.health_timeout)
        except BackendError as error:
            return Health(ok=False, detail=error.message)
        latency = (time.monotonic() - started) * 1000
        devices = stats.get("devices") or [{}]
        gpu = devices[0]
        return Health(
            ok=True,
            latency_ms=round(latency, 1),
            queue_depth=int((queue.get("exec_info") or {}).get("queue_remaining") or 0),
            gpu=_gpu_name(gpu),
            vram_total=gpu.get("vram_total"),
            detail=f"ComfyUI {(stats.get('system') or {}).get('comfyui_version', '?')}",
        )

    def download(self, output: RemoteOutput) -> bytes:
        if output.data is not None:
            return output.data
        query = urlencode({k: output.ref.get(k, "") for k in ("filename", "subfolder", "type")})
        response = self.http.request("GET", f"/view?{query}")
        if response.status_code != 200:
            raise BackendError(f"ComfyUI could not serve {output.filename}: HTTP {response.status_code}", retryable=True)
        return response.content

    def inventory(self) -> dict:
        """Its model files per folder and node classes, from `/object_info` (ComfyUI rescans the
        model folders for every such request, so this is current)."""
        info = self.http.json("GET", "/object_info")
        if not isinstance(info, dict):
            raise BackendError("ComfyUI sent an /object_info that is not an object", retryable=True, outage=True)
        return inventory_from_object_info(info)

    # --- helpers --------------------------------------------------------------------------
    def _history(self, prompt_id: str) -> dict:
        return self.http.json("GET", f"/history/{prompt_id}").get(prompt_id) or {}

    def _queue_ids(self) -> tuple[list, list]:
        queue = self.http.json("GET", "/queue")
        running = [item[1] for item in queue.get("queue_running") or [] if len(item) > 1]
        pending = sorted(queue.get("queue_pending") or [], key=lambda item: item[0])
        return running, [item[1] for item in pending if len(item) > 1]

    def _ws_url(self, client_id: str) -> str:
        scheme = "wss" if self.url.startswith("https") else "ws"
        return f"{scheme}://{self.url.split('://', 1)[1]}/ws?clientId={client_id}"


def collect_outputs(outputs: dict) -> list[RemoteOutput]:
    """Every saved file of every output node (images, animated images, videos, gifs).
    Temp previews are skipped, as worker-comfyui does."""
    found = []
    for node_output in outputs.values():
        for key in ("images", "gifs", "videos", "video", "audio"):
            for item in node_output.get(key) or []:
                if not isinstance(item, dict) or item.get("type") == "temp" or not item.get("filename"):
                    continue
                mime = mimetypes.guess_type(item["filename"])[0] or "application/octet-stream"
                found.append(RemoteOutput(filename=item["filename"], mime=mime, ref=item))
    return found


def _failure(kind: str, data: dict) -> Failed:
    if kind == "execution_interrupted":
        return Failed("The job was interrupted on ComfyUI", retryable=False)
    text = f"{data.get('exception_type', 'Error')}: {data.get('exception_message', '').strip()}"
    where = f" in node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else ""
    return Failed(f"ComfyUI failed{where}: {text}", retryable=any(s in text for s in RESOURCE_ERRORS))


def _elapsed(messages: list) -> Optional[float]:
    stamps = {name: data.get("timestamp") for name, data in messages if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return round((end - start) / 1000, 3) if start and end else None


def _gpu_name(device: dict) -> str:
    # "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync" → "NVIDIA GeForce RTX 4090"
    name = device.get("name") or ""
    if device.get("type") == "cpu":
        return "CPU"
    name = name.split(" : ")[0]
    return name.split(" ", 1)[1] if ":" in name.split(" ", 1)[0] else name


class ProgressTracker:
    """Percent done from ComfyUI's events, on every workflow: the nodes finished (cached ones
    included) plus the running node's fraction, out of the prompt's nodes. `progress_state`
    carries every node that is not pending ({id: {value, max, state}}) for each node start,
    step and end; `progress` (value/max) comes only from progress-bar nodes such as samplers."""

    def __init__(self, nodes: int):
        self.total = nodes
        self.states: dict = {}  # node id -> (state, value, max)
        self.cached: set = set()

    def update(self, kind: str, data: dict) -> Optional[int]:
        """The new percent after this event, or None when it says nothing about progress."""
        if kind == "execution_cached":
            self.cached.update(str(n) for n in data.get("nodes") or [])
        elif kind == "progress_state" and isinstance(data.get("nodes"), dict):
            for node_id, node in data["nodes"].items():
                if isinstance(node, dict):
                    self.states[str(node_id)] = (node.get("state"), node.get("value"), node.get("max"))
        elif kind == "progress" and data.get("node") is not None:
            self.states[str(data["node"])] = ("running", data.get("value"), data.get("max"))
        elif kind not in ("execution_start", "executing"):
            return None
        return self.percent()

    def percent(self) -> int:
        done = len(self.cached | {n for n, (state, _, _) in self.states.items() if state == "finished"})
        running = sum(_fraction(value, top) for n, (state, value, top) in self.states.items()
                      if state == "running" and n not in self.cached)
        total = max(self.total, len(self.cached | set(self.states)), 1)
        return max(0, min(99, int(100 * (done + running) / total)))


def _fraction(value, top) -> float:
    """value/top within 0..1; 0 for anything that is not two finite numbers (never raises)."""
    try:
        fraction = float(value) / float(top)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return 0.0
    return max(0.0, min(1.0, fraction)) if math.isfinite(fraction) else 0.0


PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4  # ComfyUI's protocol.BinaryEventTypes
PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


def decode_preview(frame: bytes, prompt_id: str) -> Optional[tuple[str, bytes]]:
    """(mime, image) of a binary preview frame for this prompt, else None. Integers are 4-byte
    big-endian: type 1 = [1][format: 1 JPEG, 2 PNG][image]; type 4 = [4][M][M bytes of JSON
    metadata: prompt_id, node_id, image_type…][image]. Text frames (type 3) are not previews."""
    if len(frame) < 8:
        return None
    kind, second = int.from_bytes(frame[:4], "big"), int.from_bytes(frame[4:8], "big")
    if kind == PREVIEW_IMAGE and second in PREVIEW_FORMATS and len(frame) > 8:
        return PREVIEW_FORMATS[second], frame[8:]
    if kind == PREVIEW_IMAGE_WITH_METADATA and 8 + second < len(frame):
        try:
            meta = json.loads(frame[8:8 + second].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("prompt_id") not in (None, prompt_id):
            return None
        mime = meta.get("image_type") if meta.get("image_type") in PREVIEW_FORMATS.values() else "image/jpeg"
        return mime, frame[8 + second:]
    return None


def _event(frame) -> dict:
    if not isinstance(frame, str):
        return {}  # binary preview frames
    try:
        event = json.loads(frame)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _json(response):
    try:
        return response.json()
    except ValueError:
        raise BackendError("ComfyUI sent a response that is not JSON", retryable=True, outage=True)


def _json_or_empty(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
