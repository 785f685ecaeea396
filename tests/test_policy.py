"""routing.policy.decide: one test per rule, then the design's priority matrix as a table."""
from decimal import Decimal

import pytest

from routing.policy import Candidate, JobFacts, decide

LIMIT = 5


def local(**kw):
    return Candidate(**{"id": 1, "name": "local", "category": "local", "seconds": 30.0, **kw})


def serverless(**kw):
    return Candidate(**{"id": 2, "name": "runpod", "category": "cloud", "cost": Decimal("0.0078"), "seconds": 25.0, **kw})


def pod(**kw):
    return Candidate(**{"id": 3, "name": "pods", "category": "cloud", "cost": Decimal("0.0300"), "seconds": 90.0, **kw})


def gemini(**kw):
    return Candidate(**{"id": 4, "name": "gemini", "category": "gemini", "cost": Decimal("0.039"),
                        "seconds": 12.0, "supports_workflows": False, **kw})


def job(**kw):
    return JobFacts(**{"kind": "image", "preference": "auto", "custom_workflow": False, **kw})


def choose(facts, *candidates):
    return decide(facts, list(candidates), local_queue_limit=LIMIT)


def test_a_disabled_backend_is_never_chosen():
    decision = choose(job(), local(enabled=False), serverless())
    assert decision.backend_id == 2 and decision.reasons["local"] == "disabled by the administrator"


def test_a_backend_without_its_settings_is_not_configured():
    decision = choose(job(), serverless(configured=False, missing="RUNPOD_API_KEY not set"), gemini())
    assert decision.backend_id == 4
    assert decision.reasons["runpod"] == "not configured (RUNPOD_API_KEY not set)"


def test_a_down_backend_is_skipped_with_its_detail():
    decision = choose(job(), local(health="down", health_detail="since 10:42 UTC"), serverless())
    assert decision.backend_id == 2 and decision.reasons["local"] == "offline — since 10:42 UTC"


def test_a_custom_workflow_never_goes_to_gemini():
    decision = choose(job(custom_workflow=True), gemini())
    assert decision.backend_id is None
    assert decision.reasons["gemini"] == "cannot run custom ComfyUI workflows"


def test_video_goes_only_where_video_is_supported():
    decision = choose(job(kind="video"), local(supports_video=False), gemini())
    assert decision.backend_id == 4 and decision.reasons["local"] == "does not make videos"


def test_a_backend_past_the_users_cap_is_skipped_with_the_caps_reason():
    decision = choose(job(), serverless(cap_refusal="daily cap $5.00 reached"), gemini())
    assert decision.backend_id == 4 and decision.reasons["runpod"] == "daily cap $5.00 reached"


def test_a_backend_that_failed_this_job_is_tried_again_when_nothing_else_can_run_it():
    decision = choose(job(preference="local", excluded=frozenset({1})), local(), serverless())
    assert decision.backend_id == 1 and "trying again" in decision.reason


def test_a_backend_that_failed_this_job_is_not_retried_while_it_is_down():
    decision = choose(job(preference="local", excluded=frozenset({1})), local(health="down"), serverless())
    assert decision.backend_id is None


def test_a_backend_that_already_failed_this_job_is_excluded():
    decision = choose(job(excluded=frozenset({1})), local(), serverless())
    assert decision.backend_id == 2 and decision.reasons["local"] == "already failed this job"


def test_local_wins_when_its_queue_is_below_the_limit():
    decision = choose(job(), local(queue=4), serverless(cost=Decimal("0")))
    assert decision.backend_id == 1 and "costs nothing" in decision.reason


def test_a_full_local_queue_sends_the_job_to_the_cheapest_paid_option():
    decision = choose(job(), local(queue=5), pod(), serverless(), gemini())
    assert decision.backend_id == 2
    assert "local queue full (5 of 5)" in decision.reason


def test_an_idle_running_pod_costs_nothing_extra_and_wins_over_serverless():
    decision = choose(job(), local(health="down"), pod(cost=Decimal("0")), serverless())
    assert decision.backend_id == 3


def test_gemini_wins_when_it_is_cheaper_than_the_cloud():
    decision = choose(job(), serverless(cost=Decimal("0.05")), gemini(cost=Decimal("0.039")))
    assert decision.backend_id == 4


def test_equal_costs_go_to_the_faster_backend():
    decision = choose(job(), serverless(cost=Decimal("0.04"), seconds=40), gemini(cost=Decimal("0.04"), seconds=12))
    assert decision.backend_id == 4


def test_a_healthy_backend_is_preferred_to_an_unknown_one_at_equal_cost_and_time():
    decision = choose(job(), serverless(health="unknown", seconds=12, cost=Decimal("0.039")), gemini())
    assert decision.backend_id == 4


def test_a_forced_preference_uses_only_that_category():
    decision = choose(job(preference="gemini"), local(), serverless(), gemini())
    assert decision.backend_id == 4
    assert decision.reasons["local"] == "not used: you chose gemini only"


def test_a_forced_preference_whose_backend_is_down_fails_with_the_reason():
    decision = choose(job(preference="local"), local(health="down", health_detail="since 10:42 UTC"), gemini())
    assert decision.backend_id is None and not decision.wait
    assert "local: offline — since 10:42 UTC" in decision.summary


def test_the_job_waits_when_only_a_full_local_queue_can_run_it():
    decision = choose(job(custom_workflow=True), local(queue=7), gemini())
    assert decision.backend_id is None and decision.wait
    assert "queue is full (7 of 5)" in decision.reason


def test_nothing_left_gives_one_reason_per_backend():
    decision = choose(job(), local(health="down"), serverless(configured=False), gemini(enabled=False))
    assert decision.backend_id is None and not decision.wait
    assert decision.summary == "local: offline; runpod: not configured; gemini: disabled by the administrator"


def test_no_backend_at_all_says_so():
    assert choose(job()).summary == "(none): no backend is set up"


# The design's priority matrix: local state × cloud price vs Gemini → where the job goes.
@pytest.mark.parametrize("case, local_kw, cloud_cost, gemini_kw, expected", [
    ("local idle", {"queue": 0}, "0.0078", {}, "local"),
    ("local small queue", {"queue": 3}, "0.0078", {}, "local"),
    ("local long queue", {"queue": 9}, "0.0078", {}, "runpod"),
    ("local down", {"health": "down"}, "0.0078", {}, "runpod"),
    ("cloud dearer than gemini", {"health": "down"}, "0.0600", {}, "gemini"),
    ("all down", {"health": "down"}, None, {"health": "down"}, None),
])
def test_the_priority_matrix(case, local_kw, cloud_cost, gemini_kw, expected):
    candidates = [local(**local_kw), gemini(**gemini_kw)]
    candidates.append(serverless(cost=Decimal(cloud_cost)) if cloud_cost else serverless(health="down"))
    decision = choose(job(), *candidates)
    chosen = next((c.name for c in candidates if c.id == decision.backend_id), None)
    assert chosen == expected, f"{case}: {decision.reasons}"
