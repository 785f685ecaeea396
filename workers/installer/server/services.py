"""Writes for the local installer: an InstallRun's life, and the local backend it registers.

Every change is a conditional update whose row count is checked (DESIGN.md): a duplicate or
stale task message, or two people pressing Pause and Cancel at once, change nothing twice.
The task that runs an install carries `generation`; each dispatch bumps it, so only the
newest message may claim the run. A running install writes `heartbeat_at` with its progress;
one silent for HEARTBEAT_STALE_SECONDS is presumed dead (its worker was killed) and may be
taken over by a redelivered message or resumed from the page.
"""
from datetime import timedelta
from typing import Optional

from django.core.cache import cache
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from project import queues
from routing import dispatch, fleet
from routing.defaults import default_backends
from routing.health import health_record
from routing.models import Backend, HealthState

from ..pipeline import Options
from .models import ACTIVE_INSTALL_STATES, HEARTBEAT_STALE_SECONDS, InstallControl, InstallRun, InstallStatus
from .selectors import preview_key

INSTALL_TASK = "workers.install_tasks.run_install"

ALREADY_ACTIVE = "An install is already in progress: resume, pause or cancel it instead of starting another."
WAITING = "Waiting for the local worker (celery -Q local) to pick it up."
PAUSED_BEFORE_START = "Paused before it started."
RESUMING = "Resuming: waiting for the local worker to continue from where it stopped."
WORKER_GAVE_UP = "The worker crashed repeatedly while installing; press Resume to try again."


class InstallConflict(Exception):
    pass


def _stale_before():
    return timezone.now() - timedelta(seconds=HEARTBEAT_STALE_SECONDS)


def _stalled() -> Q:
    return Q(status=InstallStatus.RUNNING) & (Q(heartbeat_at__lt=_stale_before()) | Q(heartbeat_at__isnull=True))


def _dispatch(run_id: int, generation: int) -> None:
    dispatch.send_on_commit(INSTALL_TASK, [run_id, generation], queue=queues.LOCAL)


@transaction.atomic
def install_start(*, user, options: dict, send: bool = True) -> InstallRun:
    """An install; refused while another one is pending, running or paused. Into a folder
    whose last install failed or was cancelled, that install's row continues (its steps,
    bytes and history stay one story); otherwise a new row."""
    if InstallRun.objects.filter(status__in=ACTIVE_INSTALL_STATES).exists():
        raise InstallConflict(ALREADY_ACTIVE)
    earlier = _unfinished_run_for(options)
    if earlier is not None:
        InstallRun.objects.filter(id=earlier.id).update(
            status=InstallStatus.PENDING, control=InstallControl.NONE, error="", finished_at=None, options=options,
            install_path=options.get("path", ""), generation=F("generation") + 1, message=RESUMING, speed=0,
            eta=None)
        run = InstallRun.objects.get(id=earlier.id)
    else:
        run = InstallRun.objects.create(options=options, install_path=options.get("path", ""),
                                        created_by=user if user and user.is_authenticated else None,
                                        message=WAITING)
    if send:
        _dispatch(run.id, run.generation)
    return run


def _unfinished_run_for(options: dict) -> Optional[InstallRun]:
    """The latest install into the same folder, when it ended without succeeding."""
    folder = Options.from_dict(options).install_dir
    for run in InstallRun.objects.order_by("-created_at", "-id")[:20]:
        if Options.from_dict(run.options).install_dir == folder:
            return run if run.status in (InstallStatus.FAILED, InstallStatus.CANCELLED) else None
    return None


def _dead(holder_gone: bool) -> Q:
    """Running, but nobody runs it: its worker went silent, or (`holder_gone`, checked by the
    caller with selectors.holder_gone) the folder lock its process held is free."""
    return _stalled() | (Q(status=InstallStatus.RUNNING) if holder_gone else Q(pk__in=[]))


def install_pause(*, run_id: int) -> bool:
    # Running: the task stops at the next chunk and records "paused" itself.
    if InstallRun.objects.filter(id=run_id, status=InstallStatus.RUNNING).update(control=InstallControl.PAUSE):
        return True
    # Not started yet: pause here, and the queued message becomes stale (generation + 1).
    return bool(InstallRun.objects.filter(id=run_id, status=InstallStatus.PENDING).update(
        status=InstallStatus.PAUSED, generation=F("generation") + 1, message=PAUSED_BEFORE_START))


@transaction.atomic
def install_resume(*, run_id: int, send: bool = True, holder_gone: bool = False) -> Optional[int]:
    """Paused, failed or dead → pending with a new generation; returns it (None if refused)."""
    if InstallRun.objects.filter(status__in=ACTIVE_INSTALL_STATES).exclude(id=run_id).exists():
        raise InstallConflict(ALREADY_ACTIVE)
    resumable = Q(status__in=(InstallStatus.PAUSED, InstallStatus.FAILED)) | _dead(holder_gone)
    updated = InstallRun.objects.filter(Q(id=run_id) & resumable).update(
        status=InstallStatus.PENDING, control=InstallControl.NONE, error="", finished_at=None,
        generation=F("generation") + 1, message=RESUMING, speed=0, eta=None)
    if not updated:
        return None
    generation = InstallRun.objects.values_list("generation", flat=True).get(id=run_id)
    if send:
        _dispatch(run_id, generation)
    return generation


