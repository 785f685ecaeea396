"""Client for a RunPod serverless endpoint running the ComfyUI worker (deploy/runpod-worker).

Protocol facts used here (shared/reference/external-apis.md §2.1, §2.2, §2.8):
- `POST /v2/{endpoint}/run {"input": {"workflow", "images"?}, "policy"}` → `{"id", "status"}`;
  `GET /status/{id}` → `{"status", "delayTime"?, "executionTime"?, "output"?, "error"?}`
  (times in ms); `POST /cancel/{id}`; `GET /health`. Results are kept only 30 minutes, so
  outputs come back as RemoteOutput and the generic code stores them at once.
- The SDK's `Endpoint` copies `runpod.endpoint_url_base` (a module global) when it is built,
  so it is built under a lock with the base URL of this backend; the key is passed to the
  constructor, never put in the module global (so nothing else in the process can use it).
- While a job is IN_PROGRESS, `output` on `/status` is the last progress its worker sent with
  `runpod.serverless.progress_update` (the SDK POSTs `{"status": "IN_PROGRESS", "output": p}`
  to the job-done URL; runpod-python #12, #105). Our handler sends `{"percent": n, ...}`;
  others send `{"progress": "4/10"}`, a number or text. Whatever it is, it never fails a poll.
- The SDK mounts `Retry(total=5, backoff_factor=1, status_forcelist=[408, 429])` on its session
  for http:// only, so against the real (https) API it never retries. Its retry is mounted here
  on both schemes, with settings that suit a worker: reads (`/status`, `/health`) are retried
  RUNPOD_HTTP_RETRIES times on 408/429/5xx and refused connections, with a short back-off
  (a worker is never held for half a minute); a POST (`/run`, `/cancel`) only when it never
  left (connect errors), since `/run` has no idempotency key. After the last try the answer is
  classed here as before (a 429: retryable).
"""
import base64
import binascii
import json
import math
import mimetypes
import threading
import time
from typing import Optional

import requests
import runpod
from django.conf import settings
from requests.adapters import HTTPAdapter, Retry
from runpod.endpoint.runner import Job

from workers.workflows.requirements import model_input_folder

from .base import BackendError, Client, Done, Failed, Health, Progress, ProgressCallback, RemoteOutput

API_KEY_REJECTED = "RUNPOD_API_KEY rejected by RunPod (HTTP 401)"
API_KEY_MISSING = "RUNPOD_API_KEY not set"
OUTPUT_KEYS = ("images", "videos", "gifs", "files")

# A FAILED job whose error is one of these is the user's workflow at fault: another backend
# would refuse it too, so the job fails at once with ComfyUI's own words. Our handler also
# says so explicitly with `output.error_kind` (deploy/runpod-worker/handler.py).
VALIDATION_MARKERS = (
    "Workflow validation failed", "Prompt outputs failed validation", "ComfyUI rejected the workflow",
    "Cannot execute because", "Prompt has no outputs", "Missing 'workflow' parameter",
    "'images' must be a list", "Invalid JSON format in input",
)
USER_FAULTS = ("validation", "execution")  # handler.py's error_kind values that are not retried
# ...except a checkpoint the worker lacks: that is the worker's fault (as in the ComfyUI client).
MODEL_MISSING_MARKERS = ("ckpt_name", "does not have the model", "required model")

_SDK_LOCK = threading.Lock()


class NotFound(BackendError):
    """HTTP 404: an unknown endpoint, or a job RunPod no longer keeps."""


def sdk_retry(attempts: int) -> Retry:
    """The SDK's own retry policy, bounded for a worker (see the module doc)."""
    return Retry(total=attempts, connect=attempts, read=0, status=attempts, backoff_factor=0.25, backoff_max=2,
                 status_forcelist=(408, 429, 500, 502, 503, 504), allowed_methods=frozenset({"GET"}),
                 raise_on_status=False, respect_retry_after_header=False)


def build_endpoint(endpoint_id: str, api_key: str, base_url: str, retries: int = 2) -> runpod.Endpoint:
    with _SDK_LOCK:
        previous = runpod.endpoint_url_base
        runpod.endpoint_url_base = base_url.rstrip("/")
        try:
            endpoint = runpod.Endpoint(endpoint_id, api_key=api_key)
        finally:
            runpod.endpoint_url_base = previous
    adapter = HTTPAdapter(max_retries=sdk_retry(retries))
    endpoint.rp_client.rp_session.mount("http://", adapter)
    endpoint.rp_client.rp_session.mount("https://", adapter)
    return endpoint


