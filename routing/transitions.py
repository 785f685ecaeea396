"""The allowed moves of Job.status and Attempt.status, declared once, and the one conditional
update that makes each move.

Every state change is `filter(id=..., status__in=<sources>).update(status=<target>, ...)`: a
task that Celery delivers twice finds the row already moved and changes nothing (the row count
says so). For each target state the table lists the states it may come from; a final state has
no way out. A call site may narrow the sources (`frm=`), never widen them: a source the table
does not allow is a programming error, raised at the call.
"""
from collections.abc import Iterable
from typing import Optional

from django.db import models

from .models import ACTIVE_ATTEMPT_STATES, ACTIVE_JOB_STATES, Attempt, AttemptStatus, Job, JobStatus

# target: the states it may come from. RUNNING comes from itself too: each poll that hears the
# percent move writes it with the status.
JOB_MOVES = {
    JobStatus.QUEUED: ACTIVE_JOB_STATES,  # its attempt failed where another backend may run it: route again
    JobStatus.ROUTED: (JobStatus.QUEUED,),  # a backend chosen, its attempt created
    JobStatus.SUBMITTED: (JobStatus.ROUTED,),  # the backend took the attempt
    JobStatus.RUNNING: (JobStatus.SUBMITTED, JobStatus.RUNNING),  # the backend reports it running
    JobStatus.SUCCEEDED: ACTIVE_JOB_STATES,
    JobStatus.FAILED: ACTIVE_JOB_STATES,
    JobStatus.CANCELLED: ACTIVE_JOB_STATES,  # by its user
}
ATTEMPT_MOVES = {
    AttemptStatus.PENDING: (),  # created so; never moved back
    AttemptStatus.SUBMITTED: (AttemptStatus.PENDING,),
    AttemptStatus.RUNNING: (AttemptStatus.SUBMITTED, AttemptStatus.RUNNING),
    AttemptStatus.SUCCEEDED: ACTIVE_ATTEMPT_STATES,
    AttemptStatus.FAILED: ACTIVE_ATTEMPT_STATES,
    AttemptStatus.CANCELLED: ACTIVE_ATTEMPT_STATES,  # its job cancelled or ended before it was sent
}
MOVES = {Job: JOB_MOVES, Attempt: ATTEMPT_MOVES}


def sources(model: type[models.Model], to: str, frm: Optional[Iterable[str]] = None) -> tuple:
    """The states a move to `to` may start from: the table's, or the caller's narrower `frm`."""
    allowed = MOVES[model][to]
    if frm is None:
        return allowed
    frm = tuple(frm)
    refused = [state for state in frm if state not in allowed]
    if refused:
        raise ValueError(f"{model.__name__} may not move from {refused} to {to!r} (allowed: {allowed})")
    return frm


def move(model: type[models.Model], row_id, *, to: str, frm: Optional[Iterable[str]] = None,
         where: Optional[dict] = None, **fields) -> bool:
    """Move one row to `to` if it is in one of the allowed sources (and matches `where`), writing
    `fields` with it. True when this call moved it; False when it had moved already (a duplicate
    delivery) or never could."""
    allowed = sources(model, to, frm)
    return model.objects.filter(id=row_id, status__in=allowed, **(where or {})).update(status=to, **fields) == 1


def job_move(job_id, *, to: str, frm: Optional[Iterable[str]] = None, where: Optional[dict] = None,
             **fields) -> bool:
    return move(Job, job_id, to=to, frm=frm, where=where, **fields)


def attempt_move(attempt_id, *, to: str, frm: Optional[Iterable[str]] = None, where: Optional[dict] = None,
                 **fields) -> bool:
    return move(Attempt, attempt_id, to=to, frm=frm, where=where, **fields)
