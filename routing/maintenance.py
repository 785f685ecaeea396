"""Beat-driven upkeep: health probes and the sweeper that re-sends what Redis lost.

The database is the source of truth; a message lost with a Redis restart is found here by
its row's age and sent again. Duplicates are harmless (every handler is idempotent).
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from workers.clients import BackendError

from project import queues

from . import dispatch
from .backends import client_for_backend
from .fleet import probe_answered, probes_to_send
from .health import health_record
from .inventory import inventory_due, inventory_store
from .inventory_probe import inventory_probe_check
from .models import ACTIVE_ATTEMPT_STATES, ACTIVE_JOB_STATES, Attempt, AttemptStatus, Backend, Job, JobStatus
from .policy import WAIT_OUTAGE
from .services import job_fail, attempt_fail

log = logging.getLogger(__name__)


def backends_to_probe() -> list[tuple[int, str]]:
    return probes_to_send()


def backend_probe(*, backend_id: int) -> None:
    backend = Backend.objects.filter(id=backend_id).first()
    if backend is None:  # removed by the administrator while its probe was queued
        return
    probe_answered(backend_id=backend.id)  # a worker took it: the machine is there
    client = client_for_backend(backend)
    health = client.health()
    if not health.ok:  # one lost request is not an outage: look again before counting a failure
        health = client.health()
    # The remote queue holds our own prompts too; the router adds ours from the database,
    # so store only the others' share (someone using ComfyUI directly, another install).
    ours = Attempt.objects.filter(backend=backend, status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)).count()
    if health.ok and inventory_due(backend):
        _read_inventory(backend, client)
    if health.ok and backend.kind == Backend.Kind.RUNPOD:
        inventory_probe_check(backend, client)
    health_record(backend_id=backend.id, ok=health.ok, detail=health.detail, latency_ms=health.latency_ms,
                  queue_depth=max(0, health.queue_depth - ours), gpu=health.gpu, vram_total=health.vram_total,
                  misconfigured=not health.ok and health.misconfigured)
    if health.ok and Job.objects.filter(status=JobStatus.QUEUED, waiting=True, waiting_for=WAIT_OUTAGE).exists():
        dispatch.send(dispatch.ADMIT, [], queue=queues.CONTROL)  # jobs waiting for it to answer again


def _read_inventory(backend: Backend, client) -> None:
    try:
        inventory = client.inventory()
    except BackendError as error:  # the next probe reads it again; health is judged by the probe alone
        log.warning("could not read the inventory of %s: %s", backend.name, error.message)
        return
    if inventory is not None:
        inventory_store(backend_id=backend.id, inventory=inventory, source="object_info")


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
    counts["outage"] = _fail_long_outage_waits(now)
    queued = Job.objects.filter(status=JobStatus.QUEUED, updated_at__lt=cutoff)
    for job_id, priority in queued.filter(waiting=False).values_list("id", "priority"):
        dispatch.send(dispatch.ROUTE, [str(job_id)], queue=queues.CONTROL, priority=priority)
        counts["route"] += 1
    if Job.objects.filter(status=JobStatus.QUEUED, waiting=True).exists():
        dispatch.send(dispatch.ADMIT, [], queue=queues.CONTROL)
        counts["admit"] = 1
    for attempt in Attempt.objects.filter(status=AttemptStatus.PENDING, created_at__lt=cutoff).select_related(
            "backend", "job"):
        dispatch.send(dispatch.SUBMIT, [str(attempt.id)], queue=attempt.backend.queue, priority=attempt.job.priority)
        counts["submit"] += 1
    # A sent attempt's last poll claimed it long ago: its poll chain's message was lost.
    stale_polls = Attempt.objects.filter(status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING),
                                         claimed_at__lt=cutoff).select_related("backend", "job")
    for attempt in stale_polls:
        dispatch.send(dispatch.POLL, [str(attempt.id), attempt.poll_seq], queue=attempt.backend.queue,
                      priority=attempt.job.priority)
        counts["poll"] += 1
    counts["webhook"] = _resend_lost_webhooks(cutoff)
    if any(counts.values()):
        log.info("sweeper: %s", counts)
    return counts


def _resend_lost_webhooks(cutoff) -> int:
    """A pending webhook whose next try is long overdue lost its message (Redis came back empty,
    or a worker died with it): send that try again. Delivery is at least once: a receiver may see
    a job twice (its id is in the payload and the signature)."""
    sent = 0
    for job_id, tries in Job.objects.filter(webhook_state="pending", webhook_due_at__lt=cutoff).values_list(
            "id", "webhook_tries"):
        if Job.objects.filter(id=job_id, webhook_state="pending", webhook_due_at__lt=cutoff).update(
                webhook_due_at=timezone.now()):  # claimed: the next sweep waits for this send
            dispatch.send(dispatch.WEBHOOK, [str(job_id), tries + 1], queue=queues.WEBHOOKS)
            sent += 1
    return sent


def _fail_long_outage_waits(now) -> int:
    """A job that waited OUTAGE_WAIT_SECONDS for a backend to answer again fails, saying why."""
    since = now - timedelta(seconds=settings.OUTAGE_WAIT_SECONDS)
    failed = 0
    for job in Job.objects.filter(status=JobStatus.QUEUED, waiting=True, waiting_for=WAIT_OUTAGE,
                                  waiting_since__lt=since):
        reasons = "; ".join(f"{name}: {why}" for name, why in (job.decision or {}).items())
        last = job.attempts.order_by("-number").values_list("error", flat=True).first()
        job_fail(job, f"Gave up after waiting {settings.OUTAGE_WAIT_SECONDS // 60} minutes for a backend to "
                      f"answer again{f' (last error: {last})' if last else ''} — {reasons}")
        failed += 1
    return failed
