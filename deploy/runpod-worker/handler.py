"""Comfy Hybrid's RunPod serverless handler: one ComfyUI workflow in, every output file out.

Input (the worker-comfyui contract, shared/reference/external-apis.md §2.8)::

    {"input": {"workflow": {<API-format workflow>},
               "images": [{"name": "in.png", "image": "<base64 or data URI>"}]}}

Output::

    {"images": [{"filename", "type": "base64" | "s3_url", "data", "mime"}],
     "videos": [...same...]}

Unlike worker-comfyui 5.x, videos and animations (SaveVideo, SaveWEBM, SaveAnimatedWEBP, VHS
`gifs`) are returned too. With BUCKET_ENDPOINT_URL (+ BUCKET_ACCESS_KEY_ID,
BUCKET_SECRET_ACCESS_KEY) set, files are uploaded and their presigned URLs returned instead of
base64 (results over ~20 MB do not fit in a /run response).

A failure returns `{"error": "<readable>", "error_kind": ...}`: the RunPod job is FAILED with
that message and `error_kind` stays in `output`. The workflow's own fault ("validation": ComfyUI
rejected it; "execution": a node raised) fails the job at once; the worker's ("model_missing":
a value not in a loader's list, or a node class this ComfyUI lacks; "runtime": ComfyUI down, out
of memory...) makes the server fail over to another backend. A "model_missing" failure lists what
was missing in `missing`: `[{"class_type", "input", "value"}]` (value only; `input` "" for a node).

ComfyUI is started by this process (COMFY_START_COMMAND) unless one already answers at
COMFY_HOST; the handler waits until it answers before running the first job.

While the prompt runs, its progress goes to RunPod with `runpod.serverless.progress_update`
(at most one every PROGRESS_SECONDS, only when the percent moved):
`{"percent": 0..99, "node": "<id>", "class_type": "...", "step": "<value>/<max>"}`, the last two
only while a node runs (`step` only for nodes with steps, e.g. samplers). The SDK POSTs
`{"status": "IN_PROGRESS", "output": <that>}` to the job-done URL, and RunPod shows it as the
job's `output` on `GET /status/{id}` while the job is IN_PROGRESS.
"""
import asyncio
import base64
import json
import math
import mimetypes
import os
import shlex
import subprocess
import time
import uuid

import requests
import runpod
import websocket

COMFY_HOST = os.environ.get("COMFY_HOST", "127.0.0.1:8188")
COMFY_START_COMMAND = os.environ.get(
    "COMFY_START_COMMAND",
    "python /comfyui/main.py --listen 127.0.0.1 --port 8188 --disable-auto-launch --disable-metadata")
COMFY_START_TIMEOUT = float(os.environ.get("COMFY_START_TIMEOUT", "600"))
JOB_TIMEOUT = float(os.environ.get("COMFY_JOB_TIMEOUT", "3600"))
HTTP_TIMEOUT = float(os.environ.get("COMFY_HTTP_TIMEOUT", "30"))
POLL_SECONDS = 0.2
PROGRESS_SECONDS = float(os.environ.get("PROGRESS_UPDATE_SECONDS", "1"))
OUTPUT_KEYS = ("images", "gifs", "videos", "video", "animated_images")
RESOURCE_ERRORS = ("OutOfMemory", "CUDA", "out of memory", "HIP", "MPS")

mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/mp4", ".mp4")

_comfy = None  # the ComfyUI process this handler started, if any


class JobError(Exception):
    def __init__(self, message, kind="runtime", missing=()):
        super().__init__(message)
        self.missing = list(missing)
        self.kind = kind


# --- ComfyUI process ----------------------------------------------------------------------
def comfy_url(path):
    return f"http://{COMFY_HOST}{path}"


def comfy_answers():
    try:
        return requests.get(comfy_url("/system_stats"), timeout=2).status_code == 200
    except requests.RequestException:
        return False


def ensure_comfyui():
    """Start ComfyUI once (or again, if it died) and wait until it answers."""
    global _comfy
    if comfy_answers():
        return
    if _comfy is None or _comfy.poll() is not None:
        print(f"comfy-hybrid worker: starting ComfyUI: {COMFY_START_COMMAND}", flush=True)
        _comfy = subprocess.Popen(shlex.split(COMFY_START_COMMAND))
    deadline = time.monotonic() + COMFY_START_TIMEOUT
    while time.monotonic() < deadline:
        if comfy_answers():
            return
        if _comfy.poll() is not None:
            raise JobError(f"ComfyUI exited with code {_comfy.returncode} while starting")
        time.sleep(POLL_SECONDS)
    raise JobError(f"ComfyUI did not answer within {COMFY_START_TIMEOUT:.0f}s of starting")