def install_take_over(*, run_id: int, options: dict, holder_gone: bool = False) -> Optional[int]:
    """For the CLI: continue an install nobody is running (queued, paused, failed or dead)
    in this process, with the CLI's options. Returns the new generation (None if refused)."""
    idle = Q(status__in=(InstallStatus.PENDING, InstallStatus.PAUSED, InstallStatus.FAILED)) | _dead(holder_gone)
    updated = InstallRun.objects.filter(Q(id=run_id) & idle).update(
        status=InstallStatus.PENDING, control=InstallControl.NONE, error="", finished_at=None, options=options,
        install_path=options.get("path", ""), generation=F("generation") + 1, message=RESUMING)
    return InstallRun.objects.values_list("generation", flat=True).get(id=run_id) if updated else None


def install_cancel(*, run_id: int, holder_gone: bool = False) -> bool:
    now = timezone.now()
    stopped = {"status": InstallStatus.CANCELLED, "control": InstallControl.NONE, "finished_at": now,
               "generation": F("generation") + 1, "message": "Cancelled.", "speed": 0, "eta": None}
    # Nothing is running it (queued, paused, or its worker died): cancel here and now.
    idle = Q(status__in=(InstallStatus.PENDING, InstallStatus.PAUSED)) | _dead(holder_gone)
    if InstallRun.objects.filter(Q(id=run_id) & idle).update(**stopped):
        return True
    return bool(InstallRun.objects.filter(id=run_id, status=InstallStatus.RUNNING).update(
        control=InstallControl.CANCEL))


def install_claim(*, run_id: int, generation: int) -> bool:
    """The task of this generation takes the run: pending, or running on a dead worker."""
    now = timezone.now()
    claimable = Q(status=InstallStatus.PENDING) | _stalled()
    return bool(InstallRun.objects.filter(Q(id=run_id, generation=generation) & claimable).update(
        status=InstallStatus.RUNNING, heartbeat_at=now, started_at=Coalesce(F("started_at"), Value(now)),
        message="Starting"))


def install_progress(*, run_id: int, generation: int, **fields) -> bool:
    """Progress of the running task (also its heartbeat); False means the run is no longer
    this task's (cancelled while paused, or resumed elsewhere)."""
    return bool(InstallRun.objects.filter(id=run_id, generation=generation, status=InstallStatus.RUNNING).update(
        heartbeat_at=timezone.now(), **fields))


def install_finish(*, run_id: int, generation: int, status: str, error: str = "", **fields) -> bool:
    final = status != InstallStatus.PAUSED
    values = {**fields, "status": status, "error": error, "control": InstallControl.NONE, "heartbeat_at": None,
              "speed": 0, "eta": None, "finished_at": timezone.now() if final else None}
    finished = bool(InstallRun.objects.filter(id=run_id, generation=generation, status=InstallStatus.RUNNING)
                    .update(**values))
    if finished:  # the page's "what an install would do" changed with it
        cache.delete(preview_key(InstallRun.objects.values_list("options", flat=True).get(id=run_id)))
    return finished


def install_give_up(*, run_id: int, generation: int) -> bool:
    """After repeated worker crashes: fail the run, unless a live task is still on it."""
    return bool(InstallRun.objects.filter(Q(id=run_id, generation=generation) & (
        Q(status=InstallStatus.PENDING) | _stalled())).update(
        status=InstallStatus.FAILED, error=WORKER_GAVE_UP, finished_at=timezone.now()))


@transaction.atomic
def local_backend_register(*, url: str, gpu: str = "", vram_total=None) -> str:
    """Point the "local" backend at the ComfyUI just verified and switch it on. The router
    reads backends from the database on every job, so this takes effect without a restart."""
    spec = next(spec for spec in default_backends() if spec["name"] == "local")
    backend, _ = Backend.objects.get_or_create(name="local", defaults={k: v for k, v in spec.items() if k != "name"})
    # A fresh install is a new server: the down-streak of whatever answered before is not its own.
    Backend.objects.filter(id=backend.id).update(url=url, enabled=True, health=HealthState.UNKNOWN,
                                                 consecutive_failures=0, consecutive_successes=0, down_since=None)
    health_record(backend_id=backend.id, ok=True, detail="verified by the installer", gpu=gpu, vram_total=vram_total)
    return f"the 'local' backend now points at {url} and is enabled: jobs can be routed to it right away"


@transaction.atomic
def gpu_backends_register(*, backends: list, retired: list) -> str:
    """One ComfyUI per GPU: each other GPU's backend ({name, url, gpu, vram_total}) joins the fleet
    as a local ComfyUI with its verified URL (the worker service the installer set up for it
    consumes its queue); `retired`, the backends of GPUs this install no longer serves, leave it
    (removed, or disabled when jobs ran there, routing/fleet.py)."""
    for spec in backends:
        backend = fleet.backend_join(name=spec["name"], url=spec["url"])
        health_record(backend_id=backend.id, ok=True, detail="verified by the installer", gpu=spec.get("gpu", ""),
                      vram_total=spec.get("vram_total"))
    gone = [fleet.backend_remove(backend_id=backend_id) for backend_id in
            Backend.objects.filter(name__in=retired, kind=Backend.Kind.COMFYUI).values_list("id", flat=True)]
    joined = f"backends {', '.join(spec['name'] for spec in backends)} point at their GPU's ComfyUI" if backends else ""
    return "; ".join(part for part in (joined, *gone) if part)
