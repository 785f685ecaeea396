"""8. Overhead: a workflow through the system against the same workflow sent to ComfyUI by hand.

Against the fake ComfyUI in its fastest mode (steps=0, step_delay=0, node_delay=0) in its own
process, like a real ComfyUI (bench/timedfake.py), or against the ComfyUI at `COMFYUI_URL`
when that variable is set (a real ComfyUI 0.8.0 runs the workflows without models). Two
workflows, EmptyImage → ImageBlur → SaveImage:
- instant: 64² (node_delay 0 on the fake): what the system adds per job, in ms;
- 0.25 s: 1024² (on the fake: node_delay so its three nodes take 0.25 s; on a CPU ComfyUI
  0.8.0 it takes about that): the ratio. Its direct p50 is its real time on this ComfyUI.
Each sample has its own EmptyImage colour, so no ComfyUI cache can serve a rerun.

Direct is what a user does by hand, with plain requests + websocket-client: one session and
one open WebSocket (the fastest a client can be), POST /prompt, wait for the socket's
`executing` with node null for that prompt, GET /history/{id}, GET /view of each output.
Start: before POST /prompt. End: the last output byte read.

Through the system is POST /api/jobs (a custom workflow job, preference local) from the
Django test client, like the other benchmarks (no HTTP server in front), then the job row
read every 2 ms. Start: before the API call. End: the first read that sees the job
succeeded — its outputs downloaded and stored, the commit visible to any reader, so the API
would answer it. (Fetching the output from our media server is not counted; the worker has
already done the equivalent of the direct /view.) `finished_at` − start is reported too.
Direct and through samples alternate, so both see the same machine load.

Queries per job: after the timed samples, a batch of instant jobs one at a time; the API
call's statements are counted in this process (an execute wrapper on its connection), the
workers' by bench/querycount.py (every statement of every worker process, read before and
after the batch once the workers are quiet). So the count is from the API call to succeeded
plus whatever the job's end triggers afterwards (follow-up tasks), never less. The target is
read against every statement; the count without transaction control is printed beside it.
"""
import json
import os
import re
import signal
import statistics
import time
import uuid
from collections import Counter

import requests
import websocket

from . import harness, querycount, timedfake

NAME = "overhead"
TITLE = "a workflow through the system vs a direct /prompt call to the same ComfyUI"
SIZES = {"tiny": {"samples": 3, "warmup": 1, "query_jobs": 2},
         "quick": {"samples": 15, "warmup": 3, "query_jobs": 5},
         "full": {"samples": 40, "warmup": 5, "query_jobs": 10}}
TARGET_RATIO = 1.05
TARGET_FIXED_MS = 15.0
TARGET_QUERIES = 12
POLL_SECONDS = 0.002  # how often the job row is read
TIMEOUT = 60


def run(ctx) -> dict:
    params = SIZES[ctx.size]
    ctx.workers()
    url, fake = _comfyui()
    try:
        ctx.only_backend(url, paid=False)
        client = ctx.api()
        with Direct(url) as direct:
            instant = _pairs(client, direct, side=64, params=params)
            slow = _pairs(client, direct, side=timedfake.SLOW_SIDE, params=params)
        queries = _queries_per_job(client, params["query_jobs"])
    finally:
        if fake is not None:
            os.killpg(fake.pid, signal.SIGTERM)
            fake.wait(10)
    return _result(params, url if fake is None else "fake", instant, slow, queries)


def _comfyui():
    """(url, fake process or None): the ComfyUI of COMFYUI_URL, else the fake in its own process."""
    url = os.environ.get("COMFYUI_URL")
    if url:
        return url.rstrip("/"), None
    fake, url = harness.start_fake_process(module="bench.timedfake")
    return url, fake


def workflow(side: int, color: int) -> dict:
    return {"1": {"class_type": "EmptyImage",
                  "inputs": {"width": side, "height": side, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 5, "sigma": 2.0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "overhead"}}}