# --- one job ------------------------------------------------------------------------------
def validate_input(job_input):
    if not isinstance(job_input, dict):
        raise JobError("Please provide input as a JSON object", "validation")
    if not isinstance(job_input.get("workflow"), dict):
        raise JobError("Missing 'workflow' parameter", "validation")
    images = job_input.get("images")
    if images is not None and (not isinstance(images, list) or not all(
            isinstance(i, dict) and "name" in i and "image" in i for i in images)):
        raise JobError("'images' must be a list of objects with 'name' and 'image' keys", "validation")
    return job_input["workflow"], images or []


def upload_images(images):
    for image in images:
        data = image["image"].split(",", 1)[1] if "," in image["image"] else image["image"]
        try:
            blob = base64.b64decode(data, validate=True)
        except ValueError:
            raise JobError(f"Image {image['name']} is not valid base64", "validation")
        files = {"image": (image["name"], blob, "image/png"), "overwrite": (None, "true")}
        response = requests.post(comfy_url("/upload/image"), files=files, timeout=HTTP_TIMEOUT)
        if response.status_code != 200:
            raise JobError(f"ComfyUI refused the upload of {image['name']}: HTTP {response.status_code}")


def client_id(prompt_id):
    """ComfyUI sends a prompt's events only to the WebSocket of the client that queued it."""
    return f"runpod-{prompt_id}"


def queue_prompt(workflow, prompt_id):
    body = {"prompt": workflow, "client_id": client_id(prompt_id), "prompt_id": prompt_id}
    response = requests.post(comfy_url("/prompt"), json=body, timeout=HTTP_TIMEOUT)
    if response.status_code == 400:
        raise describe_rejection(_json(response), workflow)
    if response.status_code != 200:
        raise JobError(f"ComfyUI refused the prompt: HTTP {response.status_code}")


MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")


def describe_rejection(body, workflow=None):
    """ComfyUI's 400 as one readable sentence (the same wording as the server's ComfyUI client)."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {"message": str(body.get("error", ""))}
    problems, missing = [], []
    for node_id, node in (body.get("node_errors") or {}).items():
        for item in node.get("errors") or []:
            detail = item.get("details") or ""
            problems.append(f"node {node_id} ({node.get('class_type', '?')}): {item.get('message')}"
                            + (f" — {detail}" if detail else ""))
            missing += _missing_model(node.get("class_type"), item)
    if error.get("type") == "invalid_prompt" and "does not exist" in (error.get("message") or ""):
        node = (workflow or {}).get((error.get("details") or "").partition("#")[2].rstrip("'")) or {}
        missing += [{"class_type": node.get("class_type", ""), "input": "", "value": ""}] if node else []
    message = "ComfyUI rejected the workflow: " + (error.get("message") or "invalid workflow")
    if error.get("details") and not problems:
        message += f" ({error['details']})"
    if problems:
        message += ": " + "; ".join(problems)
    return JobError(message, "model_missing" if missing else "validation", missing)


def _missing_model(class_type, item):
    """A loader's value not in its list of model files: the worker lacks that file."""
    extra = item.get("extra_info") or {}
    value = extra.get("received_value")
    if item.get("type") != "value_not_in_list" or not isinstance(value, str):
        return []
    if not value.lower().endswith(MODEL_FILE_SUFFIXES):
        return []
    return [{"class_type": class_type or "", "input": extra.get("input_name") or "", "value": value}]


