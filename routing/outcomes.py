"""Writes: the end of an attempt and of a job: succeeded (outputs stored, cost charged, time
learned), failed (settled; routed again when the backend was at fault), cancelled (on the
backend too), and what a per-second run the provider bills for may still cost.

Every state change is a conditional update whose row count is checked, so a task that Celery
delivers twice changes nothing the second time. The lock order is lock_job's.
"""
import hashlib
import logging
from decimal import Decimal
from typing import Optional

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.core.files.base import ContentFile

from billing import ledger
from billing.models import LedgerEntry
from billing.pods import pod_price_per_second
from billing.pricing import actual_cost, cost_at, metered_cost, metered_price
from project import queues
from workers.clients import BackendError, Done
from workers.pods.placement import pod_attempt_failed

from . import dispatch, previews
from .backends import client_for_backend
from .health import health_record, success_seen
from .inventory import inventory_forget
from .models import ACTIVE_ATTEMPT_STATES, Attempt, AttemptStatus, Backend, Job, JobStatus, Output
from .transitions import attempt_move, job_move

log = logging.getLogger(__name__)


def lock_job(job_id) -> None:
    """The one lock order on PostgreSQL: a transaction that changes an attempt's state locks its
    job's row first, then attempt rows, then spend counters and ledger (billing.ledger). Two paths
    that took job and attempt in opposite orders (a cancel against a completion) deadlocked in
    61 of 70 races (tests/routing/lock_race.py). A no-op on SQLite, whose writers run one at a time."""
    list(Job.objects.select_for_update().filter(id=job_id).values_list("id", flat=True))


def attempt_succeed(*, attempt_id, done: Done, client) -> bool:
    """Download every output, then mark attempt and job succeeded, exactly once."""
    files = [(output, client.download(output)) for output in done.outputs]
    now = timezone.now()
    with transaction.atomic():
        attempt = Attempt.objects.select_related("backend", "job").get(id=attempt_id)
        lock_job(attempt.job_id)
        seconds = done.seconds
        if not seconds and attempt.running_at:  # the backend reported no execution time: the time we saw
            seconds = (now - attempt.running_at).total_seconds()
        cost = actual_cost(backend=attempt.backend, job=attempt.job, seconds=seconds, outputs=len(files),
                           rate=meter_rate(attempt))
        if not attempt_move(attempt_id, to=AttemptStatus.SUCCEEDED, finished_at=now, progress=100,
                            seconds=done.seconds, error="", cost=cost):
            return False
        if cost or attempt.backend.category != "local":  # a local GPU holds and charges nothing
            ledger.charge(attempt=attempt, amount=cost)
        for index, (output, data) in enumerate(files):
            _store_output(attempt, index, output, data)
        job_move(attempt.job_id, to=JobStatus.SUCCEEDED, finished_at=now, progress=100, error="",
                 backend=attempt.backend, cost=F("cost") + cost)
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)
        _ended(attempt.job_id, has_webhook=bool(attempt.job.webhook_url))
    # Backend rows are written after the commit: routing locks backends, then spend counters;
    # writing counters, then a backend, in one transaction deadlocks with it on PostgreSQL.
    _learn_time(attempt, done.seconds or (now - (attempt.started_at or now)).total_seconds())
    success_seen(backend_id=attempt.backend_id)
    attempt_ended(attempt)
    return True


LEARNING_RATE = 0.2


def _learn_time(attempt: Attempt, seconds: float) -> None:
    """Expected run time per backend and job kind: an exponential moving average, so the
    router's "ties go to the faster" follows what each backend really does. On a local GPU the
    first runs are averaged plainly (weight 1/n) before the average moves: its starting value is
    a guess about a machine nobody measured (a joined machine starts at 15 s), and the fleet's
    split by speed needs the real time after one job, not after a dozen."""
    if seconds <= 0:
        return
    field = "expected_video_seconds" if attempt.job.kind == "video" else "expected_image_seconds"
    rate = LEARNING_RATE
    if attempt.backend.category == "local":
        runs = Attempt.objects.filter(backend_id=attempt.backend_id, status=AttemptStatus.SUCCEEDED,
                                      job__kind=attempt.job.kind).values("id")[:round(1 / LEARNING_RATE)].count()
        rate = max(LEARNING_RATE, 1 / max(runs, 1))
    Backend.objects.filter(id=attempt.backend_id).update(**{field: F(field) * (1 - rate) + seconds * rate})


