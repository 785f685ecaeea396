"""The table of Job and Attempt moves (routing/transitions.py) and the one update that makes them."""
import pytest

from routing.models import FINAL_JOB_STATES, Attempt, AttemptStatus, Job, JobStatus
from routing.transitions import ATTEMPT_MOVES, JOB_MOVES, attempt_move, job_move

FINAL_ATTEMPT_STATES = (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CANCELLED)
TABLES = [(JOB_MOVES, JobStatus, FINAL_JOB_STATES), (ATTEMPT_MOVES, AttemptStatus, FINAL_ATTEMPT_STATES)]


@pytest.mark.parametrize("moves, states, final", TABLES)
def test_every_state_is_a_target_and_every_source_a_state(moves, states, final):
    assert set(moves) == set(states)
    assert {source for sources in moves.values() for source in sources} <= set(states)


@pytest.mark.parametrize("moves, states, final", TABLES)
def test_a_final_state_has_no_way_out(moves, states, final):
    assert not [(source, target) for target, sources in moves.items() for source in sources if source in final]


@pytest.mark.parametrize("moves, states, final", TABLES)
def test_every_state_that_is_not_final_leads_somewhere(moves, states, final):
    leaving = {source for sources in moves.values() for source in sources}
    assert leaving == set(states) - set(final)


def _job(user, status=JobStatus.QUEUED):
    return Job.objects.create(user=user, prompt="a bridge", status=status)


@pytest.mark.django_db
def test_an_allowed_move_happens_once(alice):
    job = _job(alice)
    assert job_move(job.id, to=JobStatus.ROUTED, reason="cheapest")
    assert not job_move(job.id, to=JobStatus.ROUTED, reason="again")  # a duplicate delivery
    job.refresh_from_db()
    assert job.status == JobStatus.ROUTED and job.reason == "cheapest"


@pytest.mark.django_db
def test_a_refused_move_changes_nothing_and_says_so(alice):
    job = _job(alice, status=JobStatus.SUCCEEDED)
    assert not job_move(job.id, to=JobStatus.FAILED, error="too late")
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.error == ""


@pytest.mark.django_db
def test_a_source_the_table_does_not_allow_is_an_error_at_the_call(alice, local_backend):
    attempt = Attempt.objects.create(job=_job(alice), backend=local_backend, number=1,
                                     status=AttemptStatus.RUNNING)
    with pytest.raises(ValueError):
        attempt_move(attempt.id, to=AttemptStatus.SUBMITTED, frm=(AttemptStatus.RUNNING,))
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.RUNNING


@pytest.mark.django_db
def test_a_narrower_source_is_kept(alice, local_backend):
    attempt = Attempt.objects.create(job=_job(alice), backend=local_backend, number=1,
                                     status=AttemptStatus.SUBMITTED)
    assert not attempt_move(attempt.id, to=AttemptStatus.CANCELLED, frm=(AttemptStatus.PENDING,))
    assert Attempt.objects.get(id=attempt.id).status == AttemptStatus.SUBMITTED


@pytest.mark.django_db
def test_an_extra_filter_must_match_too(alice, bob):
    job = _job(alice)
    assert not job_move(job.id, to=JobStatus.CANCELLED, where={"user": bob})
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED
    assert job_move(job.id, to=JobStatus.CANCELLED, where={"user": alice})
