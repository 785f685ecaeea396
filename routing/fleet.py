"""A fleet of ComfyUI backends: machines join, leave, or are lost.

Each ComfyUI backend has its own queue (project/queues.py, `for_comfyui`), consumed only by the
worker started beside that ComfyUI (`manage.py gpu_worker`). So the control plane cannot ask a
machine anything directly; it learns that a machine is there from its worker taking its probes:
- **joined**: the worker registers (or updates) its backend row when it starts;
- **left**: a worker stopped on purpose says so as it shuts down;
- **lost**: a probe sent to its queue that no worker took for WORKER_LOST_SECONDS (the machine
  died, its network went, its worker was killed). The probe's ComfyUI answer is separate: a
  worker that is there but whose ComfyUI is down is ordinary ill health, with hysteresis.

A left or lost backend is down at once, and its jobs in flight move to other backends: their
attempts fail as an outage (the job routes again; this backend is not tried for it until it
answers again). A prompt its ComfyUI may still run is cancelled there when the worker is back
(the cancel waits in its queue). No job is lost, and none runs twice to completion: a late
result of a moved attempt is refused by its conditional update.
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from project import queues

from . import dispatch
from .backends import missing_settings
from .health import FAILURES_TO_DOWN, health_record
from .models import ACTIVE_ATTEMPT_STATES, Attempt, Backend, HealthState
from .services import attempt_fail

log = logging.getLogger(__name__)

# A new machine's run times until it has learned its own (routing/services.py, _learn_time).
JOIN_DEFAULTS = {"kind": Backend.Kind.COMFYUI, "category": "local", "priority": 0,
                 "expected_image_seconds": 15.0, "expected_video_seconds": 240.0}


class JoinRefused(Exception):
    pass


def backend_join(*, name: str, url: str | None, health=None) -> Backend:
    """Register or update the ComfyUI backend `name` for the machine whose worker is starting.
    `url` None keeps the stored one (the first machine's row may carry a URL set by staff);
    `health` is that ComfyUI's answer to /system_stats, when it gave one. An administrator's
    "disabled" is kept: joining again does not undo it."""
    defaults = {**JOIN_DEFAULTS, "url": url or ""}
    backend, created = Backend.objects.get_or_create(name=name, defaults=defaults)
    if backend.kind != Backend.Kind.COMFYUI:
        raise JoinRefused(f"backend {name!r} exists and is a {backend.get_kind_display()}, not a ComfyUI server")
    fields = {"probe_sent_at": None}
    if url is not None and url != backend.url:
        fields["url"] = url
    Backend.objects.filter(id=backend.id).update(**fields)
    if health is not None:
        health_record(backend_id=backend.id, ok=health.ok, detail=health.detail, latency_ms=health.latency_ms,
                      gpu=health.gpu, vram_total=health.vram_total)
    log.info("%s %s (%s) on queue %s", "joined:" if created else "rejoined:", name, url or backend.url,
             backend.queue)
    if backend.enabled:
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)  # jobs waiting for room
    backend.refresh_from_db()
    return backend


def backend_left(*, name: str, why: str = "its worker stopped") -> int:
    """The worker of `name` is stopping: the backend is down until a worker takes its queue
    again, and its jobs in flight move elsewhere. Returns how many moved."""
    backend = Backend.objects.filter(name=name, kind=Backend.Kind.COMFYUI).first()
    if backend is None:
        return 0
    moved = backend_lost(backend_id=backend.id, why=f"{backend.name}: {why}")
    Backend.objects.filter(id=backend.id).update(probe_sent_at=timezone.now())  # lost for good if none returns
    return moved


def backend_lost(*, backend_id: int, why: str) -> int:
    """Down at once with `why`, and every attempt in flight there failed as an outage, so its job
    routes again. Returns how many attempts moved."""
    now = timezone.now()
    Backend.objects.filter(id=backend_id).exclude(health=HealthState.DOWN).update(
        health=HealthState.DOWN, down_since=now)
    Backend.objects.filter(id=backend_id).update(
        last_error=why[:2000], consecutive_successes=0,
        consecutive_failures=F("consecutive_failures") + FAILURES_TO_DOWN)
    moved = 0
    for attempt in Attempt.objects.filter(backend_id=backend_id, status__in=ACTIVE_ATTEMPT_STATES).select_related(
            "backend"):
        # The error starts with `why`: it is the backend's last error after this (is_lost).
        attempt_fail(attempt_id=attempt.id, error=f"{why}; moved to another backend",
                     retryable=True, outage=True)
        if attempt.handle:  # its ComfyUI may still hold the prompt: cancelled there once a worker is back
            dispatch.send(dispatch.CANCEL, [str(attempt.id)], queue=attempt.backend.queue)
        moved += 1
    log.warning("backend %s lost (%s): %d job(s) moved", backend_id, why, moved)
    return moved


def backend_remove(*, backend_id: int) -> str:
    """The administrator takes a backend out of the fleet: its jobs in flight move elsewhere; the
    row is deleted, or, when attempts ran there (their history keeps it), disabled. Its worker,
    if still running, then takes nothing: no job is routed to it."""
    backend = Backend.objects.get(id=backend_id)
    Backend.objects.filter(id=backend_id).update(enabled=False)
    moved = backend_lost(backend_id=backend_id, why=f"{backend.name}: removed by the administrator")
    note = f", {moved} job(s) moved" if moved else ""
    if Attempt.objects.filter(backend_id=backend_id).exists():
        return f"{backend.name} disabled (kept for the history of the jobs that ran there{note})"
    Backend.objects.filter(id=backend_id).delete()
    return f"{backend.name} removed{note}"


def probe_answered(*, backend_id: int) -> None:
    """A worker took this backend's probe: its machine is there (whatever its ComfyUI says)."""
    Backend.objects.filter(id=backend_id).update(probe_sent_at=None)


def probes_to_send(now=None) -> list[tuple[int, str]]:
    """(backend id, queue) of every backend to probe now, after judging the ComfyUI backends whose
    probes went unanswered: none taken for WORKER_LOST_SECONDS, the backend is lost. Probes go out
    every round while one is outstanding (a probe lost with a Redis restart is not a lost
    machine); a lost backend is asked again once per WORKER_LOST_SECONDS, so a dead machine's
    queue gathers one small expiring message per interval."""
    now = now or timezone.now()
    overdue = now - timedelta(seconds=settings.WORKER_LOST_SECONDS)
    due, window_starts = [], []
    for backend in Backend.objects.filter(enabled=True).defer("inventory"):
        if missing_settings(backend):
            continue
        if backend.on_own_queue:  # its machine's worker alone takes these probes: is it there?
            sent = backend.probe_sent_at
            if sent is not None and sent < overdue:
                if not is_lost(backend):
                    backend_lost(backend_id=backend.id, why=f"{LOST} {backend.queue} for "
                                 f"{int((now - sent).total_seconds())} s (its machine or its worker is gone)")
                sent = None  # a new window: asked once more
            elif sent is not None and is_lost(backend):
                continue
            if sent is None:
                window_starts.append(backend.id)
        due.append((backend.id, backend.queue))
    Backend.objects.filter(id__in=window_starts).update(probe_sent_at=now)  # one write for the round
    return due


LOST = "no worker has taken its queue"


def is_lost(backend: Backend) -> bool:
    return backend.health == HealthState.DOWN and backend.last_error.startswith(LOST)
