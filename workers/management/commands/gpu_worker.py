"""Join this GPU machine to the fleet: one command, run beside its ComfyUI.

    python manage.py gpu_worker --comfyui-url http://127.0.0.1:8188 [--name box-b] [--concurrency 2]

It registers (or updates) the machine's ComfyUI backend row — name, URL, GPU and VRAM from
/system_stats — then runs the Celery worker that alone consumes that backend's queue
(`local.<name>`; the first machine's backend, `local`, keeps the queue `local`). Beat probes it
there, which also reads its inventory. Stopped (SIGTERM, Ctrl-C), the worker marks its backend
down and moves its jobs to other backends; killed, or with its machine gone, the control plane
finds out when its probes go untaken (WORKER_LOST_SECONDS) and does the same.

Arguments after `--` go to `celery worker` as they are (e.g. `-- --without-gossip`).
"""
import argparse
import re
import socket
from urllib.parse import urlsplit

from celery.signals import worker_shutting_down
from django.core.management.base import BaseCommand, CommandError

from project.celery import app
from routing import fleet
from routing.backends import backend_url, client_for_backend
from routing.models import Backend

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,59}$")


def default_name(url: str) -> str:
    """<host>-<port>: unique per ComfyUI, also for one ComfyUI per GPU on a multi-GPU box."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-") or "gpu"
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    return f"{host[:50]}-{port}"


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"--comfyui-url must be an http(s) URL such as http://127.0.0.1:8188, not {url!r}")
    return url.rstrip("/")


class Command(BaseCommand):
    help = "Register this machine's ComfyUI as a backend and run the worker that alone consumes its queue."

    def add_arguments(self, parser):
        parser.add_argument("--comfyui-url", help="This machine's ComfyUI (default: the backend's stored URL, "
                                                  "else COMFYUI_URL)")
        parser.add_argument("--name", help="Backend name: lower-case letters, digits, - and _ "
                                           "(default: <host>-<port>)")
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes (default 2)")
        parser.add_argument("--register-only", action="store_true",
                            help="Register or update the backend row, then exit without running a worker")
        parser.add_argument("celery_args", nargs=argparse.REMAINDER, help="After --: passed to celery worker")

    def handle(self, *args, comfyui_url, name, concurrency, register_only, celery_args, **options):
        url = check_url(comfyui_url) if comfyui_url else None
        if name is None:
            if url is None:
                raise CommandError("Give --comfyui-url (and optionally --name), or --name of a registered backend")
            name = default_name(url)
        if not NAME.match(name):
            raise CommandError(f"--name {name!r}: use lower-case letters, digits, - and _ (at most 60)")
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        backend = self._join(name, url)
        if register_only:
            return
        worker_shutting_down.connect(lambda **kwargs: self._leave(name), weak=False)
        extra = [arg for arg in (celery_args or []) if arg != "--"]
        app.worker_main(["worker", "-Q", backend.queue, "-n", f"{name}@%h", "--concurrency", str(concurrency),
                         "--loglevel", "INFO", *extra])

    def _join(self, name: str, url: str | None) -> Backend:
        probe = Backend(name=name, kind=Backend.Kind.COMFYUI, url=url or "")
        existing = Backend.objects.filter(name=name).first()
        target = url or (backend_url(existing) if existing else backend_url(probe))
        probe.url = target
        health = client_for_backend(probe).health()
        try:
            backend = fleet.backend_join(name=name, url=url, health=health if health.ok else None)
        except fleet.JoinRefused as refused:
            raise CommandError(str(refused)) from None
        gpu = f"{backend.gpu_name}, {backend.vram_total / 2**30:.0f} GB" if backend.gpu_name and backend.vram_total \
            else backend.gpu_name or "GPU not known yet"
        answer = "answers" if health.ok else f"does not answer yet ({health.detail}); beat probes it"
        self.stdout.write(f"Backend {backend.name}: ComfyUI at {target} {answer}; {gpu}; queue {backend.queue}")
        if not backend.enabled:
            self.stdout.write(self.style.WARNING(
                f"{backend.name} is disabled by the administrator: no job is routed here until it is enabled "
                f"in the admin (Backends)"))
        return backend

    def _leave(self, name: str) -> None:
        moved = fleet.backend_left(name=name)
        self.stdout.write(f"Backend {name} marked down: its worker stopped; {moved} job(s) moved to other backends")
