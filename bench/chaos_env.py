"""The chaos run's world: a private Redis (AOF on), a scratch SQLite database, fake ComfyUI /
RunPod / Gemini behind fault-injecting proxies, real Celery workers (one per queue, as in
deploy/Procfile) and one beat.

Nothing here touches the developer's database or Redis. The fakes are the test suite's, with
counters added by subclassing (tests/fakes/ is not modified): every ComfyUI prompt execution
per prompt id (= attempt id), every serverless job, every Gemini request.
"""
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web

from project import queues
from tests.conftest import RedisServer, wait_for
from tests.fakes.chaos_proxy import ChaosProxy
from tests.fakes.comfyui import FakeComfyUI, node_table
from tests.fakes.gemini import FakeGemini
from tests.fakes.runpod import API_KEY, ENDPOINT_ID, NO_CAPACITY, FakeJob, FakeRunPod, GraphQLError, _arg, png_b64

ROOT = Path(__file__).resolve().parent.parent
MODELS = None  # the fake ComfyUI then holds every file of deploy/comfyui-manifest.json, where the installer puts it
QUEUES = queues.ALL  # one worker per queue, like deploy/Procfile
# The queues a job's own tasks travel: the chaos monkey kills their workers (the run's jobs carry
# no webhook, so a kill of the webhooks worker would test nothing).
JOB_QUEUES = tuple(queue for queue in QUEUES if queue != queues.WEBHOOKS)

# Retries and timeouts of the system under test, set through its settings only: shorter than
# the production defaults so that a run takes minutes (a 10 s HTTP timeout, a 60 s sweeper age
# and a 5-minute idle pod would make a hang, a lost message or a pod's end take that long).
SYSTEM_ENV = {
    "COMFYUI_HTTP_TIMEOUT": "2", "COMFYUI_HEALTH_TIMEOUT": "1", "COMFYUI_WATCH_SECONDS": "1",
    "COMFYUI_POLL_INTERVAL": "0.2", "POLL_INTERVAL_SECONDS": "0.3",
    "RUNPOD_HTTP_TIMEOUT": "2", "RUNPOD_POLL_INTERVAL": "0.3", "RUNPOD_MAX_PODS": "2", "RUNPOD_POD_MAX_JOBS": "3",
    "RUNPOD_AUTOSCALE_SECONDS": "2", "RUNPOD_REAP_SECONDS": "5", "RUNPOD_RECONCILE_SECONDS": "15",
    "RUNPOD_IDLE_SECONDS": "20", "RUNPOD_IDLE_SECONDS_EXPENSIVE": "20", "RUNPOD_POD_START_TIMEOUT": "30",
    "RUNPOD_POD_WAIT_SECONDS": "30", "RUNPOD_POD_SELF_STOP_SECONDS": "120",
    "GEMINI_HTTP_TIMEOUT": "3", "GEMINI_RETRY_SECONDS": "0.2", "GEMINI_RETRY_MAX_SECONDS": "2",
    "GEMINI_VIDEO_POLL_SECONDS": "0.3", "GEMINI_IMAGE_GIVE_UP_SECONDS": "30", "GEMINI_VIDEO_GIVE_UP_SECONDS": "60",
    "HEALTH_PROBE_SECONDS": "3", "HEALTH_STALE_SECONDS": "60",
    "SWEEP_AFTER_SECONDS": "10", "SWEEP_EVERY_SECONDS": "2", "JOB_DEADLINE_SECONDS": "900",
    "SUBMIT_LEASE_SECONDS": "30",  # the submit claim proposed in the issue-11 report (ignored until adopted)
    "SUBMIT_RATE_PER_MINUTE": "100000", "DAILY_CAP_USD": "1000", "MONTHLY_CAP_USD": "10000",
    "GLOBAL_MONTHLY_CAP_USD": "100000",
}


# --- fakes with counters ------------------------------------------------------------------
class CountingComfyUI(FakeComfyUI):
    """A FakeComfyUI that counts how often each prompt id was executed."""

    def __init__(self, **kwargs):
        kwargs.setdefault("models", MODELS)
        super().__init__(**kwargs)
        self.executions = collections.Counter()

    async def _execute(self, item):
        self.executions[item[1]] += 1
        return await super()._execute(item)


