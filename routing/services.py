"""Writes: a job's life from submission to its final state.

Every state change is a conditional update whose row count is checked, so a task that Celery
delivers twice (or a sweeper re-send racing the original) changes nothing the second time.
"""
import hashlib
import logging
import time
from datetime import timedelta
from decimal import Decimal
from typing import Optional

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import caps
from billing.models import LedgerEntry
from billing.pods import pod_price_per_second
from billing.pricing import actual_cost, cost_at, metered_cost, metered_price
from project import queues
from workers.clients import BackendError, Done, Failed, Progress
from workers.pods.placement import pod_attempt_failed, pod_place
from workers.workflows import WorkflowError, validate_workflow
from workers.workflows.requirements import requirements_of

from . import dispatch, previews
from .backends import client_for_backend
from .health import health_record, success_seen
from .inventory import inventory_forget
from .models import (
    ACTIVE_ATTEMPT_STATES,
    ACTIVE_JOB_STATES,
    Attempt,
    AttemptStatus,
    Backend,
    Job,
    JobStatus,
    Output,
    Preference,
    Priority,
)
from .policy import WAIT_GPU, decide
from .selectors import (admission_order, candidates_for, in_flight_by_user, job_facts, job_workflow, local_room,
                        locked_backends)

log = logging.getLogger(__name__)

MAX_POLL_ERRORS = 3


# --- submit and route ---------------------------------------------------------------------
class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def submission_check(*, user, now=None) -> None:
    """Raise RateLimited when the user submitted SUBMIT_RATE_PER_MINUTE jobs in the last minute.
    Called by job_submit inside its transaction, after locking the user's row, so the count and
    the insert are one step: concurrent submissions cannot all read "room for one more"."""
    now = now or timezone.now()
    limit = max(1, settings.SUBMIT_RATE_PER_MINUTE)
    # The limit-th newest job of the last minute, if there is one: one query, no rows carried.
    oldest = Job.objects.filter(user=user, created_at__gt=now - timedelta(minutes=1)).order_by(
        "-created_at").values_list("created_at", flat=True)[limit - 1:limit].first()
    if oldest is not None:
        wait = max(1, int((oldest + timedelta(minutes=1) - now).total_seconds()) + 1)
        raise RateLimited(f"Too many submissions: at most {limit} jobs a minute. Try again in {wait} s.", wait)


@transaction.atomic
def job_submit(*, user, kind: str, preference: str, prompt: str = "", negative_prompt: str = "",
               width: int = 512, height: int = 512, seed: int = 0, duration_seconds: int = 0,
               workflow: Optional[dict] = None, priority: int = Priority.NORMAL, webhook_url: str = "") -> Job:
    """Store the job and remember the preference; it is routed as soon as this commits, in this
    process (no message to the control worker first: one hop less for every job). Every path that
    makes a job (form, API, retry, admin) comes here, so every one is rate limited."""
    # no_key: it serializes this user's submissions without blocking inserts that point at the
    # user row (ledger entries, jobs) in other transactions.
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk", flat=True).first()
    submission_check(user=user)
    job = Job.objects.create(
        user=user, kind=kind, preference=preference, prompt=prompt, negative_prompt=negative_prompt,
        width=width, height=height, seed=seed, duration_seconds=duration_seconds, workflow=workflow,
        priority=priority, webhook_url=webhook_url,
    )
    preference_set(user=user, preference=preference)
    transaction.on_commit(lambda: route_now(job.id, job.priority))
    return job


def route_now(job_id, priority: int) -> None:
    """Route a job that was just stored, here and now; should that fail (the database busy, a
    bug), the control worker routes it (the sweeper would too)."""
    try:
        job_route(job_id=job_id)
    except Exception:  # noqa: BLE001 — the job is stored: it must not be lost to a routing error here
        log.exception("routing job %s where it was submitted failed; the control worker routes it", job_id)
        dispatch.send(dispatch.ROUTE, [str(job_id)], queue=queues.CONTROL, priority=priority)


def preference_set(*, user, preference: str) -> None:
    """One upsert (INSERT ... ON CONFLICT DO UPDATE), not a read and a write, on every submission."""
    Preference.objects.bulk_create([Preference(user=user, preference=preference, updated_at=timezone.now())],
                                   update_conflicts=True, unique_fields=["user"],
                                   update_fields=["preference", "updated_at"])


