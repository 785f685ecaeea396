"""A fake RunPod on 127.0.0.1: serverless API, worker control plane, GraphQL pods, pod proxy.

Shapes follow /work/shared/reference/external-apis.md §2 ("the reference" below).

* Serverless, public side (what the `runpod` SDK calls, §2.1): `/v2/{endpoint}/run`,
  `/status/{id}`, `/cancel/{id}`, `/health`, `/purge-queue`, with `Authorization: Bearer <key>`.
  Jobs go IN_QUEUE → IN_PROGRESS → COMPLETED | FAILED | CANCELLED | TIMED_OUT with integer
  millisecond `delayTime` / `executionTime`.
* Serverless, worker side (§2.7): `/v2/{endpoint}/job-take/{worker}`, `/job-done/{worker}/{job}`,
  `/job-stop/{worker}` (long polls), so the REAL `runpod.serverless.start` loop can serve jobs
  (`worker_env()` gives the environment for it). With `mode="auto"` instead, the fake runs jobs
  itself: IN_QUEUE for `queue_delay`, IN_PROGRESS for `run_delay`, then the next scripted
  outcome (`script(...)`) or a default image output.
* Progress: a worker's `runpod.serverless.progress_update(job, p)` POSTs `{"status":
  "IN_PROGRESS", "output": p}` to its job-done URL (rp_progress.py → rp_http.send_result); it
  does not end the job, and `/status` shows `p` as the job's `output` while it is IN_PROGRESS
  (runpod-python #12, #105). One that comes after the job's result is ignored. In auto mode
  an outcome's `progress` is what the job reports while it runs.
* Holding a job: `hold=True` on an auto-mode outcome, or `hold_results = True` in worker mode
  (the worker's result is kept back), keeps the job IN_PROGRESS until `release()`.
* GraphQL `/graphql` (§2.3): gpuTypes (list and by id), podFindAndDeployOnDemand, pod,
  myself { pods }, podTerminate, podStop. Each pod is backed by its own FakeComfyUI, and its
  `runtime` is null for `pod_start_delay` seconds, like a container still starting.
* Network volumes (`add_volume`): listed by `myself { networkVolumes }`, each a folder here in a
  data center. A pod created with `networkVolumeId` must be in the volume's data center and a
  GPU type that data center offers (`data_center_gpus`); its ComfyUI holds the models found
  under the volume's `models/` (what extra_model_paths.yaml makes a real pod's ComfyUI read).
  A pod created with env COMFY_HYBRID_MODE=sync runs the real volume sync program
  (workers/installer/volume.py) on that folder instead of a ComfyUI, behind the same proxy.
* A private image (`private_images[image] = auth id`) is pulled only with that
  `containerRegistryAuthId`; otherwise the pod never gets a runtime, as when a pull fails.
* A stand-in for RunPod's HTTPS proxy: `/proxy/{podId}-8188/...` forwards HTTP and WebSocket
  to that pod's ComfyUI, and answers 502 (as Cloudflare does) while it is not up. Point
  RUNPOD_POD_URL_TEMPLATE at `pod_url_template`.

In tests::

    with FakeRunPod() as fake:
        settings.RUNPOD_ENDPOINT_BASE_URL = fake.serverless_url
        settings.RUNPOD_API_BASE_URL = fake.url
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from tests.fakes.comfyui import FakeComfyUI, make_png

API_KEY = "test-key"
WORKER_KEY = "worker-ai-key"
ENDPOINT_ID = "ep-test"
NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
GPU_TYPES = [
    # id, display name, memory, secure $/h, community $/h (reference §2.9, third-party figures)
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.59),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 0.43, 0.39),
    ("NVIDIA A40", "A40", 48, 0.44, 0.40),
    ("NVIDIA A100 80GB PCIe", "A100 80GB", 80, 1.39, 1.19),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 3.29, 2.69),
]


def png_b64() -> str:
    return base64.b64encode(make_png(8, 8, (200, 40, 40))).decode()


class FakeJob:
    def __init__(self, endpoint, body):
        self.id = f"{uuid.uuid4()}-u1"
        self.endpoint = endpoint
        self.input = body.get("input")
        self.policy = body.get("policy") or {}
        self.status = "IN_QUEUE"
        self.created = time.monotonic()
        self.started = self.finished = None
        self.output = self.error = None
        self.worker = None
        self.stop_sent = False
        self.outcome = None  # auto mode: the scripted result
        self.progress = None  # the last progress the worker sent: `output` while IN_PROGRESS
        self.progress_posts = []  # every progress payload the worker sent, in order
        self.held = False  # kept IN_PROGRESS until FakeRunPod.release()
        self.held_result, self.result_at = None, None  # worker mode: the result kept back, when it came

    def as_status(self):
        body = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = int((self.finished - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        elif self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        if self.error is not None:
            body["error"] = self.error
        return body


class FakeVolume:
    """A network volume: a folder, in one data center."""

    def __init__(self, volume_id, name, data_center, size):
        self.id, self.name, self.data_center, self.size = volume_id, name, data_center, size
        self.path = Path(tempfile.mkdtemp(prefix=f"fake-volume-{volume_id}-"))

    def as_graphql(self):
        return {"id": self.id, "name": self.name, "size": self.size, "dataCenterId": self.data_center}

    def models(self):
        """{folder: [files]} under models/, finished files only (no download parts)."""
        found = {}
        for file in sorted((self.path / "models").glob("*/*")):
            if file.is_file() and not file.name.endswith((".part", ".part.json")):
                found.setdefault(file.parent.name, []).append(file.name)
        return found


class FakePod:
    def __init__(self, *, pod_id, name, image, gpu, env, ports, start_delay, cloud_type):
        self.id, self.name, self.image, self.gpu, self.env, self.ports = pod_id, name, image, gpu, env, ports
        self.cloud_type = cloud_type
        self.volume = None  # FakeVolume mounted at /workspace
        self.data_center = None
        self.registry_auth = None
        self.sync = None  # (process, port) of a volume sync pod
        self.desired = "RUNNING"
        self.created = time.monotonic()
        self.ended = None  # when it was terminated (RunPod bills created → terminated)
        self.runtime_at = self.created + start_delay
        self.comfy: FakeComfyUI | None = None

    @property
    def cost_per_hour(self):
        secure, community = self.gpu[3], self.gpu[4]
        return community if self.cloud_type == "COMMUNITY" else secure

    @property
    def runtime_up(self):
        return self.desired == "RUNNING" and time.monotonic() >= self.runtime_at

    def as_graphql(self):
        uptime = int(time.monotonic() - self.runtime_at) if self.runtime_up else 0
        runtime = None
        if self.runtime_up:
            runtime = {"uptimeInSeconds": uptime,
                       "ports": [{"ip": "100.65.12.34", "isIpPublic": False, "privatePort": 8188,
                                  "publicPort": 60188, "type": "http"}],
                       "gpus": [{"id": "GPU-1", "gpuUtilPercent": 0, "memoryUtilPercent": 0}],
                       "container": {"cpuPercent": 1, "memoryPercent": 3}}
        return {"id": self.id, "name": self.name, "imageName": self.image, "desiredStatus": self.desired,
                "costPerHr": self.cost_per_hour, "gpuCount": 1, "containerDiskInGb": 40, "volumeInGb": 0,
                "volumeMountPath": "/workspace", "dockerArgs": "", "dockerId": None, "env": self.env,
                "lastStatusChange": f"Rented by User: {time.ctime()}", "machineId": "m" + self.id[:11],
                "memoryInGb": 62, "podType": "RESERVED", "port": None, "ports": self.ports,
                "uptimeSeconds": uptime, "vcpuCount": 8, "runtime": runtime,
                "machine": {"gpuDisplayName": self.gpu[1], "podHostId": f"{self.id}-64410065"}}


class FakeRunPod:
    """Knobs are plain attributes and may be changed while it runs."""

    def __init__(self, *, mode="auto", queue_delay=0.05, run_delay=0.1, pod_start_delay=0.3,
                 take_wait=1.0, pod_comfy_kwargs=None, api_key=API_KEY):
        self.mode = mode  # "auto": the fake runs jobs; "worker": real workers take them
        self.queue_delay, self.run_delay = queue_delay, run_delay
        self.run_answer_delay = 0.0  # seconds /run waits, after queueing the job, before it answers
        self.pod_start_delay = pod_start_delay
        self.take_wait = take_wait  # long-poll of job-take / job-stop, seconds
        self.pod_comfy_kwargs = pod_comfy_kwargs or {"step_delay": 0.01, "steps": 2}
        self.api_key = api_key
        self.outcomes = collections.deque()  # auto mode: scripted results, oldest first
        self.hold_results = False  # worker mode: keep each job IN_PROGRESS, its result kept back, until release()
        self.http_errors = collections.deque()  # next public-API answers: status codes (or "hang")
        self.unavailable_gpus = set()  # podFindAndDeployOnDemand says "no instances" for these
        self.received = []  # (method, path) of every request
        self.graphql_ops = []  # operation names in order, e.g. "podFindAndDeployOnDemand"
        self.jobs: dict[str, FakeJob] = {}
        self.cancelled = []  # job ids POSTed to /cancel
        self.pods: dict[str, FakePod] = {}  # live pods (RUNNING or EXITED), as myself { pods } lists
        self.terminated = []  # pod ids podTerminate'd, in order
        self.every_pod: dict[str, FakePod] = {}  # every pod ever created, terminated ones too
        # Serverless billing: the endpoint's flex price, and the worker seconds billed per job
        # beyond its execution (cold start, the idle timeout after it), as RunPod bills them.
        self.serverless_price, self.worker_overhead_seconds = 0.00031, 0.0
        self.workers_seen = {}  # worker id -> last job-take time
        self.bucket = {}  # name -> bytes, served at /bucket/{name} (a stand-in for presigned URLs)
        self.volumes: dict[str, FakeVolume] = {}
        self.data_center_gpus = {}  # data center -> GPU type ids it offers (absent: all of them)
        self.private_images = {}  # image -> the containerRegistryAuthId that may pull it
        self.sync_env = {}  # extra environment of sync processes (e.g. the test's HF_TOKEN)
        self.host, self.port = "127.0.0.1", 0
        self._thread = self._loop = None

    # ---- lifecycle

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def serverless_url(self):
        return f"{self.url}/v2"

    @property
    def pod_url_template(self):
        return self.url + "/proxy/{pod_id}-8188"

    def start(self):
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="FakeRunPod", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error:
            raise self._error
        return self

    def stop(self):
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None
        for pod in list(self.pods.values()):
            if pod.comfy:
                pod.comfy.stop()
            self._stop_sync(pod)
        for volume in self.volumes.values():
            shutil.rmtree(volume.path, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _serve(self, ready):
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as error:
            self._error = error
            ready.set()
            return
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.run_until_complete(self._session.close())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _startup(self):
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        v2 = "/v2/{endpoint}"
        app.router.add_post(v2 + "/run", self._run)
        app.router.add_get(v2 + "/status/{job_id}", self._status)
        app.router.add_post(v2 + "/cancel/{job_id}", self._cancel)
        app.router.add_get(v2 + "/health", self._health)
        app.router.add_post(v2 + "/purge-queue", self._purge)
        app.router.add_get(v2 + "/job-take/{worker}", self._job_take)
        app.router.add_get(v2 + "/job-stop/{worker}", self._job_stop)
        app.router.add_post(v2 + "/job-done/{worker}/{job_id}", self._job_done)
        app.router.add_get(v2 + "/ping/{worker}", self._ping)
        app.router.add_post("/graphql", self._graphql)
        app.router.add_get("/v1/billing/pods", self._billing_pods)  # rest.runpod.io/v1 stand-in
        app.router.add_get("/v1/billing/endpoints", self._billing_endpoints)
        app.router.add_route("*", "/proxy/{pod_id}-{port}/{tail:.*}", self._proxy)
        app.router.add_get("/bucket/{name}", self._bucket_get)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    @web.middleware
    async def _middleware(self, request, handler):
        self.received.append((request.method, request.path))
        return await handler(request)

    # ---- test helpers

    def script(self, *outcomes):
        """Auto-mode results for the next jobs: dicts with `status` and `output` / `error`, and
        optionally `run_delay`, `progress` (the `output` while IN_PROGRESS) and `hold`."""
        self.outcomes.extend(outcomes)

    def release(self, job_id=None):
        """Let a held job (or every held job) end: with its scripted outcome (auto mode, from
        its next /status on) or with the result its worker sent (worker mode, at once)."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job_id not in (None, job.id):
                continue
            if job.outcome and job.outcome.get("hold"):  # auto mode, started or not yet
                job.outcome = {**job.outcome, "hold": False}
                job.held, job.result_at = False, now  # it ends no earlier than now
            elif job.held:
                job.held = False
                self._finish(job, job.held_result, job.result_at)

    def billed_seconds(self) -> dict:
        """The provider's record: seconds each serverless job ran (from its start until it ended,
        was cancelled, or now), by job id. Auto mode: what RunPod would bill for the job's run."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            self._advance(job)
        return {job.id: (job.finished or now) - job.started for job in list(self.jobs.values())
                if job.started is not None}

    def billed_pod_cost(self) -> float:
        """The provider's record for pods: every pod's uptime (created until terminated, or now)
        × its hourly rate, in dollars."""
        now = time.monotonic()
        return sum(((pod.ended or now) - pod.created) * pod.cost_per_hour / 3600 for pod in list(self.every_pod.values()))

    @property
    def rest_url(self):
        return f"{self.url}/v1"

    BUCKETS = ("hour", "day", "week", "month", "year")  # the documented bucketSize enum

    def _billing_gate(self, request):
        """401 for a wrong key; 400 for what the documented API refuses: a bucket size outside
        its enum, a start or end time that is not ISO 8601."""
        if not self._auth_ok(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        if request.query.get("bucketSize", "day") not in self.BUCKETS:
            return web.json_response({"error": "bucketSize must be one of " + ", ".join(self.BUCKETS)}, status=400)
        for name in ("startTime", "endTime"):
            value = request.query.get(name)
            try:
                value and datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return web.json_response({"error": f"{name} is not an ISO 8601 time"}, status=400)
        return None

    async def _billing_pods(self, request):
        """GET /billing/pods?grouping=podId: one record per pod (this fake's buckets are whole
        lives, not hours, and fall in any window asked for), amount = uptime × rate."""
        if (refused := self._billing_gate(request)) is not None:
            return refused
        now = time.monotonic()
        records = [{"time": "2026-01-01T00:00:00Z", "podId": pod.id, "gpuTypeId": pod.gpu[0],
                    "amount": round(((pod.ended or now) - pod.created) * pod.cost_per_hour / 3600, 6),
                    "timeBilledMs": int(((pod.ended or now) - pod.created) * 1000), "diskSpaceBilledGb": 40}
                   for pod in list(self.every_pod.values())]
        wanted = request.query.get("podId")
        return web.json_response([r for r in records if not wanted or r["podId"] == wanted])

    async def _billing_endpoints(self, request):
        """GET /billing/endpoints?grouping=endpointId: the endpoint's worker time, each job's run
        plus the overhead RunPod bills around it."""
        if (refused := self._billing_gate(request)) is not None:
            return refused
        seconds = sum(self.billed_seconds().values()) + self.worker_overhead_seconds * sum(
            1 for job in list(self.jobs.values()) if job.started is not None)
        endpoint = request.query.get("endpointId") or ENDPOINT_ID
        return web.json_response([{"time": "2026-01-01T00:00:00Z", "endpointId": endpoint,
                                   "amount": round(seconds * self.serverless_price, 6),
                                   "timeBilledMs": int(seconds * 1000)}])

    def worker_env(self, endpoint_id=ENDPOINT_ID, worker_id="worker-1") -> dict:
        """Environment for a real `runpod.serverless.start` worker served by this fake."""
        base = f"{self.serverless_url}/{endpoint_id}"
        return {"RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=NVIDIA+GeForce+RTX+4090",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=NVIDIA+GeForce+RTX+4090",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=NVIDIA+GeForce+RTX+4090",
                "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID", "RUNPOD_PING_INTERVAL": "1000",
                "RUNPOD_AI_API_KEY": WORKER_KEY, "RUNPOD_POD_ID": worker_id, "RUNPOD_ENDPOINT_ID": endpoint_id,
                "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}

    def add_orphan_pod(self, name="comfy-hybrid-orphan", gpu_id="NVIDIA GeForce RTX 4090") -> str:
        """A pod on the account that nobody asked this server for (e.g. left by a crash)."""
        pod = self._new_pod(name=name, image="orphan:latest", gpu_id=gpu_id, env=[], ports="8188/http",
                            cloud_type="SECURE")
        return pod.id

    def kill_comfy(self, pod_id):
        """The pod's ComfyUI dies; the pod itself keeps running (and billing)."""
        pod = self.pods[pod_id]
        if pod.comfy:
            pod.comfy.stop()
            pod.comfy = None

    def live_pod_ids(self):
        return [pod_id for pod_id, pod in self.pods.items() if pod.desired == "RUNNING"]

    def bucket_url(self, name, data: bytes) -> str:
        self.bucket[name] = data
        return f"{self.url}/bucket/{name}"

    async def _bucket_get(self, request):
        data = self.bucket.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    # ---- serverless, public side

    def _auth_ok(self, request, bearer=True):
        expected = f"Bearer {self.api_key}" if bearer else WORKER_KEY
        return request.headers.get("Authorization") == expected

    async def _public_gate(self, request):
        """401 for a wrong key, or the next scripted HTTP error."""
        if not self._auth_ok(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        if self.http_errors:
            code = self.http_errors.popleft()
            if code == "hang":
                await asyncio.sleep(3600)
            return web.json_response({"error": f"HTTP {code}"}, status=code)
        return None

    async def _run(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        body = await request.json()
        if not isinstance(body, dict) or not body.get("input"):
            return web.json_response({"error": "input is required"}, status=400)
        job = FakeJob(request.match_info["endpoint"], body)
        if self.mode == "auto":
            job.outcome = self.outcomes.popleft() if self.outcomes else {
                "status": "COMPLETED", "output": {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64",
                                                              "data": png_b64()}]}}
        self.jobs[job.id] = job
        if self.run_answer_delay:  # the job is queued (and will run, and be billed) before we answer
            await asyncio.sleep(self.run_answer_delay)
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    def _advance(self, job):
        """Auto mode: where the job is now, from the clock."""
        if self.mode != "auto" or job.status in FINAL:
            return
        age = time.monotonic() - job.created
        if age >= self.queue_delay and job.started is None:
            job.status, job.started = "IN_PROGRESS", job.created + self.queue_delay
            job.progress, job.held = job.outcome.get("progress"), bool(job.outcome.get("hold"))
        run_for = job.outcome.get("run_delay", self.run_delay)
        if job.started is not None and not job.held and time.monotonic() - job.started >= run_for:
            job.status = job.outcome.get("status", "COMPLETED")
            job.finished = max(job.started + run_for, job.result_at or 0)
            job.output, job.error = job.outcome.get("output"), job.outcome.get("error")

    async def _status(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "job not found"}, status=404)
        self._advance(job)
        return web.json_response(job.as_status())

    async def _cancel(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "job not found"}, status=404)
        self.cancelled.append(job.id)
        self._advance(job)
        if job.status not in FINAL:
            job.status, job.finished = "CANCELLED", time.monotonic()
        return web.json_response({"id": job.id, "status": job.status})

    async def _health(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        for job in self.jobs.values():
            self._advance(job)
        count = collections.Counter(job.status for job in self.jobs.values())
        recent = [w for w, seen in self.workers_seen.items() if time.monotonic() - seen < 10]
        busy = {job.worker for job in self.jobs.values() if job.status == "IN_PROGRESS" and job.worker}
        return web.json_response({
            "jobs": {"completed": count["COMPLETED"], "failed": count["FAILED"] + count["TIMED_OUT"],
                     "inProgress": count["IN_PROGRESS"], "inQueue": count["IN_QUEUE"], "retried": 0},
            "workers": {"idle": len(set(recent) - busy), "running": len(busy), "initializing": 0,
                        "ready": len(recent), "throttled": 0, "unhealthy": 0}})

    async def _purge(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        queued = [job_id for job_id, job in self.jobs.items() if job.status == "IN_QUEUE"]
        for job_id in queued:
            del self.jobs[job_id]
        return web.json_response({"removed": len(queued), "status": "completed"})

    # ---- serverless, worker side (reference §2.7)

    async def _job_take(self, request):
        if not self._auth_ok(request, bearer=False):
            return web.Response(status=401)
        worker, endpoint = request.match_info["worker"], request.match_info["endpoint"]
        deadline = time.monotonic() + self.take_wait
        while True:
            self.workers_seen[worker] = time.monotonic()
            job = next((j for j in self.jobs.values() if j.endpoint == endpoint and j.status == "IN_QUEUE"
                        and self.mode == "worker"), None)
            if job is not None:
                job.status, job.started, job.worker = "IN_PROGRESS", time.monotonic(), worker
                return web.json_response({"id": job.id, "input": job.input})
            if time.monotonic() >= deadline:
                return web.Response(status=204)
            await asyncio.sleep(0.05)

    async def _job_stop(self, request):
        if not self._auth_ok(request, bearer=False):
            return web.Response(status=401)
        worker = request.match_info["worker"]
        deadline = time.monotonic() + self.take_wait
        while time.monotonic() < deadline:
            stop = [j for j in self.jobs.values() if j.worker == worker and j.status == "CANCELLED"
                    and not j.stop_sent]
            if stop:
                for job in stop:
                    job.stop_sent = True
                return web.json_response({"jobsToStop": [job.id for job in stop]})
            await asyncio.sleep(0.05)
        return web.Response(status=204)

    async def _ping(self, request):
        if not self._auth_ok(request, bearer=False):
            return web.Response(status=401)
        self.workers_seen[request.match_info["worker"]] = time.monotonic()
        return web.Response(status=200)

    async def _job_done(self, request):
        if not self._auth_ok(request, bearer=False):
            return web.Response(status=401)
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.Response(status=404)
        result = json.loads(await request.text())  # JSON text, though sent as form-urlencoded
        if result.get("status") == "IN_PROGRESS":  # progress_update: the job goes on
            job.progress_posts.append(result.get("output"))
            if job.status == "IN_PROGRESS" and job.held_result is None:
                job.progress = result.get("output")
        elif job.status not in FINAL and job.held_result is None:
            if self.hold_results:
                job.held, job.held_result, job.result_at = True, result, time.monotonic()
            else:
                self._finish(job, result, time.monotonic())
        return web.json_response({})

    def _finish(self, job, result, at):
        if job.status in FINAL:  # cancelled while its result was held
            return
        job.finished = at
        job.output = result.get("output")
        job.error = result.get("error")
        job.status = "FAILED" if job.error else "COMPLETED"

    # ---- GraphQL (reference §2.3)

    async def _graphql(self, request):
        if not self._auth_ok(request):
            return web.json_response({"errors": [{"message": "Unauthorized"}]}, status=401)
        query = (await request.json()).get("query", "")
        try:
            name, data = await self._operation(query)
        except GraphQLError as error:
            return web.json_response({"errors": [{"message": str(error)}], "data": None})
        self.graphql_ops.append(name)
        return web.json_response({"data": data})

    async def _operation(self, query):
        if "podFindAndDeployOnDemand" in query:
            return "podFindAndDeployOnDemand", {"podFindAndDeployOnDemand": await self._create_pod(query)}
        if "podTerminate" in query:
            pod_id = _arg(query, "podId")
            await self._terminate(pod_id)
            return "podTerminate", {"podTerminate": None}
        if "podStop" in query:
            pod = self._pod(_arg(query, "podId"))
            pod.desired = "EXITED"
            await self._stop_comfy(pod)
            return "podStop", {"podStop": {"id": pod.id, "desiredStatus": "EXITED"}}
        if "gpuTypes" in query:
            wanted = _arg(query, "id")
            gpus = [self._gpu_json(g) for g in GPU_TYPES if wanted is None or g[0] == wanted]
            return "gpuTypes", {"gpuTypes": gpus}
        if "myself" in query:
            myself = {"pods": [pod.as_graphql() for pod in self.pods.values()]}
            if "networkVolumes" in query:
                myself.update(id="user-1", pubKey="", networkVolumes=[v.as_graphql() for v in self.volumes.values()])
            return "myself", {"myself": myself}
        if re.search(r"\bpod\s*\(", query):
            pod = self.pods.get(_arg(query, "podId"))
            return "pod", {"pod": pod.as_graphql() if pod else None}
        raise GraphQLError("Unknown operation")

    def _gpu_json(self, gpu):
        gpu_id, display, memory, secure, community = gpu
        return {"id": gpu_id, "displayName": display, "memoryInGb": memory, "maxGpuCount": 8,
                "manufacturer": "Nvidia", "cudaCores": 0, "secureCloud": True, "communityCloud": True,
                "securePrice": secure, "communityPrice": community, "oneMonthPrice": None,
                "threeMonthPrice": None, "oneWeekPrice": None, "communitySpotPrice": community / 2,
                "secureSpotPrice": secure / 2,
                "lowestPrice": {"minimumBidPrice": community / 2, "uninterruptablePrice": community}}

    async def _create_pod(self, query):
        gpu_id = _arg(query, "gpuTypeId")
        volume_id, data_center = _arg(query, "networkVolumeId"), _arg(query, "dataCenterId")
        volume = self.volumes.get(volume_id) if volume_id else None
        if volume_id and volume is None:
            raise GraphQLError("Network volume not found")
        if volume and data_center != volume.data_center:
            raise GraphQLError(f"The network volume is in {volume.data_center}; a pod using it must be "
                               f"deployed there")
        offered = self.data_center_gpus.get(data_center)
        if gpu_id in self.unavailable_gpus or (offered is not None and gpu_id not in offered):
            raise GraphQLError(NO_CAPACITY)
        env = [f"{k}={v}" for k, v in re.findall(r'\{\s*key:\s*"([^"]*)",\s*value:\s*"([^"]*)"\s*\}', query)]
        cloud = re.search(r"cloudType:\s*(\w+)", query)
        pod = self._new_pod(name=_arg(query, "name") or "", image=_arg(query, "imageName") or "", gpu_id=gpu_id,
                            env=env, ports=_arg(query, "ports") or "", cloud_type=cloud.group(1) if cloud else "ALL")
        pod.volume, pod.data_center = volume, data_center
        pod.registry_auth = _arg(query, "containerRegistryAuthId")
        if pod.image in self.private_images and pod.registry_auth != self.private_images[pod.image]:
            pod.runtime_at = float("inf")  # the image cannot be pulled: the container never starts
        elif "COMFY_HYBRID_MODE=sync" in env:
            pod.sync = await asyncio.get_running_loop().run_in_executor(None, self._start_sync, pod)
        else:
            kwargs = dict(self.pod_comfy_kwargs)
            if volume is not None:
                kwargs["models"] = volume.models()
            pod.comfy = FakeComfyUI(**kwargs)
            await asyncio.get_running_loop().run_in_executor(None, pod.comfy.start)
        return {"id": pod.id, "imageName": pod.image, "env": pod.env, "machineId": "m" + pod.id[:11],
                "machine": {"podHostId": f"{pod.id}-64410065"}}

    def _start_sync(self, pod):
        """The real sync program on the volume's folder, as the cloud image runs it."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, **dict(item.split("=", 1) for item in pod.env), **self.sync_env}
        root = str(pod.volume.path) if pod.volume else tempfile.mkdtemp(prefix="fake-pod-disk-")
        log = open(Path(tempfile.gettempdir()) / f"fake-sync-{pod.id}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "workers.installer.volume", "--root", root,
                                    "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return process, port

    def add_volume(self, *, name="models", data_center="EU-RO-1", size=100) -> FakeVolume:
        volume = FakeVolume(f"vol{len(self.volumes) + 1:03d}" + uuid.uuid4().hex[:6], name, data_center, size)
        self.volumes[volume.id] = volume
        return volume

    def crash_pod(self, pod_id):
        """The pod's machine fails: its container stops (EXITED), mid-whatever it was doing."""
        pod = self.pods[pod_id]
        pod.desired = "EXITED"
        self._stop_sync(pod)
        if pod.comfy:
            pod.comfy.stop()
            pod.comfy = None

    @staticmethod
    def _stop_sync(pod):
        if pod.sync:
            process, pod.sync = pod.sync[0], None
            process.kill()
            process.wait(10)

    def _new_pod(self, *, name, image, gpu_id, env, ports, cloud_type):
        gpu = next((g for g in GPU_TYPES if g[0] == gpu_id), None)
        if gpu is None:
            raise GraphQLError(f"GPU type {gpu_id} not found")
        pod_id = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(14))
        pod = FakePod(pod_id=pod_id, name=name, image=image, gpu=gpu, env=env, ports=ports,
                      start_delay=self.pod_start_delay, cloud_type=cloud_type)
        self.pods[pod_id] = self.every_pod[pod_id] = pod
        return pod

    def _pod(self, pod_id):
        pod = self.pods.get(pod_id)
        if pod is None:
            raise GraphQLError("Pod not found")
        return pod

    async def _terminate(self, pod_id):
        pod = self._pod(pod_id)
        await self._stop_comfy(pod)
        await asyncio.get_running_loop().run_in_executor(None, self._stop_sync, pod)
        pod.ended = time.monotonic()
        del self.pods[pod_id]  # terminated pods vanish from myself { pods }
        self.terminated.append(pod_id)

    async def _stop_comfy(self, pod):
        if pod.comfy:
            comfy, pod.comfy = pod.comfy, None
            await asyncio.get_running_loop().run_in_executor(None, comfy.stop)

    # ---- the pod proxy (https://{podId}-8188.proxy.runpod.net stand-in)

    async def _proxy(self, request):
        pod = self.pods.get(request.match_info["pod_id"])
        if pod is None or not pod.runtime_up or (pod.comfy is None and pod.sync is None):
            return web.Response(status=502, text="Bad Gateway")  # Cloudflare: origin not answering
        origin = pod.comfy.url if pod.comfy else f"http://127.0.0.1:{pod.sync[1]}"
        target = f"{origin}/{request.match_info['tail']}"
        if request.query_string:
            target += "?" + request.query_string
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_ws(request, target.replace("http://", "ws://", 1))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        try:
            async with self._session.request(request.method, target, data=await request.read(),
                                             headers=headers) as upstream:
                body = await upstream.read()
                kept = {k: v for k, v in upstream.headers.items()
                        if k.lower() in ("content-type", "content-disposition")}
                return web.Response(status=upstream.status, body=body, headers=kept)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return web.Response(status=502, text="Bad Gateway")

    async def _proxy_ws(self, request, target):
        try:
            upstream = await self._session.ws_connect(target)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return web.Response(status=502, text="Bad Gateway")
        client = web.WebSocketResponse()
        await client.prepare(request)

        async def pump(source, sink):
            async for msg in source:
                if msg.type == WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.ensure_future(pump(upstream, client)), asyncio.ensure_future(pump(client, upstream))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await upstream.close()
        await client.close()
        return client


class GraphQLError(Exception):
    pass


def _arg(query, name):
    found = re.search(rf'\b{name}\s*:\s*"([^"]*)"', query)
    return found.group(1) if found else None