# --- the two sides -------------------------------------------------------------------------
class Direct:
    """A hand-written ComfyUI client: one HTTP session, one WebSocket kept open."""

    def __init__(self, url: str):
        self.url, self.client_id = url, uuid.uuid4().hex
        self.session = requests.Session()
        ws_url = "ws" + url[len("http"):] + f"/ws?clientId={self.client_id}"
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ws.close()
        self.session.close()

    def run(self, prompt: dict) -> float:
        started = time.perf_counter()
        answer = self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id},
                                   timeout=TIMEOUT)
        answer.raise_for_status()
        prompt_id = answer.json()["prompt_id"]
        self._wait(prompt_id)
        history = self.session.get(f"{self.url}/history/{prompt_id}", timeout=TIMEOUT).json()[prompt_id]
        images = [image for output in history["outputs"].values() for image in output.get("images", [])]
        if not images:
            raise RuntimeError(f"direct prompt {prompt_id} saved nothing: {history.get('status')}")
        for image in images:
            view = self.session.get(f"{self.url}/view", params=image, timeout=TIMEOUT)
            view.raise_for_status()
        return time.perf_counter() - started

    def _wait(self, prompt_id: str) -> None:
        while True:
            frame = self.ws.recv()
            if isinstance(frame, bytes):
                continue  # previews
            message = json.loads(frame)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] == "execution_error":
                raise RuntimeError(f"direct prompt {prompt_id} failed: {data.get('exception_message')}")
            if message["type"] == "executing" and data.get("node") is None:
                return


def through(client, prompt: dict) -> tuple[float, float]:
    """(seen succeeded, finished_at) seconds after the API call started."""
    from routing.models import FINAL_JOB_STATES, Job

    started_wall, started = time.time(), time.perf_counter()
    job_id = _post(client, prompt)
    deadline = started + TIMEOUT
    while True:
        status, finished_at, error = Job.objects.filter(id=job_id).values_list("status", "finished_at", "error")[0]
        if status in FINAL_JOB_STATES:
            seen = time.perf_counter() - started
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"job {job_id} still {status} after {TIMEOUT} s")
        time.sleep(POLL_SECONDS)
    if status != "succeeded":
        raise RuntimeError(f"job {job_id} ended {status}: {error}")
    return seen, finished_at.timestamp() - started_wall


def _post(client, prompt: dict) -> str:
    body = {"kind": "image", "preference": "local", "workflow": prompt}
    response = client.post("/api/jobs", body, content_type="application/json")
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/jobs answered {response.status_code}: {response.content[:500]!r}")
    return response.json()["id"]


def _pairs(client, direct, *, side: int, params: dict) -> dict:
    """Direct and through samples, alternating; the warm-up pairs are dropped."""
    samples = {"direct": [], "through": [], "finished_at": []}
    for index in range(params["warmup"] + params["samples"]):
        color = (side * 7919 + index * 104729) % 0xFFFFFF  # never the same workflow twice
        direct_s = direct.run(workflow(side, color))
        seen_s, finished_s = through(client, workflow(side, color + 1))
        time.sleep(0.05)  # the job's follow-up tasks end before the next sample
        if index >= params["warmup"]:
            samples["direct"].append(direct_s)
            samples["through"].append(seen_s)
            samples["finished_at"].append(finished_s)
    return samples


def _queries_per_job(client, jobs: int) -> dict:
    from django.db import connection

    api, shapes = [], Counter()
    before = _quiet_worker_total()
    for index in range(jobs):
        counted = []

        def count(execute, sql, params, many, context):
            counted.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            job_id = _post(client, workflow(64, 0xABCDEF - index))
        api.append(len(counted))
        shapes.update(_shape(sql) for sql in counted)
        harness.wait_jobs_final([job_id], timeout=TIMEOUT)
    after = _quiet_worker_total()
    workers, workers_control = ((a - b) / jobs for a, b in zip(after, before))
    per_api = statistics.mean(api)
    api_control = sum(n for shape, n in shapes.items() if querycount.is_transaction_control(shape)) / jobs
    return {"jobs": jobs, "api": round(per_api, 2), "workers": round(workers, 2),
            "per_job": round(per_api + workers, 2),
            "per_job_without_transaction_control": round(per_api + workers - api_control - workers_control, 2),
            "api_statements": {shape: round(n / jobs, 2) for shape, n in shapes.most_common()}}


