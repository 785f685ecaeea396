"""routing.policy.decide: one test per rule, then the design's priority matrix as a table."""
from decimal import Decimal

import pytest

from routing.policy import WAIT_GPU, WAIT_OUTAGE, Candidate, JobFacts, decide
from workers.workflows.requirements import Inventory, Requirements

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


def test_a_forced_preference_whose_backend_is_down_waits_for_it_with_the_reason():
    decision = choose(job(preference="local"), local(health="down", health_detail="since 10:42 UTC"), gemini())
    assert decision.backend_id is None and decision.wait and decision.waiting_for == WAIT_OUTAGE
    assert decision.reason == "Waiting for local to answer again: local offline — since 10:42 UTC"
    assert "gemini: not used: you chose local only" in decision.summary


def test_the_job_waits_when_only_a_full_local_queue_can_run_it():
    decision = choose(job(custom_workflow=True), local(queue=7), gemini())
    assert decision.backend_id is None and decision.wait and decision.waiting_for == WAIT_GPU
    assert "queue is full (7 of 5)" in decision.reason


def gpu(number, seconds, queue=0, **kw):
    """One local GPU of a fleet, by its learned run time."""
    return Candidate(**{"id": 10 + number, "name": f"gpu{number}", "category": "local", "seconds": seconds,
                        "queue": queue, **kw})


def test_among_local_gpus_the_one_that_finishes_the_job_first_wins():
    decision = choose(job(), gpu(1, 10.0, queue=1), gpu(2, 30.0))  # done in 20 s there, in 30 s here
    assert decision.backend_id == 11 and "finishes it first among the local GPUs" in decision.reason
    assert decision.reasons["gpu2"] == "usable, but would finish later (queue 0, done in about 30s)"


def test_a_slower_gpu_queues_no_more_work_than_the_limit_takes_on_the_fastest():
    # The fastest takes 5 jobs of 10 s: 50 s. A GPU at 30 s a job has room while it holds less.
    assert choose(job(), gpu(1, 10.0, queue=5), gpu(2, 30.0, queue=1)).backend_id == 12  # 30 s queued
    decision = choose(job(), gpu(1, 10.0, queue=4), gpu(2, 30.0, queue=2))  # 60 s queued there
    assert decision.backend_id == 11
    assert decision.reasons["gpu2"] == ("usable, but its queue holds about 60s of work, as much as 5 jobs take on "
                                        "the fastest GPU")


def test_a_fleet_whose_gpus_all_hold_their_share_of_work_makes_the_job_wait():
    decision = choose(job(), gpu(1, 10.0, queue=5), gpu(2, 30.0, queue=2))
    assert decision.backend_id is None and decision.wait and decision.waiting_for == WAIT_GPU
    assert "every local GPU's queue is full (the shortest 2 of 5" in decision.reason


def test_a_fleet_whose_gpus_all_hold_their_share_sends_an_auto_job_to_the_cloud():
    assert choose(job(), gpu(1, 10.0, queue=5), gpu(2, 30.0, queue=2), serverless()).backend_id == 2


def test_a_gpu_always_has_room_for_the_job_it_runs_and_the_next_however_slow_it_is():
    assert choose(job(), gpu(1, 1.0, queue=5), gpu(2, 100.0)).backend_id == 12
    assert choose(job(), gpu(1, 1.0, queue=5), gpu(2, 100.0, queue=1)).backend_id == 12
    assert choose(job(), gpu(1, 1.0, queue=5), gpu(2, 100.0, queue=2)).wait


def test_gpus_of_one_speed_keep_the_plain_queue_limit():
    assert choose(job(), gpu(1, 10.0, queue=5), gpu(2, 10.0, queue=4)).backend_id == 12
    assert choose(job(), gpu(1, 10.0, queue=5), gpu(2, 10.0, queue=5)).wait


def test_a_gpu_with_no_learned_time_is_held_to_the_plain_limit():
    assert choose(job(), gpu(1, 0.0, queue=4), gpu(2, 0.0, queue=5)).backend_id == 11


def test_nothing_left_gives_one_reason_per_backend():
    decision = choose(job(), local(enabled=False), serverless(configured=False), gemini(cap_refusal="daily cap"))
    assert decision.backend_id is None and not decision.wait
    assert decision.summary == "local: disabled by the administrator; runpod: not configured; gemini: daily cap"


VIDEO = Requirements(models=frozenset({("diffusion_models", "wan.safetensors"), ("vae", "wan_vae.safetensors")}),
                     nodes=frozenset({"UNETLoader", "VAELoader", "SaveVideo"}))
HAS_ALL = Inventory(models={"diffusion_models": frozenset({"wan.safetensors"}), "vae": frozenset({"wan_vae.safetensors"})},
                    nodes=frozenset({"UNETLoader", "VAELoader", "SaveVideo"}))