def wait_for_history(prompt_id, watch=None):
    """The history poll decides the job; between polls `watch` (a ProgressWatch) listens."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        try:
            entry = requests.get(comfy_url(f"/history/{prompt_id}"), timeout=HTTP_TIMEOUT).json().get(prompt_id)
        except (requests.RequestException, ValueError):
            if not comfy_answers():
                raise JobError("ComfyUI stopped answering while running the job")
            entry = None
        if entry:
            return entry
        if watch:
            watch.listen(POLL_SECONDS)
        else:
            time.sleep(POLL_SECONDS)
    raise JobError(f"The workflow did not finish within {JOB_TIMEOUT:.0f}s")


# --- progress -----------------------------------------------------------------------------
def send_progress(job, payload):
    """The SDK posts it from a thread of its own and logs its own failures; nothing here may
    fail the job, so even a thread that cannot start is only logged."""
    try:
        runpod.serverless.progress_update(job, payload)
    except Exception as error:  # progress is a nicety: the job goes on
        print(f"comfy-hybrid worker: progress update not sent: {type(error).__name__}", flush=True)


class ProgressReport:
    """Percent done of one prompt from ComfyUI's events: the finished nodes (cached ones
    included) plus the running node's value/max, out of the workflow's nodes, at most 99.
    `progress_state` carries every node that is not pending ({id: {value, max, state}});
    `progress` ({value, max}) comes only from nodes with steps, such as samplers.
    It is sent when it moved, at most once every PROGRESS_SECONDS."""

    def __init__(self, job, workflow, send=send_progress, clock=time.monotonic):
        self.job, self.workflow, self.send, self.clock = job, workflow, send, clock
        self.finished, self.running = set(), {}  # running: node id -> (value, max)
        self.node = None  # the node that runs now
        self.sent, self.sent_at = 0, None

    def feed(self, text):
        """One text frame of ComfyUI's WebSocket; anything unexpected in it is ignored."""
        try:
            message = json.loads(text)
            data = message.get("data")
            if isinstance(data, dict) and data.get("prompt_id") in (None, self.job["id"]):
                self.update(message.get("type"), data)
        except (ValueError, TypeError, AttributeError):
            return

    def update(self, kind, data):
        if kind == "execution_cached":
            self.finished.update(str(node) for node in data.get("nodes") or [])
        elif kind == "progress_state" and isinstance(data.get("nodes"), dict):
            self._states(data["nodes"])
        elif kind == "progress" and data.get("node") is not None:
            self.node = str(data["node"])
            self.running[self.node] = (data.get("value"), data.get("max"))
        elif kind == "executing" and data.get("node") is not None:
            self.node = str(data["node"])

    def _states(self, nodes):
        self.running = {}
        for node_id, node in nodes.items():
            if not isinstance(node, dict):
                continue
            if node.get("state") == "finished":
                self.finished.add(str(node_id))
            elif node.get("state") == "running":
                self.running[str(node_id)] = (node.get("value"), node.get("max"))
        if self.node not in self.running and self.running:
            self.node = list(self.running)[-1]

    def percent(self):
        running = sum(_fraction(*step) for node, step in self.running.items() if node not in self.finished)
        total = max(len(self.workflow), len(self.finished | set(self.running)), 1)
        return max(0, min(99, int(100 * (len(self.finished) + running) / total)))

    def payload(self):
        payload = {"percent": self.percent()}
        if self.node in self.running and self.node not in self.finished:
            node = self.workflow.get(self.node)
            payload.update(node=self.node, class_type=node.get("class_type", "") if isinstance(node, dict) else "")
            step = _step(*self.running[self.node])
            if step:
                payload["step"] = step
        return payload

    def flush(self):
        """Send the report if the percent moved and the last one is PROGRESS_SECONDS old."""
        payload = self.payload()
        now = self.clock()
        if payload["percent"] == self.sent or (self.sent_at is not None and now - self.sent_at < PROGRESS_SECONDS):
            return
        self.sent, self.sent_at = payload["percent"], now
        self.send(self.job, payload)


def _fraction(value, top):
    try:
        fraction = float(value) / float(top)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return 0.0
    return max(0.0, min(1.0, fraction)) if math.isfinite(fraction) else 0.0


def _step(value, top):
    """"5/20" for a node with steps; None for one without (max 1) or for numbers that are not."""
    try:
        return f"{int(value)}/{int(top)}" if top > 1 else None
    except (TypeError, ValueError, OverflowError):
        return None


class ProgressWatch:
    """ComfyUI's WebSocket for this prompt's client id, read between history polls. Opened
    before the prompt is queued so no event is missed; any trouble with it only ends the watch."""

    def __init__(self, report, client):
        self.report = report
        try:
            self.ws = websocket.create_connection(f"ws://{COMFY_HOST}/ws?clientId={client}", timeout=5)
        except (OSError, websocket.WebSocketException) as error:
            print(f"comfy-hybrid worker: no progress for this job (WebSocket: {type(error).__name__})", flush=True)
            self.ws = None

    def listen(self, seconds):
        end = time.monotonic() + seconds
        while self.ws is not None and (left := end - time.monotonic()) > 0:
            try:
                self.ws.settimeout(left)
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            except (OSError, websocket.WebSocketException):
                self.close()
                break
            if isinstance(frame, str):  # binary frames are previews
                self.report.feed(frame)
        self.report.flush()
        time.sleep(max(0.0, end - time.monotonic()))

    def close(self):
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass


def check_status(entry):
    """A node that raised is the workflow's fault ("execution", not retried), unless the
    machine ran out of something ("runtime": another worker may manage)."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" or status.get("completed"):
        return
    for name, data in reversed(status.get("messages") or []):
        if name == "execution_interrupted":
            raise JobError("The job was interrupted on ComfyUI", "execution")
        if name == "execution_error":
            where = f" in node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else ""
            text = f"{data.get('exception_type', 'Error')}: {str(data.get('exception_message', '')).strip()}"
            kind = "runtime" if any(marker in text for marker in RESOURCE_ERRORS) else "execution"
            raise JobError(f"ComfyUI failed{where}: {text}", kind)
    raise JobError("ComfyUI ended the job without a result")


def output_files(entry):
    """(filename, bytes) of every saved file of every output node; temp previews skipped."""
    files = []
    for node_output in (entry.get("outputs") or {}).values():
        for key in OUTPUT_KEYS:
            for item in node_output.get(key) or []:
                if not isinstance(item, dict) or item.get("type") == "temp" or not item.get("filename"):
                    continue
                params = {k: item.get(k, "") for k in ("filename", "subfolder", "type")}
                response = requests.get(comfy_url("/view"), params=params, timeout=HTTP_TIMEOUT)
                if response.status_code != 200:
                    raise JobError(f"ComfyUI could not serve {item['filename']}: HTTP {response.status_code}")
                files.append((item["filename"], response.content))
    return files


def package(job_id, files):
    result = {"images": [], "videos": []}
    for filename, data in files:
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        item = {"filename": filename, "mime": mime}
        if os.environ.get("BUCKET_ENDPOINT_URL"):
            from runpod.serverless.utils import rp_upload

            item.update(type="s3_url", data=rp_upload.upload_in_memory_object(
                f"{uuid.uuid4().hex[:8]}-{filename}", data, prefix=job_id))
        else:
            item.update(type="base64", data=base64.b64encode(data).decode())
        result["videos" if mime.startswith("video/") else "images"].append(item)
    return result


def inventory():
    """What this worker's ComfyUI holds, for the server's inventory probe job
    (`{"input": {"inventory": true}}`): the files of each model folder (`/models/{folder}`) and
    the node class names (`/object_info`), compact enough for a job result."""
    ensure_comfyui()
    folders = requests.get(comfy_url("/models"), timeout=30).json()
    models = {}
    for folder in folders:
        response = requests.get(comfy_url(f"/models/{folder}"), timeout=30)
        if response.status_code == 200:
            models[folder] = sorted(response.json())
    nodes = sorted(requests.get(comfy_url("/object_info"), timeout=120).json())
    return {"inventory": {"models": models, "nodes": nodes}}


def run(job):
    if (job.get("input") or {}).get("inventory") is True:
        return inventory()
    workflow, images = validate_input(job.get("input"))
    ensure_comfyui()
    upload_images(images)
    watch = ProgressWatch(ProgressReport(job, workflow), client_id(job["id"]))
    try:
        queue_prompt(workflow, job["id"])
        entry = wait_for_history(job["id"], watch)
    finally:
        watch.close()  # no progress after this: it must not land after the result
    check_status(entry)
    return package(job["id"], output_files(entry))


def interrupt(prompt_id):
    """The job was cancelled on RunPod: drop it from ComfyUI's queue and stop it if running."""
    try:
        requests.post(comfy_url("/queue"), json={"delete": [prompt_id]}, timeout=5)
        requests.post(comfy_url("/interrupt"), json={"prompt_id": prompt_id}, timeout=5)
    except requests.RequestException:
        pass


async def handler(job):
    """Async, with the blocking work in a thread, so the worker loop stays free to receive a
    cancel (`/job-stop`) and the prompt is interrupted on ComfyUI when one comes."""
    try:
        return await asyncio.to_thread(run, job)
    except JobError as error:
        result = {"error": str(error), "error_kind": error.kind}
        return {**result, "missing": error.missing} if error.missing else result
    except requests.RequestException as error:
        return {"error": f"ComfyUI did not answer: {type(error).__name__}", "error_kind": "runtime"}
    except asyncio.CancelledError:
        interrupt(job["id"])
        raise


def _json(response):
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


if __name__ == "__main__":
    ensure_comfyui()  # warm before the first job is taken; each job checks again
    runpod.serverless.start({"handler": handler})