def _shape(sql: str) -> str:
    """`SELECT routing_backend`: the verb and the first table a statement names."""
    table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)', sql, re.IGNORECASE)
    return f"{sql.split(None, 1)[0].upper()} {table.group(1) if table else ''}".strip()


def _quiet_worker_total(quiet: float = 0.3) -> list:
    """The workers' statement counts once they have stopped moving for `quiet` seconds."""
    total = querycount.worker_total()
    while True:
        time.sleep(quiet)
        again = querycount.worker_total()
        if again == total:
            return total
        total = again


# --- the figures ---------------------------------------------------------------------------
def _result(params, comfyui, instant, slow, queries) -> dict:
    s = {f"{name}_{side}": harness.latency_summary(values)
         for name, phase in (("instant", instant), ("slow", slow)) for side, values in phase.items()}
    value = harness.ratio(s["slow_through"]["p50_ms"], s["slow_direct"]["p50_ms"])
    fixed_ms = round(s["instant_through"]["p50_ms"] - s["instant_direct"]["p50_ms"], 3)
    paired = [t - d for t, d in zip(instant["through"], instant["direct"])]
    paired_ms = round(harness.percentile(paired, 50) * 1000, 3)
    return {
        "params": {**params, "comfyui": comfyui, "run_seconds": timedfake.RUN_SECONDS, "poll_seconds": POLL_SECONDS},
        "figures": {"through_instant": s["instant_through"], "through_slow": s["slow_through"],
                    "finished_at_instant": s["instant_finished_at"], "finished_at_slow": s["slow_finished_at"],
                    "fixed_overhead_ms": fixed_ms, "fixed_overhead_paired_p50_ms": paired_ms,
                    "queries": queries},
        "baseline": {"direct_instant": s["instant_direct"], "direct_slow": s["slow_direct"]},
        "ratio": value, "ratio_meaning": "through the system p50 ÷ direct /prompt p50, 0.25 s workflow",
        "targets": [
            harness.target("through ÷ direct p50, 0.25 s workflow", value, f"≤ {TARGET_RATIO}", value <= TARGET_RATIO),
            harness.target("fixed overhead p50, instant workflow (ms)", fixed_ms, f"≤ {TARGET_FIXED_MS:.0f} ms",
                           fixed_ms <= TARGET_FIXED_MS),
            harness.target("queries per job, API call to succeeded", queries["per_job"], f"≤ {TARGET_QUERIES}",
                           queries["per_job"] <= TARGET_QUERIES)],
        "lines": [
            f"ComfyUI: {comfyui}",
            _line(f"0.25 s workflow ({timedfake.SLOW_SIDE}²)", s["slow_through"], s["slow_direct"], s["slow_finished_at"]),
            _line("instant workflow", s["instant_through"], s["instant_direct"], s["instant_finished_at"]),
            f"ratio {value:.3f}; fixed overhead p50 {fixed_ms:.1f} ms (p50 of paired differences {paired_ms:.1f} ms)",
            f"queries per job: {queries['per_job']:g} ({queries['api']:g} in the API call, {queries['workers']:g} "
            f"in the workers; mean of {queries['jobs']} jobs); without BEGIN/SAVEPOINT/RELEASE: "
            f"{queries['per_job_without_transaction_control']:g}",
            "the API call's: " + ", ".join(f"{shape} ×{n:g}" for shape, n in queries["api_statements"].items()),
        ],
    }


def _line(what, ours, direct, finished) -> str:
    return (f"{what}: through p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms "
            f"(finished_at p50 {finished['p50_ms']:.1f} ms); direct p50 {direct['p50_ms']:.1f} ms, "
            f"p99 {direct['p99_ms']:.1f} ms (n={ours['n']})")
