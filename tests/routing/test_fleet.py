"""Lost-machine detection (routing/fleet.py) with the clock passed in: an unanswered probe is a
lost machine only once none was taken for WORKER_LOST_SECONDS."""
from datetime import timedelta

from django.utils import timezone

from routing import fleet
from routing.models import Attempt, Backend, HealthState, Job


def test_a_machine_is_lost_only_when_no_probe_was_taken_for_the_whole_window(db, settings, alice):
    settings.WORKER_LOST_SECONDS = 60
    Backend.objects.update(enabled=False)  # the defaults: only the joined machine here
    box = Backend.objects.create(name="box-b", kind="comfyui", category="local", url="http://127.0.0.1:9",
                                 health="up")
    job = Job.objects.create(user=alice, prompt="a fox", status="submitted", backend=box)
    attempt = Attempt.objects.create(job=job, backend=box, number=1, status="submitted", handle={"prompt_id": "p"})
    t0 = timezone.now()

    assert (box.id, "local.box-b") in fleet.probes_to_send(now=t0)
    fleet.probes_to_send(now=t0 + timedelta(seconds=59))  # unanswered, but not for a whole window
    box.refresh_from_db()
    assert box.health == HealthState.UP and box.probe_sent_at == t0

    fleet.probe_answered(backend_id=box.id)  # a later probe was taken (the first one lost with Redis)
    fleet.probes_to_send(now=t0 + timedelta(seconds=120))
    box.refresh_from_db()
    assert box.health == HealthState.UP and box.probe_sent_at == t0 + timedelta(seconds=120)

    fleet.probes_to_send(now=t0 + timedelta(seconds=181))  # nothing taken since 120: lost
    box.refresh_from_db()
    assert box.health == HealthState.DOWN and box.last_error.startswith(fleet.LOST)
    attempt.refresh_from_db()
    assert attempt.status == "failed" and attempt.outage and attempt.error.startswith(fleet.LOST)
    assert Job.objects.get(id=job.id).status == "queued"  # routed again, elsewhere

    assert fleet.probes_to_send(now=t0 + timedelta(seconds=200)) == []  # lost: asked once per window
    assert [q for _, q in fleet.probes_to_send(now=t0 + timedelta(seconds=242))] == ["local.box-b"]


def test_joining_again_keeps_an_administrators_disabled_and_refuses_a_name_of_another_kind(db):
    Backend.objects.create(name="box-b", kind="comfyui", category="local", url="http://old:8188", enabled=False)
    joined = fleet.backend_join(name="box-b", url="http://127.0.0.1:8188")
    assert (joined.url, joined.enabled) == ("http://127.0.0.1:8188", False)
    Backend.objects.create(name="endpoint", kind="runpod", category="cloud")
    try:
        fleet.backend_join(name="endpoint", url="http://127.0.0.1:8188")
    except fleet.JoinRefused as refused:
        assert "not a ComfyUI server" in str(refused)
    else:
        raise AssertionError("a RunPod backend's name was taken over by a joining machine")