class RunPodClient(Client):
    service = "RunPod serverless"

    def __init__(self, *, api_key: str, endpoint_id: str, base_url: str, timeout: float = 10.0,
                 health_timeout: float = 3.0, poll_interval: float = 2.0, execution_timeout: int = 600,
                 max_output_bytes: int = 512 * 1024 * 1024, retries: int = 2):
        if not api_key:
            raise BackendError(API_KEY_MISSING, retryable=False)
        if not endpoint_id:
            raise BackendError("RUNPOD_ENDPOINT_ID not set", retryable=False)
        self.endpoint_id = endpoint_id
        self.endpoint = build_endpoint(endpoint_id, api_key, base_url, retries)
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.poll_interval = poll_interval
        self.execution_timeout = execution_timeout
        self.max_output_bytes = max_output_bytes

    @classmethod
    def for_backend(cls, backend, url: str) -> "RunPodClient":
        return cls(api_key=settings.RUNPOD_API_KEY,
                   endpoint_id=backend.config.get("endpoint_id") or settings.RUNPOD_ENDPOINT_ID,
                   base_url=url or settings.RUNPOD_ENDPOINT_BASE_URL, timeout=settings.RUNPOD_HTTP_TIMEOUT,
                   poll_interval=settings.RUNPOD_POLL_INTERVAL, execution_timeout=settings.RUNPOD_EXECUTION_TIMEOUT,
                   max_output_bytes=settings.OUTPUT_MAX_BYTES, retries=settings.RUNPOD_HTTP_RETRIES)

    # --- the four calls ---------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        job_input = {"workflow": spec["workflow"]}
        if spec.get("images"):
            job_input["images"] = spec["images"]
        body = {"input": job_input, "policy": {"executionTimeout": self.execution_timeout * 1000}}
        data = self._call("submit the job", self.endpoint.rp_client.post, f"{self.endpoint_id}/run", body,
                          timeout=self.timeout)
        if not isinstance(data, dict) or not data.get("id"):
            raise BackendError("RunPod accepted the job but sent no job id", retryable=True)
        return {"job_id": data["id"], "endpoint_id": self.endpoint_id}

    def starts_paid_run(self, phase: str, handle: dict) -> bool:
        return phase == "submit"  # /run has no idempotency key, and RunPod lists no requests

    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        path = f"{handle.get('endpoint_id') or self.endpoint_id}/status/{handle['job_id']}"
        try:
            state = self._call("read the job status", self.endpoint.rp_client.get, path, timeout=self.timeout)
        except NotFound:
            return Failed("RunPod no longer knows this job (results are kept 30 minutes)", retryable=True)
        return self._result(state if isinstance(state, dict) else {})

    def cancel(self, handle: dict) -> None:
        job = Job(handle.get("endpoint_id") or self.endpoint_id, handle["job_id"], self.endpoint.rp_client)
        self._call("cancel the job", job.cancel, timeout=self.timeout)

    def ran_seconds(self, handle: dict) -> Optional[float]:
        """A cancelled job is billed for the seconds it ran: `/status` keeps its `executionTime`
        (absent: it never started). None while it is still running (the cancel not yet applied)."""
        path = f"{handle.get('endpoint_id') or self.endpoint_id}/status/{handle['job_id']}"
        try:
            state = self._call("read the job status", self.endpoint.rp_client.get, path, timeout=self.timeout)
        except NotFound:
            return None
        if not isinstance(state, dict) or state.get("status") in ("IN_QUEUE", "IN_PROGRESS", "RUNNING"):
            return None
        return _seconds(state.get("executionTime")) or 0.0

    def health(self) -> Health:
        started = time.monotonic()
        try:
            data = self._call("read the endpoint health", self.endpoint.health, timeout=self.health_timeout)
        except BackendError as error:
            return Health(ok=False, detail=error.message)
        jobs, workers = data.get("jobs") or {}, data.get("workers") or {}
        return Health(
            ok=True, latency_ms=round((time.monotonic() - started) * 1000, 1),
            queue_depth=int(jobs.get("inQueue") or 0) + int(jobs.get("inProgress") or 0),
            detail=f"workers: {workers.get('idle', 0)} idle, {workers.get('running', 0)} running",
        )

    def download(self, output: RemoteOutput) -> bytes:
        if output.data is not None:
            return output.data
        return fetch_url(output.ref.get("url", ""), timeout=self.timeout * 6, max_bytes=self.max_output_bytes)

    # --- helpers --------------------------------------------------------------------------
    # --- the inventory probe job (deploy/runpod-worker/handler.py, `inventory`) -----------
    def start_inventory_probe(self) -> dict:
        """A job that asks the endpoint's worker what its ComfyUI holds. A paid run (a few
        seconds, plus a cold start when no worker is warm)."""
        body = {"input": {"inventory": True}, "policy": {"executionTimeout": 300 * 1000}}
        data = self._call("start the inventory probe job", self.endpoint.rp_client.post,
                          f"{self.endpoint_id}/run", body, timeout=self.timeout)
        if not isinstance(data, dict) or not data.get("id"):
            raise BackendError("RunPod accepted the inventory probe job but sent no job id", retryable=True)
        return {"job_id": data["id"], "endpoint_id": self.endpoint_id}

    def inventory_probe_result(self, handle: dict) -> Optional[tuple[dict, float]]:
        """(inventory, seconds billed) once the probe job ended; None while it runs."""
        path = f"{handle.get('endpoint_id') or self.endpoint_id}/status/{handle['job_id']}"
        state = self._call("read the inventory probe job", self.endpoint.rp_client.get, path, timeout=self.timeout)
        state = state if isinstance(state, dict) else {}
        if state.get("status") in ("IN_QUEUE", "IN_PROGRESS", "RUNNING"):
            return None
        found = (state.get("output") or {}).get("inventory") if isinstance(state.get("output"), dict) else None
        if state.get("status") != "COMPLETED" or not isinstance(found, dict) or not isinstance(found.get("models"), dict):
            why = state.get("error") or f"status {state.get('status')!r}, no inventory in its output"
            raise BackendError(f"The inventory probe job did not report an inventory ({str(why)[:300]}); is the "
                               f"endpoint running the deploy/runpod-worker image?", retryable=False)
        return {"models": found["models"], "nodes": list(found.get("nodes") or [])}, \
            _seconds(state.get("executionTime")) or 0.0

    def _result(self, state: dict):
        status = state.get("status")
        if status == "IN_QUEUE":
            return Progress(percent=0, running=False, next_poll=self.poll_interval)
        if status in ("IN_PROGRESS", "RUNNING"):
            return Progress(percent=progress_percent(state.get("output")), running=True,
                            next_poll=self.poll_interval)
        if status == "COMPLETED":
            try:
                outputs = collect_outputs(state.get("output"))
            except BackendError as error:
                return Failed(error.message, retryable=True)
            return Done(outputs=outputs, seconds=_seconds(state.get("executionTime")))
        if status == "FAILED":  # billed like any run: keep what RunPod reports of its time
            failed = failed_job(state.get("error"), state.get("output"))
            failed.seconds = _seconds(state.get("executionTime"))
            return failed
        if status == "CANCELLED":
            return Failed("The job was cancelled on RunPod", retryable=False)
        if status == "TIMED_OUT":
            return Failed(f"RunPod stopped the job after its execution timeout ({self.execution_timeout}s)",
                          retryable=True)
        return Failed(f"RunPod sent an unknown job status {status!r}", retryable=True)

    def _call(self, what: str, function, *args, **kwargs):
        """One SDK call with its errors classed; the key never appears in a message."""
        try:
            return function(*args, **kwargs)
        except RuntimeError as error:  # the SDK's 401 and "no key" errors
            if "401" in str(error):
                raise BackendError(API_KEY_REJECTED, retryable=False)
            raise BackendError(f"RunPod could not {what}: {error}", retryable=False)
        except requests.Timeout:
            raise BackendError(f"RunPod did not answer in time when asked to {what}", retryable=True, outage=True)
        except requests.ConnectionError as error:
            refused = "NewConnectionError" in repr(error)  # nothing was sent (not: sent, then reset)
            raise BackendError(f"RunPod is not reachable (could not {what})", retryable=True, resend_safe=refused,
                               outage=True)
        except requests.HTTPError as error:
            raise http_error(what, error.response)
        except ValueError:
            raise BackendError(f"RunPod sent a response that is not JSON when asked to {what}", retryable=True,
                               outage=True)