def job_route(*, job_id) -> Optional[Attempt]:
    """Choose a backend for a queued job and create its next attempt."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job_id)
        if job.status != JobStatus.QUEUED:
            return None
        tried = job.attempts.count()
        refused, backends = {}, locked_backends()
        for _ in range(MAX_HOLD_TRIES):
            candidates = candidates_for(job, refused, backends)
            decision = decide(job_facts(job, tried), candidates, local_queue_limit=settings.LOCAL_QUEUE_LIMIT)
            if decision.wait and tried < settings.JOB_MAX_ATTEMPTS:
                Job.objects.filter(id=job.id, status=JobStatus.QUEUED).update(
                    waiting=True, waiting_for=decision.waiting_for, reason=decision.reason,
                    decision=decision.reasons, waiting_since=Coalesce(F("waiting_since"), timezone.now()))
                return None
            if tried >= settings.JOB_MAX_ATTEMPTS or decision.backend_id is None:
                job_fail(job, _no_backend_message(job, decision.summary, tried))
                return None
            chosen = next(c for c in candidates if c.id == decision.backend_id)
            attempt, refused[chosen.id] = _place(job, chosen, tried + 1)
            if attempt:
                attempt.backend = next(b for b in backends if b.id == chosen.id)  # read once, above
                break
        else:
            job_fail(job, _no_backend_message(job, decision.summary, tried))
            return None
        Job.objects.filter(id=job.id, status=JobStatus.QUEUED).update(
            status=JobStatus.ROUTED, backend=attempt.backend, reason=decision.reason, decision=decision.reasons,
            waiting=False, waiting_for="", waiting_since=None, **_moved(job, attempt))
        dispatch.send_on_commit(dispatch.SUBMIT, [str(attempt.id)], queue=attempt.backend.queue,
                                priority=job.priority)
        return attempt


MAX_HOLD_TRIES = 4


def _moved(job: Job, attempt: Attempt) -> dict:
    """Counter updates for a job's next attempt: tried again on the same backend, or moved on."""
    if attempt.number == 1:
        return {}
    previous = job.attempts.filter(number=attempt.number - 1).values_list("backend_id", flat=True).first()
    if previous is None:
        return {}
    if previous == attempt.backend_id:
        return {"retries": F("retries") + 1}
    return {"failovers": F("failovers") + 1}


class _Refused(Exception):
    pass


def _place(job: Job, chosen, number: int) -> tuple[Optional[Attempt], str]:
    """Create the attempt and hold its estimated cost against the caps, or neither. The
    router's cap check was a read; the hold is the atomic decision (another job may have
    taken the money in between), so a refusal here sends routing round once more."""
    try:
        with transaction.atomic():
            attempt = Attempt.objects.create(job=job, backend_id=chosen.id, number=number)
            # A cloud attempt always takes a hold, even of $0 (a pod already paid for): its meter
            # grows that hold while it runs, and the first refusal stops it.
            if chosen.cost > 0 or chosen.category == "cloud":
                refusal = caps.hold(attempt=attempt, amount=chosen.cost)
                if refusal:
                    raise _Refused(refusal)
            return attempt, ""
    except _Refused as refused:
        return None, str(refused)


def jobs_admit_waiting(*, limit: int = 500) -> int:
    """Route waiting jobs in fair order until the local queue is full again.

    Order: higher priority first; within a priority, the user with the fewest jobs in
    flight (counting those admitted in this pass) first; then the oldest job. So one user's
    burst of 100 jobs takes turns with another user's single job instead of starving it.
    """
    waiting = list(Job.objects.filter(status=JobStatus.QUEUED, waiting=True)
                   .order_by("-priority", "created_at").values("id", "user_id", "priority", "created_at")[:limit])
    in_flight = in_flight_by_user()
    admitted, passed_over, now = 0, 0, timezone.now()
    while waiting:
        waiting.sort(key=lambda j: admission_order(j, in_flight, now))
        job = waiting.pop(0)
        if job_route(job_id=job["id"]) is None:
            if Job.objects.filter(id=job["id"], status=JobStatus.QUEUED, waiting=True, waiting_for=WAIT_GPU).exists():
                # No room on any GPU that can run it. With room on none at all, later jobs would
                # wait too; with room on a GPU this one cannot use (it lacks the job's models), a
                # later job may fit there, so the look goes on, for a bounded number of jobs.
                passed_over += 1
                if passed_over >= ADMIT_PASS_OVER or not local_room(limit=settings.LOCAL_QUEUE_LIMIT):
                    break
            continue  # routed elsewhere, failed, or still waiting for its own backend to answer
        in_flight[job["user_id"]] = in_flight.get(job["user_id"], 0) + 1
        admitted += 1
    return admitted


