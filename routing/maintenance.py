"""Beat-driven upkeep: health probes and the sweeper that re-sends what Redis lost.

The database is the source of truth; a message lost with a Redis restart is found here by
its row's age and sent again. Duplicates are harmless (every handler is idempotent).
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import dispatch
from .backends import client_for_backend, missing_settings
from .health import health_record
from .models import ACTIVE_ATTEMPT_STATES, ACTIVE_JOB_STATES, Attempt, AttemptStatus, Backend, Job, JobStatus
from .services import job_fail, attempt_fail

log = logging.getLogger(__name__)


def backends_to_probe() -> list[tuple[int, str]]:
    return [(b.id, b.queue) for b in Backend.objects.filter(enabled=True) if not missing_settings(b)]


def backend_probe(*, backend_id: int) -> None:
    backend = Backend.objects.get(id=backend_id)
    client = client_for_backend(backend)
    health = client.health()
    if not health.ok:  # one lost request is not an outage: look again before counting a failure
        health = client.health()
    # The remote queue holds our own prompts too; the router adds ours from the database,
    # so store only the others' share (someone using ComfyUI directly, another install).
    ours = Attempt.objects.filter(backend=backend, status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)).count()
    health_record(backend_id=backend.id, ok=health.ok, detail=health.detail, latency_ms=health.latency_ms,
                  queue_depth=max(0, health.queue_depth - ours), gpu=health.gpu, vram_total=health.vram_total)


def sweep(now=None) -> dict:
    """Re-send lost messages and fail jobs past their deadline. Returns counts, for logs."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SWEEP_AFTER_SECONDS)
    counts = {"expired": 0, "route": 0, "submit": 0, "poll": 0}
    deadline = now - timedelta(seconds=settings.JOB_DEADLINE_SECONDS)
    for job in Job.objects.filter(status__in=ACTIVE_JOB_STATES, created_at__lt=deadline):
        message = f"Timed out: no result after {settings.JOB_DEADLINE_SECONDS // 60} minutes"
        for attempt_id in job.attempts.filter(status__in=ACTIVE_ATTEMPT_STATES).values_list("id", flat=True):
            attempt_fail(attempt_id=attempt_id, error=message, retryable=False)
        job_fail(job, message)  # a job with no attempt in flight (queued or waiting)
        counts["expired"] += 1
    queued = Job.objects.filter(status=JobStatus.QUEUED, updated_at__lt=cutoff)
    for job_id, priority in queued.filter(waiting=False).values_list("id", "priority"):
        dispatch.send(dispatch.ROUTE, [str(job_id)], queue="control", priority=priority)
        counts["route"] += 1
    if Job.objects.filter(status=JobStatus.QUEUED, waiting=True).exists():
        dispatch.send(dispatch.ADMIT, [], queue="control")
        counts["admit"] = 1
    for attempt in Attempt.objects.filter(status=AttemptStatus.PENDING, created_at__lt=cutoff).select_related(
            "backend", "job"):
        dispatch.send(dispatch.SUBMIT, [str(attempt.id)], queue=attempt.backend.queue, priority=attempt.job.priority)
        counts["submit"] += 1
    stale_polls = Attempt.objects.filter(status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING),
                                         polled_at__lt=cutoff).select_related("backend", "job")
    for attempt in stale_polls:
        dispatch.send(dispatch.POLL, [str(attempt.id), attempt.poll_seq], queue=attempt.backend.queue,
                      priority=attempt.job.priority)
        counts["poll"] += 1
    if any(counts.values()):
        log.info("sweeper: %s", counts)
    return counts
