"""Writes: an attempt on its backend: submitted (once, even when delivered twice), then polled
until it ends, with its live progress, its queue position and, on a per-second backend, its
running meter against the caps.

Every state change is a conditional update whose row count is checked, so a task that Celery
delivers twice (or a sweeper re-send racing the original) changes nothing the second time.
"""
import time
from datetime import timedelta
import logging
from typing import Optional

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.db.models.functions import Coalesce

from billing import ledger
from billing.models import LedgerEntry
from billing.pricing import cost_at
from workers.clients import BackendError, Done, Failed, Progress
from workers.pods.placement import pod_place
from workers.workflows import WorkflowError, validate_workflow
from workers.workflows.requirements import requirements_of

from . import dispatch, previews
from .backends import client_for_backend
from .models import Attempt, AttemptStatus, Backend, JobStatus
from .outcomes import attempt_fail, attempt_succeed, lock_job, meter_rate
from .selectors import job_workflow
from .transitions import attempt_move, job_move

log = logging.getLogger(__name__)

MAX_POLL_ERRORS = 3


def attempt_submit(*, attempt_id, worker: str = ""):
    """Send the attempt to its backend. True when a poll chain should start; a number: send the
    submit again after that many seconds (a transient error, safe to resend); else False.
    `worker`: the Celery worker doing it, recorded with the backend's GPU (where it ran)."""
    attempt = Attempt.objects.select_related("job", "backend").get(id=attempt_id)
    if attempt.status != AttemptStatus.PENDING:
        return False
    if attempt.job.is_final:
        attempt_move(attempt.id, to=AttemptStatus.CANCELLED, frm=(AttemptStatus.PENDING,))
        return False
    # One delivery at a time: a sweeper re-send or a pod dispatch racing this one would submit the
    # same attempt twice (the "already known?" look-up and the send are not atomic; /run is not
    # idempotent at all). A claim older than the lease is a dead worker's: taken over.
    now = timezone.now()
    lease = now - timedelta(seconds=settings.SUBMIT_LEASE_SECONDS)
    # The try is counted in the same update, before the remote call: a second try means a worker
    # died mid-submit, and the client must look for the first one before sending again.
    if not Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).filter(
            Q(claimed_at__isnull=True) | Q(claimed_at__lt=lease)).update(claimed_at=now,
                                                                       submit_tries=F("submit_tries") + 1):
        return False
    attempt.submit_tries += 1
    paid = False
    try:
        spec = job_spec(attempt)
        spec["resubmit"] = attempt.submit_tries > 1
        if attempt.backend.kind == Backend.Kind.POD:  # the pod services choose the pod, not the client
            spec["pod"] = pod_place(attempt=attempt, requires=requirements_of(spec["workflow"]))
            if spec["pod"] is None:
                _release_submit(attempt)
                return False  # no pod has room yet: it waits; the pod services send it again
        client = client_for_backend(attempt.backend)
        paid = _open_call(attempt, client.starts_paid_run("submit", spec), f"submit-{attempt.submit_tries - 1}")
        handle = client.submit(spec)
    except WorkflowError as error:
        attempt_fail(attempt_id=attempt.id, error=str(error), retryable=False)
        return False
    except BackendError as error:
        _close_call(attempt, paid, cut_short=error.outage and not error.resend_safe,
                    key=f"submit-{attempt.submit_tries - 1}-cut")
        if (error.retryable and error.resend_safe and not error.misconfigured
                and attempt.remote_errors + 1 < settings.SUBMIT_RETRIES):
            Attempt.objects.filter(id=attempt.id).update(remote_errors=F("remote_errors") + 1)
            _release_submit(attempt)
            return max(0.1, settings.POLL_INTERVAL_SECONDS * 2 ** attempt.remote_errors)  # the same backend, soon
        attempt_fail(attempt_id=attempt.id, error=error.message, retryable=error.retryable, outage=error.outage,
                     lacks=error.lacks, misconfigured=error.misconfigured)
        return False
    now = timezone.now()
    with transaction.atomic():
        lock_job(attempt.job_id)
        # Sent: the claim passes to the poll chain (the sweeper counts its silence from here), and the
        # submit's errors are forgotten (polls count their own).
        updated = attempt_move(attempt.id, to=AttemptStatus.SUBMITTED, handle=handle, started_at=now, claimed_at=now,
                               remote_errors=0, call_open=False, worker=worker[:200], gpu=gpu_label(attempt.backend))
        job_move(attempt.job_id, to=JobStatus.SUBMITTED, started_at=Coalesce(F("started_at"), now))
    return updated


def gpu_label(backend: Backend) -> str:
    """The backend's GPU as people name it: "NVIDIA GeForce RTX 4090, 24 GB"."""
    if not backend.gpu_name:
        return ""
    size = f", {backend.vram_total / 2**30:.0f} GB" if backend.vram_total else ""
    return f"{backend.gpu_name}{size}"[:200]