ADMIT_PASS_OVER = 20  # waiting jobs passed over in one admission pass before it stops looking


def _no_backend_message(job: Job, summary: str, tried: int) -> str:
    last = job.attempts.order_by("-number").first()
    if last is None:
        return f"No backend can run this job — {summary}"
    gave_up = f" (gave up after {tried} attempts)" if tried >= settings.JOB_MAX_ATTEMPTS else ""
    return f"{_sentence(last.error + gave_up)} No other backend could take the job — {summary}"


def _sentence(text: str) -> str:
    """The text as a sentence that the next can follow: a full stop unless it has its own."""
    text = text.strip()
    return text if not text or text[-1] in ".!?…" else text + "."


# --- submit to the backend ----------------------------------------------------------------
def attempt_submit(*, attempt_id, worker: str = ""):
    """Send the attempt to its backend. True when a poll chain should start; a number: send the
    submit again after that many seconds (a transient error, safe to resend); else False.
    `worker`: the Celery worker doing it, recorded with the backend's GPU (where it ran)."""
    attempt = Attempt.objects.select_related("job", "backend").get(id=attempt_id)
    if attempt.status != AttemptStatus.PENDING:
        return False
    if attempt.job.is_final:
        Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).update(status=AttemptStatus.CANCELLED)
        return False
    # One delivery at a time: a sweeper re-send or a pod dispatch racing this one would submit the
    # same attempt twice (the "already known?" look-up and the send are not atomic; /run is not
    # idempotent at all). A claim older than the lease is a dead worker's: taken over.
    now = timezone.now()
    lease = now - timedelta(seconds=settings.SUBMIT_LEASE_SECONDS)
    # The try is counted in the same update, before the remote call: a second try means a worker
    # died mid-submit, and the client must look for the first one before sending again.
    if not Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).filter(
            Q(polled_at__isnull=True) | Q(polled_at__lt=lease)).update(polled_at=now,
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
                and attempt.poll_errors + 1 < settings.SUBMIT_RETRIES):
            Attempt.objects.filter(id=attempt.id).update(poll_errors=F("poll_errors") + 1)
            _release_submit(attempt)
            return max(0.1, settings.POLL_INTERVAL_SECONDS * 2 ** attempt.poll_errors)  # the same backend, soon
        attempt_fail(attempt_id=attempt.id, error=error.message, retryable=error.retryable, outage=error.outage,
                     lacks=error.lacks, misconfigured=error.misconfigured)
        return False
    now = timezone.now()
    with transaction.atomic():
        lock_job(attempt.job_id)
        updated = Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).update(
            status=AttemptStatus.SUBMITTED, handle=handle, started_at=now, polled_at=now, poll_errors=0,
            call_open=False, worker=worker[:200], gpu=gpu_label(attempt.backend),
        )
        Job.objects.filter(id=attempt.job_id, status=JobStatus.ROUTED).update(
            status=JobStatus.SUBMITTED, started_at=Coalesce(F("started_at"), now))
    return bool(updated)


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
    estimate = caps.first_hold(attempt)
    if caps.record_unmatched(attempt=attempt, key=f"unmatched:{attempt.id}:{key}", amount=estimate, note=why):
        log.warning("attempt %s: %s; recorded $%s as unmatched spend", attempt.id, why, estimate)


def _release_submit(attempt: Attempt) -> None:
    Attempt.objects.filter(id=attempt.id, status=AttemptStatus.PENDING).update(polled_at=None)


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
    }


