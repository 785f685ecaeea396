"""Writes: a job from submission to its first attempt: rate limit, the job row, routing
(where it is submitted, else by the control worker), admission of waiting jobs in fair order,
and a job run again. The attempt on its backend is in remote.py, its end in outcomes.py; their
entry points are imported here, so that tasks and other services call "the job services" alone.

Every state change is a conditional update whose row count is checked, so a task that Celery
delivers twice (or a sweeper re-send racing the original) changes nothing the second time.
"""
import logging
from datetime import timedelta
from typing import Optional

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import caps, ledger
from project import queues

from . import dispatch
from .models import Attempt, Job, JobStatus, Preference, Priority
from .outcomes import attempt_cancel_remote, attempt_fail, attempt_succeed, job_cancel, job_fail, lock_job
from .policy import WAIT_GPU, decide
from .remote import attempt_poll, attempt_submit, job_spec
from .selectors import admission_order, attempts_made, candidates_for, in_flight_by_user, job_facts, local_room, locked_backends
from .transitions import job_move

log = logging.getLogger(__name__)

# The job services: what tasks, the pages, the API and the other services call.
__all__ = ["RateLimited", "submission_check", "job_submit", "route_now", "preference_set", "job_route",
           "jobs_admit_waiting", "job_retry", "attempt_submit", "attempt_poll", "job_spec", "attempt_succeed",
           "attempt_fail", "attempt_cancel_remote", "job_cancel", "job_fail", "lock_job"]

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
        job = Job.objects.select_for_update().annotate(tried=attempts_made()).get(id=job_id)
        if job.status != JobStatus.QUEUED:
            return None
        tried = job.tried
        refused, backends = {}, locked_backends()
        budget = caps.Budget.lazy(job.user_id)  # the caps, read once per decision, and only for a priced candidate
        for _ in range(MAX_HOLD_TRIES):
            candidates = candidates_for(job, refused, backends, budget)
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
            backend = next(b for b in backends if b.id == chosen.id)  # read once, above
            attempt, refused[chosen.id] = _place(job, chosen, backend, tried + 1, budget)
            if attempt:
                break
        else:
            job_fail(job, _no_backend_message(job, decision.summary, tried))
            return None
        job_move(job.id, to=JobStatus.ROUTED, backend=attempt.backend, reason=decision.reason,
                 decision=decision.reasons, waiting=False, waiting_for="", waiting_since=None, **_moved(job, attempt))
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


def _place(job: Job, chosen, backend, number: int, budget) -> tuple[Optional[Attempt], str]:
    """Create the attempt and hold its estimated cost against the caps, or neither. The
    router's cap check was a read; the hold is the atomic decision (another job may have
    taken the money in between), so a refusal here sends routing round once more."""
    # A cloud attempt always takes a hold, even of $0 (a pod already paid for): its meter
    # grows that hold while it runs, and the first refusal stops it. A free one takes none,
    # and needs no savepoint.
    if not (chosen.cost > 0 or chosen.category == "cloud"):
        return Attempt.objects.create(job=job, backend=backend, number=number), ""
    try:
        with transaction.atomic():
            attempt = Attempt.objects.create(job=job, backend=backend, number=number)
            refusal = ledger.hold(attempt=attempt, amount=chosen.cost, budget=budget.read())
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


def job_retry(*, user, job_id) -> Job:
    """A new job with the same request as a finished one."""
    old = Job.objects.get(id=job_id, user=user)
    return job_submit(
        user=user, kind=old.kind, preference=old.preference, prompt=old.prompt,
        negative_prompt=old.negative_prompt, width=old.width, height=old.height, seed=old.seed,
        duration_seconds=old.duration_seconds, workflow=old.workflow, priority=old.priority,
    )