def _open_call(attempt: Attempt, paid: bool, key: str) -> bool:
    """Before a call that may start a run the provider bills and that cannot be found again.
    A call still open from an earlier delivery means its worker died during it: that run may
    exist, so it is recorded as the installation's spend (the job itself goes on)."""
    if attempt.call_open:
        _unmatched(attempt, key, f"a worker died during a call to {attempt.backend.name} that may have "
                                 f"started a paid run; it cannot be found again")
    if paid != attempt.call_open:
        Attempt.objects.filter(id=attempt.id).update(call_open=paid)
    return paid


def _close_call(attempt: Attempt, paid: bool, *, cut_short: bool, key: str) -> None:
    if not paid:
        return
    Attempt.objects.filter(id=attempt.id).update(call_open=False)
    if cut_short:
        _unmatched(attempt, key, f"the connection to {attempt.backend.name} broke during a call that may "
                                 f"have started a paid run")


def _unmatched(attempt: Attempt, key: str, why: str) -> None:
    estimate = ledger.first_hold(attempt)
    if ledger.record_unmatched(attempt=attempt, key=f"unmatched:{attempt.id}:{key}", amount=estimate, note=why):
        log.warning("attempt %s: %s; recorded $%s as unmatched spend", attempt.id, why, estimate)


def _release_submit(attempt: Attempt) -> None:
    Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).update(claimed_at=None)


def job_spec(attempt: Attempt) -> dict:
    """What a backend client needs to run this attempt; plain JSON, no secrets."""
    job = attempt.job
    workflow = job_workflow(job)
    if job.is_custom_workflow:  # the bundled templates are ours; user workflows are checked again
        validate_workflow(workflow, max_nodes=settings.WORKFLOW_MAX_NODES,
                          allowed_classes=settings.WORKFLOW_ALLOWED_CLASSES)
    return {
        "job_id": str(job.id), "attempt_id": str(attempt.id), "kind": job.kind, "workflow": workflow,
        "custom_workflow": job.is_custom_workflow, "prompt": job.prompt,
        "negative_prompt": job.negative_prompt, "width": job.width, "height": job.height,
        "seed": job.seed, "duration_seconds": job.duration_seconds, "priority": job.priority,
        # when the job was accepted: a backend's queue runs its prompts in this order, whichever
        # worker reaches it first (workers/clients/comfyui.py)
        "order": job.created_at.timestamp(),
    }


# --- poll ---------------------------------------------------------------------------------
def attempt_poll(*, attempt_id, seq: int) -> Optional[float]:
    """One poll of a submitted attempt. Returns the countdown for the next poll, or None
    when the chain ends (finished, or this poll was a stale duplicate)."""
    claimed = Attempt.objects.filter(
        id=attempt_id, poll_seq=seq, status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)
    ).update(poll_seq=seq + 1, claimed_at=timezone.now())
    if not claimed:
        return None
    attempt = Attempt.objects.select_related("job", "backend").get(id=attempt_id)
    if attempt.job.is_final:
        return None
    paid = False
    try:
        client = client_for_backend(attempt.backend)
        paid = _open_call(attempt, client.starts_paid_run("poll", attempt.handle), f"poll-{seq}")
        began = time.monotonic()
        sink = ProgressSink(attempt)
        result = client.poll(attempt.handle, on_progress=sink)
        took = time.monotonic() - began
        _close_call(attempt, paid, cut_short=result.maybe_billed if isinstance(result, (Progress, Failed)) else False,
                    key=f"poll-{seq}-cut")
        if isinstance(result, Done) and not result.outputs:
            result = Failed(NOTHING_SAVED, retryable=False)
        if isinstance(result, Done):
            attempt_succeed(attempt_id=attempt.id, done=result, client=client)
            return None
    except BackendError as error:
        _close_call(attempt, paid, cut_short=error.outage and not error.resend_safe, key=f"poll-{seq}-cut")
        return _poll_error(attempt, error)
    if isinstance(result, Failed):
        attempt_fail(attempt_id=attempt.id, error=result.error, retryable=result.retryable, outage=result.outage,
                     lacks=result.lacks, ran_seconds=result.seconds, misconfigured=result.misconfigured)
        return None
    Attempt.objects.filter(id=attempt.id).update(remote_errors=0)
    sink(result)
    countdown = result.next_poll if result.next_poll is not None else settings.POLL_INTERVAL_SECONDS
    # A poll may itself last a while (ComfyUI's WebSocket watch): the meter looks ahead past the
    # next poll's end.
    if _meter_stopped(attempt, client, ahead=2 * (countdown + took)):
        return None
    return countdown