# --- poll ---------------------------------------------------------------------------------
def attempt_poll(*, attempt_id, seq: int) -> Optional[float]:
    """One poll of a submitted attempt. Returns the countdown for the next poll, or None
    when the chain ends (finished, or this poll was a stale duplicate)."""
    claimed = Attempt.objects.filter(
        id=attempt_id, poll_seq=seq, status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)
    ).update(poll_seq=seq + 1, polled_at=timezone.now())
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
    Attempt.objects.filter(id=attempt.id).update(poll_errors=0)
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
    need = used + cost_at(rate, ahead) - caps.held(attempt)
    if need <= 0:
        return False
    refusal = caps.extend(attempt=attempt, amount=need + cost_at(rate, 4 * ahead))
    while refusal:
        refusal = caps.extend(attempt=attempt, amount=need)
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


def meter_rate(attempt: Attempt) -> Decimal:
    """Price per second of this attempt's remote time: its pod's rate on pods (billing.pods: a
    second the pod executes a job is that job's), else the backend's; 0 = not metered."""
    if attempt.backend.kind == Backend.Kind.POD:
        rate = Attempt.objects.filter(id=attempt.id).values_list("pod_assignment__pod__cost_per_hour", flat=True)
        return pod_price_per_second(rate.first())
    return metered_price(attempt.backend)


def _used_so_far(attempt: Attempt, now) -> Optional[Decimal]:
    """What a metered attempt's remote time has cost until now (None: not metered, or not running)."""
    if attempt.running_at is None:
        return None
    rate = meter_rate(attempt)
    return cost_at(rate, (now - attempt.running_at).total_seconds()) if rate else None


def _stop_metered(attempt: Attempt, running_at, refusal: str) -> None:
    seconds = (timezone.now() - running_at).total_seconds() if running_at else 0.0
    used = cost_at(meter_rate(attempt), seconds)
    # Final: sent again, it would take back the room it just gave (a retry loop against the cap).
    attempt_fail(attempt_id=attempt.id, retryable=False, used=used,
                 error=f"Stopped after {seconds:.0f} s on {attempt.backend.name} (${used:.4f} used): {refusal}")


NOTHING_SAVED = "The job finished but saved no file (its outputs were only previews or latents)"


def _poll_error(attempt: Attempt, error: BackendError) -> Optional[float]:
    Attempt.objects.filter(id=attempt.id).update(poll_errors=F("poll_errors") + 1)
    if not error.retryable or error.misconfigured or attempt.poll_errors + 1 >= MAX_POLL_ERRORS:
        attempt_fail(attempt_id=attempt.id, error=error.message, retryable=error.retryable, outage=error.outage,
                     lacks=error.lacks, misconfigured=error.misconfigured)
        return None
    return settings.POLL_INTERVAL_SECONDS * (attempt.poll_errors + 1)


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
        Attempt.objects.filter(id=attempt.id, status__in=(AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)).update(
            status=AttemptStatus.RUNNING, progress=percent, queue_position=None)
        Job.objects.filter(id=attempt.job_id, status__in=(JobStatus.SUBMITTED, JobStatus.RUNNING)).update(
            status=JobStatus.RUNNING, progress=percent)
        self.running, self.percent, self.position = True, percent, None


def _attempt_ended(attempt: Attempt) -> None:
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