def _store_output(attempt: Attempt, index: int, output, data: bytes) -> Output:
    return Output.objects.create(
        job_id=attempt.job_id, attempt=attempt, index=index, filename=output.filename[:200],
        mime=output.mime, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        file=ContentFile(data, name=output.filename),
    )


def attempt_fail(*, attempt_id, error: str, retryable: bool, outage: bool = False, lacks: tuple = (),
                 used: Optional[Decimal] = None, ran_seconds: Optional[float] = None,
                 misconfigured: bool = False) -> None:
    """Record the failure; route the job again when the backend was at fault. `used`: remote
    time that was billed anyway (a job stopped by its meter), charged instead of released.
    `ran_seconds`: what the provider reports the failed run took (billed, as the operator's).

    Only an outage (unreachable, timeout, 5xx) counts against the backend's health; a model or
    node it lacks corrects its inventory instead (the job moves on; nobody else is affected). A
    misconfigured backend (its key rejected, its model unknown) is an outage that marks it down
    at once, with the error as the reason."""
    outage = outage or misconfigured
    retryable = retryable or misconfigured
    with transaction.atomic():
        lock_job(Attempt.objects.values_list("job_id", flat=True).get(id=attempt_id))
        if not attempt_move(attempt_id, to=AttemptStatus.FAILED, error=error[:4000], retryable=retryable,
                            outage=outage and retryable, finished_at=timezone.now(), cost=used or Decimal("0")):
            return
        attempt = Attempt.objects.select_related("job", "backend").get(id=attempt_id)
        log.info("attempt %s of job %s on %s failed (%s): %s", attempt.id, attempt.job_id, attempt.backend.name,
                 "will route again" if retryable else "final", error)  # the staff's detail; users see for_users
        _settle(attempt, used)
        if used is None:
            _given_up_remotely(attempt, ran_seconds)
        job = attempt.job
        if retryable and outage and attempt.backend.kind == Backend.Kind.POD:  # that pod may be dead
            pod_attempt_failed(attempt_id=attempt.id)
        if retryable:
            if job_move(job.id, to=JobStatus.QUEUED, progress=0):
                dispatch.send_on_commit(dispatch.ROUTE, [str(job.id)], queue=queues.CONTROL, priority=job.priority)
        else:
            job_fail(job, error)
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)
    # Backend rows after the commit (lock order: see attempt_succeed).
    if lacks:
        inventory_forget(backend_id=attempt.backend_id, lacks=lacks)
    if retryable and outage:
        health_record(backend_id=attempt.backend_id, ok=False, detail=error, misconfigured=misconfigured)
    attempt_ended(attempt)


def _given_up_remotely(attempt: Attempt, ran_seconds: Optional[float]) -> None:
    """A per-second run that failed, or that we gave up polling: RunPod may still be running it,
    and bills the seconds it ran either way. Cancel it, and record those seconds (as RunPod
    reports them, else the time we saw it running) as the installation's spend: the user is
    not charged for a backend's failure."""
    if not attempt.handle or not metered_price(attempt.backend):
        return
    dispatch.send_on_commit(dispatch.CANCEL, [str(attempt.id)], queue=attempt.backend.queue)
    if ran_seconds is not None or attempt.running_at:
        seconds = ran_seconds if ran_seconds is not None else (timezone.now() - attempt.running_at).total_seconds()
        ledger.record_unmatched(attempt=attempt, key=f"unmatched:{attempt.id}:failed-run",
                                amount=metered_cost(attempt.backend, seconds),
                                note=f"ran about {seconds:.0f} s on {attempt.backend.name}, then failed or was given up")


def _settle(attempt: Attempt, used: Optional[Decimal]) -> None:
    """An attempt ended without a result: give its hold back, or charge the remote time it used
    (RunPod bills a cancelled or stopped job for the seconds it ran)."""
    if not used:
        ledger.release(attempt=attempt)
        return
    ledger.charge(attempt=attempt, amount=used)
    Job.objects.filter(id=attempt.job_id).update(cost=F("cost") + used)


def job_fail(job: Job, error: str) -> None:
    if job_move(job.id, to=JobStatus.FAILED, error=error[:4000], finished_at=timezone.now()):
        _ended(job.id)


def _ended(job_id, has_webhook: bool = True) -> None:
    """The job reached its final state: its webhook, if any, is sent once (claimed here).
    `has_webhook` False: the caller knows it has none (no query)."""
    if has_webhook and Job.objects.filter(id=job_id, webhook_state="").exclude(webhook_url="").update(
            webhook_state="pending", webhook_due_at=timezone.now()):
        dispatch.send_on_commit(dispatch.WEBHOOK, [str(job_id), 1], queue=queues.WEBHOOKS)