def http_error(what: str, response) -> BackendError:
    code = response.status_code if response is not None else 0
    if code == 401:
        return BackendError(API_KEY_REJECTED, retryable=False)
    if code == 429:
        return BackendError(f"RunPod rate limit reached (HTTP 429) when asked to {what}", retryable=True,
                            resend_safe=True)
    if code >= 500 or code == 408:
        return BackendError(f"RunPod failed with HTTP {code} when asked to {what}", retryable=True,
                            resend_safe=code in (502, 503), outage=True)
    if code == 404:
        return NotFound(f"RunPod answered HTTP 404 when asked to {what} (unknown endpoint or job)",
                        retryable=True)
    text = response.text[:300] if response is not None else ""
    return BackendError(f"RunPod refused to {what}: HTTP {code} {text}".strip(), retryable=False)


def progress_percent(output) -> int:
    """A running job's percent from its worker's last progress update, within 0..99 (100 is
    for a finished job): `{"percent": 42}` (our handler), `{"progress": "4/10"}`, `42`, `"42%"`
    or `"4/10"`; anything else is 0."""
    if isinstance(output, dict):
        output = output.get("percent", output.get("progress"))
    value = _percent_value(output)
    return max(0, min(99, int(value))) if math.isfinite(value) else 0


def _percent_value(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return 0.0
    done, slash, total = str(value).strip().rstrip("%").partition("/")
    try:
        return 100 * float(done) / float(total) if slash else float(done)
    except (ValueError, ZeroDivisionError, OverflowError):
        return 0.0


def failed_job(error, output) -> Failed:
    """A FAILED job: the workflow's own fault fails the job at once, anything else fails over."""
    message = _error_text(error) or "the worker reported a failure without a message"
    kind = output.get("error_kind") if isinstance(output, dict) else None
    if kind is None:
        kind = "validation" if any(marker in message for marker in VALIDATION_MARKERS) else "runtime"
        if kind == "validation" and any(marker in message for marker in MODEL_MISSING_MARKERS):
            kind = "model_missing"
    missing = output.get("missing") if isinstance(output, dict) else None
    return Failed(f"RunPod worker: {message}", retryable=kind not in USER_FAULTS, lacks=_lacks(missing))


def _lacks(missing) -> tuple:
    """The handler's `missing` list as inventory items ("folder/file", "node Class")."""
    lacks = []
    for item in missing if isinstance(missing, list) else []:
        if not isinstance(item, dict):
            continue
        folder = model_input_folder(str(item.get("class_type") or ""), str(item.get("input") or ""))
        if folder and item.get("value"):
            lacks.append(f"{folder}/{item['value']}")
        elif not item.get("input") and item.get("class_type"):
            lacks.append(f"node {item['class_type']}")
    return tuple(lacks)


def _error_text(error) -> str:
    """The handler's message; an exception in the handler arrives as JSON (rp_job.run_job)."""
    if isinstance(error, dict):
        return str(error.get("error_message") or error.get("message") or json.dumps(error))[:4000]
    text = str(error or "").strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text[:4000]
        if isinstance(parsed, dict) and parsed.get("error_message"):
            return f"{parsed.get('error_type', 'Error')}: {parsed['error_message']}"[:4000]
    return text[:4000]


def collect_outputs(output) -> list[RemoteOutput]:
    """Every file of a COMPLETED job, images and videos: base64 inline, or a URL to fetch.
    Shapes: worker-comfyui 5.x `{"images": [{"filename", "type": "base64"|"s3_url", "data"}]}`,
    our handler's extra `videos`/`files` lists, and the pre-5.0 `{"message": <b64 or URL>}`."""
    if not isinstance(output, dict):
        return []
    items = [item for key in OUTPUT_KEYS for item in (output.get(key) or [])]
    if not items and isinstance(output.get("message"), str):
        items = [output["message"]]
    return [_remote_output(item, index) for index, item in enumerate(items)]


def _remote_output(item, index: int) -> RemoteOutput:
    if isinstance(item, str):
        item = {"data": item}
    if not isinstance(item, dict):
        raise BackendError("RunPod returned an output that is not a file", retryable=True)
    data = str(item.get("data") or item.get("url") or item.get("image") or "")
    filename = str(item.get("filename") or f"output-{index + 1}")
    mime = item.get("mime") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if item.get("type") in ("s3_url", "url") or data.startswith(("http://", "https://")):
        return RemoteOutput(filename=filename, mime=mime, ref={"url": data})
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        mime = item.get("mime") or header[5:].split(";")[0] or mime
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BackendError(f"RunPod returned {filename} in a form that is neither base64 nor a URL",
                           retryable=True)
    return RemoteOutput(filename=filename, mime=mime, data=raw)


def fetch_url(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Download an output the worker uploaded to a bucket (a presigned URL), with a size cap."""
    if not url.startswith(("http://", "https://")):
        raise BackendError("RunPod returned an output URL that is not http(s)", retryable=True)
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if response.status_code != 200:
                raise BackendError(f"Could not fetch an output from the bucket: HTTP {response.status_code}",
                                   retryable=True)
            chunks, size = [], 0
            for chunk in response.iter_content(1024 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise BackendError("An output is larger than OUTPUT_MAX_BYTES", retryable=False)
                chunks.append(chunk)
    except requests.RequestException:
        raise BackendError("Could not fetch an output from the bucket (timeout or connection error)",
                           retryable=True)
    return b"".join(chunks)


def _seconds(milliseconds) -> Optional[float]:
    try:
        return round(float(milliseconds) / 1000, 3) if milliseconds is not None else None
    except (TypeError, ValueError):
        return None