# --- final states -------------------------------------------------------------------------
def lock_job(job_id) -> None:
    """The one lock order on PostgreSQL: a transaction that changes an attempt's state locks its
    job's row first, then attempt rows, then spend counters and ledger (billing.caps). Two paths
    that took job and attempt in opposite orders (a cancel against a completion) deadlocked in
    61 of 70 races (tests/lock_race.py). A no-op on SQLite, whose writers run one at a time."""
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
        updated = Attempt.objects.filter(id=attempt_id, status__in=ACTIVE_ATTEMPT_STATES).update(
            status=AttemptStatus.SUCCEEDED, finished_at=now, progress=100, seconds=done.seconds, error="",
            cost=cost,
        )
        if not updated:
            return False
        if cost or attempt.backend.category != "local":  # a local GPU holds and charges nothing
            caps.charge(attempt=attempt, amount=cost)
        for index, (output, data) in enumerate(files):
            _store_output(attempt, index, output, data)
        Job.objects.filter(id=attempt.job_id, status__in=ACTIVE_JOB_STATES).update(
            status=JobStatus.SUCCEEDED, finished_at=now, progress=100, error="", backend=attempt.backend,
            cost=F("cost") + cost,
        )
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)
        _ended(attempt.job_id, has_webhook=bool(attempt.job.webhook_url))
    # Backend rows are written after the commit: routing locks backends, then spend counters;
    # writing counters, then a backend, in one transaction deadlocks with it on PostgreSQL.
    _learn_time(attempt, done.seconds or (now - (attempt.started_at or now)).total_seconds())
    success_seen(backend_id=attempt.backend_id)
    _attempt_ended(attempt)
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
        updated = Attempt.objects.filter(id=attempt_id, status__in=ACTIVE_ATTEMPT_STATES).update(
            status=AttemptStatus.FAILED, error=error[:4000], retryable=retryable, outage=outage and retryable,
            finished_at=timezone.now(), cost=used or Decimal("0"),
        )
        if not updated:
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
            requeued = Job.objects.filter(id=job.id, status__in=ACTIVE_JOB_STATES).update(
                status=JobStatus.QUEUED, progress=0)
            if requeued:
                dispatch.send_on_commit(dispatch.ROUTE, [str(job.id)], queue=queues.CONTROL, priority=job.priority)
        else:
            job_fail(job, error)
        dispatch.send_on_commit(dispatch.ADMIT, [], queue=queues.CONTROL)
    # Backend rows after the commit (lock order: see attempt_succeed).
    if lacks:
        inventory_forget(backend_id=attempt.backend_id, lacks=lacks)
    if retryable and outage:
        health_record(backend_id=attempt.backend_id, ok=False, detail=error, misconfigured=misconfigured)
    _attempt_ended(attempt)


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
        caps.record_unmatched(attempt=attempt, key=f"unmatched:{attempt.id}:failed-run",
                              amount=metered_cost(attempt.backend, seconds),
                              note=f"ran about {seconds:.0f} s on {attempt.backend.name}, then failed or was given up")


def _settle(attempt: Attempt, used: Optional[Decimal]) -> None:
    """An attempt ended without a result: give its hold back, or charge the remote time it used
    (RunPod bills a cancelled or stopped job for the seconds it ran)."""
    if not used:
        caps.release(attempt=attempt)
        return
    caps.charge(attempt=attempt, amount=used)
    Job.objects.filter(id=attempt.job_id).update(cost=F("cost") + used)


def job_fail(job: Job, error: str) -> None:
    failed = Job.objects.filter(id=job.id, status__in=ACTIVE_JOB_STATES).update(
        status=JobStatus.FAILED, error=error[:4000], finished_at=timezone.now())
    if failed:
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
        updated = Job.objects.filter(id=job_id, user=user, status__in=ACTIVE_JOB_STATES).update(
            status=JobStatus.CANCELLED, finished_at=timezone.now(), error="Cancelled by the user")
        if not updated:
            return False
        _ended(job_id)
        for attempt in Attempt.objects.filter(job_id=job_id, status__in=ACTIVE_ATTEMPT_STATES).select_related("backend"):
            now = timezone.now()
            used = _used_so_far(attempt, now)
            if Attempt.objects.filter(id=attempt.id, status__in=ACTIVE_ATTEMPT_STATES).update(
                    status=AttemptStatus.CANCELLED, finished_at=now, cost=used or Decimal("0")):
                _settle(attempt, used)
            if attempt.handle:
                dispatch.send_on_commit(dispatch.CANCEL, [str(attempt.id)], queue=attempt.backend.queue)
            transaction.on_commit(lambda ended=attempt: _attempt_ended(ended))
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
    caps.record_unmatched(attempt=attempt, key=key, amount=rest,
                          note=f"{attempt.backend.name} reports it ran {seconds:.0f} s, then was cancelled; no job received it")


def job_retry(*, user, job_id) -> Job:
    """A new job with the same request as a finished one."""
    old = Job.objects.get(id=job_id, user=user)
    return job_submit(
        user=user, kind=old.kind, preference=old.preference, prompt=old.prompt,
        negative_prompt=old.negative_prompt, width=old.width, height=old.height, seed=old.seed,
        duration_seconds=old.duration_seconds, workflow=old.workflow, priority=old.priority,
    )