def job_cancel(*, user, job_id) -> bool:
    """Cancel the user's job; a submitted attempt is cancelled on its backend too."""
    with transaction.atomic():
        lock_job(job_id)
        if not job_move(job_id, to=JobStatus.CANCELLED, where={"user": user}, finished_at=timezone.now(),
                        error="Cancelled by the user"):
            return False
        _ended(job_id)
        for attempt in Attempt.objects.filter(job_id=job_id, status__in=ACTIVE_ATTEMPT_STATES).select_related("backend"):
            now = timezone.now()
            used = used_so_far(attempt, now)
            if attempt_move(attempt.id, to=AttemptStatus.CANCELLED, finished_at=now, cost=used or Decimal("0")):
                _settle(attempt, used)
            if attempt.handle:
                dispatch.send_on_commit(dispatch.CANCEL, [str(attempt.id)], queue=attempt.backend.queue)
            transaction.on_commit(lambda ended=attempt: attempt_ended(ended))
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)
    return True


def attempt_cancel_remote(*, attempt_id) -> None:
    """Cancel an ended attempt's remote run; then, on a per-second backend, ask what the run
    ran: it may have started after we last looked (or before we gave up on it), and the
    provider bills those seconds whatever our ledger says."""
    attempt = Attempt.objects.select_related("backend").get(id=attempt_id)
    client = client_for_backend(attempt.backend)
    try:
        client.cancel(attempt.handle)
        seconds = client.ran_seconds(attempt.handle) if metered_price(attempt.backend) else None
    except BackendError as error:
        log.warning("could not cancel attempt %s on %s: %s", attempt.id, attempt.backend, error.message)
        return
    if seconds:
        _record_billed_run(attempt, seconds)


def _record_billed_run(attempt: Attempt, seconds: float) -> None:
    """What the provider bills for a run that gave no result, beyond what the ledger already
    holds for it (the user's charge for the time we saw it running, a failed-run entry): the
    rest is the installation's spend, recorded once."""
    if attempt.status == AttemptStatus.SUCCEEDED:
        return
    key = f"unmatched:{attempt.id}:failed-run"
    recorded = LedgerEntry.objects.filter(attempt_id=attempt.id).filter(
        Q(kind=LedgerEntry.Kind.CHARGE) | Q(kind=LedgerEntry.Kind.UNMATCHED, key__startswith=key)
    ).values_list("key", "amount")
    rest = metered_cost(attempt.backend, seconds) - sum((amount for _, amount in recorded), Decimal("0"))
    if rest <= 0:
        return
    if any(entry_key == key for entry_key, _ in recorded):
        key += ":after-cancel"
    ledger.record_unmatched(attempt=attempt, key=key, amount=rest,
                            note=f"{attempt.backend.name} reports it ran {seconds:.0f} s, then was cancelled; no job received it")


def meter_rate(attempt: Attempt) -> Decimal:
    """Price per second of this attempt's remote time: its pod's rate on pods (billing.pods: a
    second the pod executes a job is that job's), else the backend's; 0 = not metered."""
    if attempt.backend.kind == Backend.Kind.POD:
        rate = Attempt.objects.filter(id=attempt.id).values_list("pod_assignment__pod__cost_per_hour", flat=True)
        return pod_price_per_second(rate.first())
    return metered_price(attempt.backend)


def used_so_far(attempt: Attempt, now) -> Optional[Decimal]:
    """What a metered attempt's remote time has cost until now (None: not metered, or not running)."""
    if attempt.running_at is None:
        return None
    rate = meter_rate(attempt)
    return cost_at(rate, (now - attempt.running_at).total_seconds()) if rate else None


def attempt_ended(attempt: Attempt) -> None:
    """After an attempt's end commits: its preview goes, and on a ComfyUI the prompts queued
    behind it are polled at once: one of them is starting now, and every one moved up."""
    previews.drop(attempt.id)
    if attempt.backend.kind not in (Backend.Kind.COMFYUI, Backend.Kind.POD):
        return
    queued = Attempt.objects.filter(backend_id=attempt.backend_id, status=AttemptStatus.SUBMITTED).exclude(
        id=attempt.id).values_list("id", "poll_seq", "job__priority")[:50]
    try:
        for attempt_id, seq, priority in queued:
            dispatch.send(dispatch.POLL, [str(attempt_id), seq], queue=attempt.backend.queue, priority=priority)
    except Exception as error:  # a nudge only saves a poll interval: the chains poll on their own anyway
        log.warning("could not nudge the prompts queued behind attempt %s: %s", attempt.id, error)