class ChaosRunPod(FakeRunPod):
    """FakeRunPod whose pods run a CountingComfyUI (all kept, even after termination) and whose
    serverless endpoint refuses a workflow with unknown nodes as the real worker would."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.all_comfy: list[tuple[str, CountingComfyUI]] = []
        self.known_nodes = set(node_table(MODELS, []))

    async def _create_pod(self, query):
        gpu_id = _arg(query, "gpuTypeId")
        if gpu_id in self.unavailable_gpus:
            raise GraphQLError(NO_CAPACITY)
        env = [f"{k}={v}" for k, v in re.findall(r'\{\s*key:\s*"([^"]*)",\s*value:\s*"([^"]*)"\s*\}', query)]
        cloud = re.search(r"cloudType:\s*(\w+)", query)
        pod = self._new_pod(name=_arg(query, "name") or "", image=_arg(query, "imageName") or "", gpu_id=gpu_id,
                            env=env, ports=_arg(query, "ports") or "", cloud_type=cloud.group(1) if cloud else "ALL")
        pod.comfy = CountingComfyUI(**self.pod_comfy_kwargs)
        self.all_comfy.append((pod.id, pod.comfy))
        await asyncio.get_running_loop().run_in_executor(None, pod.comfy.start)
        return {"id": pod.id, "imageName": pod.image, "env": pod.env, "machineId": "m" + pod.id[:11],
                "machine": {"podHostId": f"{pod.id}-64410065"}}

    async def _run(self, request):
        if (refused := await self._public_gate(request)) is not None:
            return refused
        body = await request.json()
        if not isinstance(body, dict) or not body.get("input"):
            return web.json_response({"error": "input is required"}, status=400)
        job = FakeJob(request.match_info["endpoint"], body)
        workflow = (body.get("input") or {}).get("workflow") or {}
        unknown = sorted({str(node.get("class_type")) for node in workflow.values() if isinstance(node, dict)}
                         - self.known_nodes)
        if unknown:  # what deploy/runpod-worker's handler answers for a workflow ComfyUI refuses
            job.outcome = {"status": "FAILED", "output": {"error_kind": "validation"},
                           "error": f"Workflow validation failed: Cannot execute because node {unknown[0]} "
                                    "does not exist."}
        else:
            job.outcome = {"status": "COMPLETED", "output": {"images": [
                {"filename": "ComfyUI_00001_.png", "type": "base64", "data": png_b64()}]}}
        self.jobs[job.id] = job
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})


# --- processes ----------------------------------------------------------------------------
class Processes:
    """Celery workers and beat as real processes, each in its own process group, under a
    supervisor that restarts one that exits on its own (as systemd's Restart=always does in
    deploy/systemd), and records why it exited."""

    RESTART_SECONDS = 2.0  # deploy/systemd: RestartSec=5 for workers; shorter here

    def __init__(self, env: dict, log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.workers: dict[str, subprocess.Popen] = {}  # name -> live process
        self.beat = self.web = None
        self._count = collections.Counter()
        self.started = 0
        self.lock = threading.RLock()
        self.crashes: list[dict] = []  # processes that exited without being told to
        self._supervisor = None
        self._stop = threading.Event()

    def _spawn(self, args, log: Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "project", *args], cwd=ROOT, env=self.env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self, queue: str, concurrency: int = 2, wait: bool = True):
        with self.lock:
            self._count[queue] += 1
            name = f"{queue}{self._count[queue]}"
            log = self.log_dir / f"worker-{name}.log"
            process = self._spawn(["worker", "-Q", queue, "-c", str(concurrency), "-n", f"{name}@%h",
                                   "--loglevel", "INFO", "--without-mingle", "--without-gossip"], log)
            process.log = log
            process.queue = queue
            self.workers[name] = process
            self.started += 1
        if wait:
            self.wait_ready([process])
        return name

    def wait_ready(self, processes, timeout: float = 120):
        for process in processes:
            wait_for(lambda: "ready" in process.log.read_text() or process.poll() is not None, timeout, 0.2,
                     f"worker {process.log.name} to be ready")
            if process.poll() is not None:
                raise RuntimeError(f"a worker died at start:\n{process.log.read_text()[-3000:]}")

    def start_web(self, timeout: float = 60) -> str:
        """The web server as `make run` starts it (deploy/Procfile: gunicorn, 2 processes × 4
        threads) on a free port; the URL once /healthz answers."""
        import requests

        port = _free_port()
        log = self.log_dir / "web.log"
        self.web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--threads", "4", "--access-logfile", "-", "--error-logfile", "-"],
            cwd=ROOT, env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"

        def answers():
            if self.web.poll() is not None:
                raise RuntimeError(f"the web server died at start:\n{log.read_text()[-3000:]}")
            try:
                return requests.get(f"{url}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, timeout, 0.2, "the web server")
        return url

    def start_beat(self):
        self._count["beat"] += 1
        log = self.log_dir / f"beat{self._count['beat']}.log"
        beat = self._spawn(["beat", "--loglevel", "INFO", "--pidfile="], log)
        beat.log = log
        wait_for(lambda: "beat: Starting" in log.read_text() or beat.poll() is not None, 60, 0.2, "beat")
        if beat.poll() is not None:
            raise RuntimeError(f"beat died at start:\n{log.read_text()[-3000:]}")
        self.beat = beat

    def supervise(self):
        self._supervisor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._supervisor.start()

    def _watch(self):
        while not self._stop.wait(0.5):
            with self.lock:
                exited = [(name, p) for name, p in self.workers.items() if p.poll() is not None]
                for name, _ in exited:
                    del self.workers[name]
            if self.beat is not None and self.beat.poll() is not None:
                exited.append(("beat", self.beat))
                self.beat = None
            for name, process in exited:
                self.crashes.append({"process": name, "exit_code": process.returncode, "at": time.monotonic(),
                                     "why": _last_critical(process.log)})
                if self._stop.wait(self.RESTART_SECONDS):
                    return
                if name == "beat":
                    self.start_beat()
                else:
                    self.start_worker(process.queue)

    def kill(self, name: str):
        """SIGKILL the worker's whole process group (the main process and its pool children).
        None when it is already gone (the supervisor saw it exit)."""
        with self.lock:
            process = self.workers.pop(name, None)
        if process is None:
            return None
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(30)
        return process

    def stop_all(self):
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(130)
        processes = list(self.workers.values()) + [p for p in (self.beat, self.web) if p]
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.workers.clear()
        self.beat = self.web = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _last_critical(log: Path) -> str:
    """The line that says why a celery process stopped (its last CRITICAL or ERROR line)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    marked = [line for line in lines if "CRITICAL" in line] or [line for line in lines if "ERROR" in line]
    return (marked[-1] if marked else (lines[-1] if lines else ""))[-300:]