def _meter_stopped(attempt: Attempt, client, *, ahead: float) -> bool:
    """Keep a per-second attempt's hold ahead of the time it has used: cover that time plus the
    next poll's (`ahead`), with some room so that not every poll writes. When the caps refuse
    even the time already used and the next poll, cancel the remote job, charge what it used,
    and end the job with the cap's message."""
    rate = meter_rate(attempt)
    if not rate:  # free and per-output backends: no query on their polls
        return False
    running_at = attempt.running_at or Attempt.objects.filter(id=attempt.id).values_list("running_at", flat=True)[0]
    if running_at is None:
        return False
    seconds = (timezone.now() - running_at).total_seconds()
    used = cost_at(rate, seconds)
    need = used + cost_at(rate, ahead) - ledger.held(attempt)
    if need <= 0:
        return False
    refusal = ledger.extend(attempt=attempt, amount=need + cost_at(rate, 4 * ahead))
    while refusal:
        refusal = ledger.extend(attempt=attempt, amount=need)
        if not refusal or not _stop_younger(attempt, refusal):
            break
    if not refusal:
        return False
    try:
        client.cancel(attempt.handle)
    except BackendError as error:
        log.warning("could not cancel attempt %s on %s: %s", attempt.id, attempt.backend, error.message)
    _stop_metered(attempt, running_at, refusal)
    # The user's jobs still queued on metered backends would be refused at their first running
    # poll (their holds cannot cover it): stopped now, they take no pod or worker time at all.
    for queued in _queued_metered(attempt.job.user_id, attempt.id):
        _stop_queued(queued, refusal)
    return True


def _queued_metered(user_id, exclude):
    """The user's metered attempts still queued on their backends (sent, not running yet)."""
    metered = Q(backend__kind__in=(Backend.Kind.RUNPOD, Backend.Kind.POD)) | \
        Q(backend__kind=Backend.Kind.COMFYUI, backend__price_per_second__gt=0)
    return Attempt.objects.filter(metered, job__user_id=user_id, status=AttemptStatus.SUBMITTED,
                                  running_at__isnull=True).exclude(id=exclude).select_related("backend", "job")


def _stop_younger(attempt: Attempt, refusal: str) -> bool:
    """Make room for a running attempt whose meter the caps refuse: stop the same user's
    newest metered attempt that is still queued on its backend (it has used nothing, and its
    hold comes back whole). A run in progress is never stopped for one that has not started."""
    queued = _queued_metered(attempt.job.user_id, attempt.id).filter(
        id__in=LedgerEntry.objects.filter(kind=LedgerEntry.Kind.HOLD, amount__gt=0).values("attempt_id")
    ).order_by("-created_at").first()
    if queued is None:
        return False
    _stop_queued(queued, refusal)
    return True


def _stop_queued(attempt: Attempt, refusal: str) -> None:
    _stop_metered(attempt, None, refusal)
    dispatch.send(dispatch.CANCEL, [str(attempt.id)], queue=attempt.backend.queue)


def _stop_metered(attempt: Attempt, running_at, refusal: str) -> None:
    seconds = (timezone.now() - running_at).total_seconds() if running_at else 0.0
    used = cost_at(meter_rate(attempt), seconds)
    # Final: sent again, it would take back the room it just gave (a retry loop against the cap).
    attempt_fail(attempt_id=attempt.id, retryable=False, used=used,
                 error=f"Stopped after {seconds:.0f} s on {attempt.backend.name} (${used:.4f} used): {refusal}")


NOTHING_SAVED = "The job finished but saved no file (its outputs were only previews or latents)"


def _poll_error(attempt: Attempt, error: BackendError) -> Optional[float]:
    Attempt.objects.filter(id=attempt.id).update(remote_errors=F("remote_errors") + 1)
    if not error.retryable or error.misconfigured or attempt.remote_errors + 1 >= MAX_POLL_ERRORS:
        attempt_fail(attempt_id=attempt.id, error=error.message, retryable=error.retryable, outage=error.outage,
                     lacks=error.lacks, misconfigured=error.misconfigured)
        return None
    return settings.POLL_INTERVAL_SECONDS * (attempt.remote_errors + 1)


class ProgressSink:
    """What one poll hears from its backend, written only when it changes: the attempt and job
    rows when it starts running, its percent moves or its queue position changes; a preview
    image to routing/previews (throttled, never to the database)."""

    def __init__(self, attempt: Attempt):
        self.attempt = attempt
        self.running = attempt.status == AttemptStatus.RUNNING
        self.percent, self.position = attempt.progress, attempt.queue_position
        self.previews = previews.PreviewThrottle(attempt.id)

    def __call__(self, progress: Progress) -> None:
        attempt = self.attempt
        if progress.preview:
            self.previews.offer(progress.preview_mime, progress.preview)
        if not progress.running:
            if progress.position is not None and progress.position != self.position:
                Attempt.objects.filter(id=attempt.id, status=AttemptStatus.SUBMITTED).update(
                    queue_position=progress.position)
                self.position = progress.position
            return
        percent = max(progress.percent, self.percent or 0)  # a new watch window starts from 0: never back
        if self.running and percent == self.percent:
            return
        if attempt.running_at is None:  # the meter and a cancel's charge count from here
            now = timezone.now()
            if Attempt.objects.filter(id=attempt.id, running_at__isnull=True).update(running_at=now):
                attempt.running_at = now
        attempt_move(attempt.id, to=AttemptStatus.RUNNING, progress=percent, queue_position=None)
        job_move(attempt.job_id, to=JobStatus.RUNNING, progress=percent)
        self.running, self.percent, self.position = True, percent, None