NO_WAN = Inventory(models={"vae": frozenset({"wan_vae.safetensors"})}, nodes=HAS_ALL.nodes)


def test_a_backend_that_lacks_a_model_is_refused_with_what_it_lacks_and_how_to_get_it():
    decision = choose(job(kind="video", requires=VIDEO), local(inventory=NO_WAN, install_hint="use the Local GPU page"),
                      pod(inventory=HAS_ALL))
    assert decision.backend_id == 3
    assert decision.reasons["local"] == "lacks diffusion_models/wan.safetensors — use the Local GPU page"


def test_a_backend_that_lacks_a_node_class_is_refused():
    decision = choose(job(requires=VIDEO), local(inventory=Inventory(models=HAS_ALL.models, nodes=frozenset())))
    assert decision.backend_id is None and not decision.wait
    assert decision.reasons["local"] == "lacks node SaveVideo, node UNETLoader, node VAELoader"


def test_when_no_backend_has_the_models_the_job_fails_at_once_saying_what_is_missing_where():
    decision = choose(job(kind="video", requires=VIDEO), local(inventory=NO_WAN),
                      pod(inventory=Inventory(models={}, nodes=None)), gemini(supports_video=False))
    assert decision.backend_id is None and not decision.wait
    assert "local: lacks diffusion_models/wan.safetensors" in decision.summary
    assert "pods: lacks diffusion_models/wan.safetensors, vae/wan_vae.safetensors" in decision.summary


def test_an_unknown_inventory_refuses_nothing():
    decision = choose(job(kind="video", requires=VIDEO), local(inventory=None))
    assert decision.backend_id == 1


def test_a_stale_inventory_the_backend_corrected_sends_the_job_elsewhere():
    # The backend said "not in list" for a model its inventory listed: the caller excludes it
    # for this job and takes the file out of its inventory; the job moves on.
    decision = choose(job(requires=VIDEO, excluded=frozenset({1})), local(inventory=NO_WAN), pod(inventory=HAS_ALL))
    assert decision.backend_id == 3 and decision.reasons["local"] == "lacks diffusion_models/wan.safetensors"
    unrelated = choose(job(requires=VIDEO, excluded=frozenset({1})), local(inventory=HAS_ALL), pod(inventory=HAS_ALL))
    assert unrelated.reasons["local"] == "already failed this job"  # what it lacks comes first, if anything


def test_a_job_that_only_a_down_backend_could_run_waits_instead_of_failing():
    decision = choose(job(), local(health="down"), serverless(configured=False), gemini(enabled=False))
    assert decision.backend_id is None and decision.wait and decision.waiting_for == WAIT_OUTAGE
    assert decision.reasons == {"local": "offline", "runpod": "not configured",
                                "gemini": "disabled by the administrator"}


def test_a_backend_that_lost_the_job_in_an_outage_is_waited_for_until_it_answers():
    decision = choose(job(lost=frozenset({1})), local(), gemini(configured=False))
    assert decision.wait and decision.waiting_for == WAIT_OUTAGE
    assert decision.reasons["local"] == "lost this job's last attempt in an outage and has not answered since"
    assert choose(job(lost=frozenset()), local(), gemini(configured=False)).backend_id == 1  # it answered since


def test_an_outage_moves_the_job_to_another_backend_when_one_can_run_it():
    decision = choose(job(lost=frozenset({1})), local(), serverless())
    assert decision.backend_id == 2


def test_a_down_backend_that_lacks_the_model_is_no_reason_to_wait():
    decision = choose(job(requires=VIDEO), local(health="down", inventory=NO_WAN))
    assert decision.backend_id is None and not decision.wait


def test_no_backend_at_all_says_so():
    assert choose(job()).summary == "(none): no backend is set up"


# The design's priority matrix: local state × cloud price vs Gemini → where the job goes.
@pytest.mark.parametrize("case, local_kw, cloud_cost, gemini_kw, expected", [
    ("local idle", {"queue": 0}, "0.0078", {}, "local"),
    ("local small queue", {"queue": 3}, "0.0078", {}, "local"),
    ("local long queue", {"queue": 9}, "0.0078", {}, "runpod"),
    ("local down", {"health": "down"}, "0.0078", {}, "runpod"),
    ("cloud dearer than gemini", {"health": "down"}, "0.0600", {}, "gemini"),
    ("all down: waits", {"health": "down"}, None, {"health": "down"}, None),
])
def test_the_priority_matrix(case, local_kw, cloud_cost, gemini_kw, expected):
    candidates = [local(**local_kw), gemini(**gemini_kw)]
    candidates.append(serverless(cost=Decimal(cloud_cost)) if cloud_cost else serverless(health="down"))
    decision = choose(job(), *candidates)
    chosen = next((c.name for c in candidates if c.id == decision.backend_id), None)
    assert chosen == expected, f"{case}: {decision.reasons}"