# --- the whole world ----------------------------------------------------------------------
class World:
    def __init__(self, *, seed: int, fault_rate: float, out_dir: Path, keep: bool = False, settings=None,
                 gemini_latency: float = 0.0):
        self.settings = dict(settings or {})
        self.gemini_latency = gemini_latency
        self.seed = seed
        self.fault_rate = fault_rate
        self.out_dir = out_dir
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="comfy-chaos-"))
        self.log_dir = out_dir / "chaos-logs"
        self.redis = None
        self.local = self.runpod = self.gemini = None
        self.proxies: dict[str, ChaosProxy] = {}
        self.processes = None
        self.tokens: dict[str, str] = {}  # username -> API key

    # -- before Django -----------------------------------------------------------------------
    def start_backends(self):
        """Redis and the fakes, each fake behind its own chaos proxy."""
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(appendonly=True).start()
        comfy = {"steps": 3, "step_delay": 0.08}
        self.local = CountingComfyUI(**comfy).start()
        self.runpod = ChaosRunPod(queue_delay=0.2, run_delay=0.5, pod_start_delay=1.0,
                                  pod_comfy_kwargs={**comfy, "models": MODELS}).start()
        self.gemini = FakeGemini(op_seconds=1.0, latency=self.gemini_latency).start()
        for name, upstream, style in (("local", self.local.url, "comfyui"), ("runpod", self.runpod.url, "runpod"),
                                      ("gemini", self.gemini.url, "gemini")):
            self.proxies[name] = ChaosProxy(upstream, seed=self.seed, fault_rate=self.fault_rate, style=style,
                                            name=name, hang_seconds=20).start()

    def environment(self) -> dict:
        runpod = self.proxies["runpod"].url
        return {
            **SYSTEM_ENV,
            "DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": f"sqlite:///{self.tmp / 'chaos.sqlite3'}",
            "REDIS_URL": self.redis.url, "CELERY_BROKER_URL": self.redis.url, "CELERY_RESULT_BACKEND": self.redis.url,
            "MEDIA_ROOT": str(self.tmp / "media"), "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
            "COMFYUI_URL": self.proxies["local"].url,
            "RUNPOD_API_KEY": API_KEY, "RUNPOD_ENDPOINT_ID": ENDPOINT_ID, "RUNPOD_ENDPOINT_BASE_URL": f"{runpod}/v2",
            "RUNPOD_API_BASE_URL": runpod, "RUNPOD_POD_URL_TEMPLATE": runpod + "/proxy/{pod_id}-8188",
            "RUNPOD_POD_IMAGE": "comfy-hybrid-worker:chaos",
            "GEMINI_API_KEY": self.gemini.api_key, "GEMINI_BASE_URL": self.proxies["gemini"].url,
            "GEMINI_TRANSPORT": "gemini", "GEMINI_API_VERSION": "", "PYTHONUNBUFFERED": "1",
            **self.settings,
        }

    # -- Django ------------------------------------------------------------------------------
    def start_django(self):
        os.environ.update(self.environment())
        os.environ["LOG_LEVEL"] = "WARNING"
        import django
        from django.core.management import call_command

        django.setup()
        import logging

        # This process's own log (sends refused while Redis restarts, ...) goes to a file.
        handler = logging.FileHandler(self.log_dir / "harness.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        call_command("migrate", verbosity=0, interactive=False)
        from django.utils import timezone

        from routing.models import Backend

        Backend.objects.filter(name="local").update(url=self.proxies["local"].url, health="up",
                                                    last_probe_at=timezone.now())

    def make_users(self, names, capped: dict):
        """Users with API tokens; `capped`: username -> daily cap in USD (the others: no cap)."""
        from decimal import Decimal

        from django.contrib.auth import get_user_model

        from billing.models import SpendCap
        from routing.tokens import token_create

        for name in names:
            user = get_user_model().objects.create_user(name, f"{name}@example.com", f"{name}-password-1")
            if name in capped:
                SpendCap.objects.create(user=user, daily=Decimal(capped[name]), monthly=Decimal(capped[name]))
            _, self.tokens[name] = token_create(user=user, name="chaos")

    # -- processes ---------------------------------------------------------------------------
    def start_processes(self):
        env = {**os.environ, "LOG_LEVEL": "INFO"}
        self.processes = Processes(env, self.log_dir)
        names = [self.processes.start_worker(queue, wait=False) for queue in QUEUES]
        self.processes.wait_ready([self.processes.workers[name] for name in names])
        self.processes.start_beat()
        self.web_url = self.processes.start_web()
        self.processes.supervise()

    def restart_redis(self, down_seconds: float = 1.5, crash: bool = True, lose_data: bool = False):
        """Redis goes away (SIGKILL: a crash, only the AOF survives) and comes back on its port.
        `lose_data`: it comes back empty, as a Redis without persistence does: every queued task,
        result and lock is gone, and only the database says what was in flight."""
        process = self.redis.process
        if crash:
            process.kill()
        else:
            process.terminate()
        process.wait(10)
        if lose_data:
            self.redis.wipe()
        time.sleep(down_seconds)
        self.redis.start()

    def close(self):
        if self.processes:
            self.processes.stop_all()
        for proxy in self.proxies.values():
            proxy.stop()
        for fake in (self.local, self.runpod, self.gemini):
            if fake:
                fake.stop()
        if self.redis:
            self.redis.stop()
            shutil.rmtree(self.redis.dir, ignore_errors=True)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # Django never started
            pass
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
