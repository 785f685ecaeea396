"""Watching a job run, with real workers and the fake ComfyUI (issue 17): "running" the moment
ComfyUI starts a prompt, the queue position at every step of a 3-job queue, and the live preview
kept while the sampler runs and dropped when it ends.

The fake's `step_budget` holds a sampler mid-run on cue, so each step is a state to wait for,
not a moment to catch. The watch window (60 s) and the pending poll interval (30 s) are set far
beyond the waits: only reporting "running" at once, and polling the queue when a prompt ends,
can pass."""
import pytest

from routing import previews, selectors, services
from routing.models import Attempt, Job
from tests.conftest import configure, wait_for

pytestmark = pytest.mark.integration

WAIT = 15  # seconds: far below the 60 s watch and the 30 s poll interval


@pytest.fixture
def held_gpu(workers, fake_comfyui, local_backend, settings):
    configure(settings, workers, COMFYUI_WATCH_SECONDS=60, COMFYUI_POLL_INTERVAL=30, LOCAL_QUEUE_LIMIT=5,
              PREVIEW_EVERY_SECONDS=0)
    local_backend.url = fake_comfyui.url
    local_backend.save()
    fake_comfyui.steps, fake_comfyui.step_delay, fake_comfyui.step_budget = 3, 0.01, 0
    fake_comfyui.preview_method = "auto"
    workers.start(concurrency=4)
    yield fake_comfyui
    fake_comfyui.step_budget, fake_comfyui.preview_method = None, None


def _attempt(job):
    return Attempt.objects.filter(job=job).order_by("-number").first()


def _state(jobs):
    """(status, jobs ahead) of each job, as the job page and the API show them."""
    rows = [Job.objects.get(id=job.id) for job in jobs]
    return [(row.status, (selectors.queue_position(row) or {}).get("ahead")) for row in rows]


def _until(jobs, expected, message):
    try:
        return wait_for(lambda: _state(jobs) == expected, WAIT, 0.1, f"{message}: {expected}")
    except AssertionError as timed_out:  # the state when it timed out, not when the wait began
        raise AssertionError(f"{timed_out}, now {_state(jobs)}") from None


def test_a_three_job_queue_shows_running_and_positions_at_every_step(held_gpu, alice, client):
    submit = lambda n: services.job_submit(user=alice, kind="image", preference="local", prompt=f"castle {n}", seed=n)
    a = submit(1)
    _until([a], [("running", None)], "the first job to run (held before its first step)")
    b, c = submit(2), submit(3)
    _until([a, b, c], [("running", None), ("submitted", 1), ("submitted", 2)], "the queue behind it")
    client.force_login(alice)
    api = client.get(f"/api/jobs/{c.id}").json()
    assert api["queue_position"] == {"ahead": 2, "backend": "local"} and api["eta_seconds"] > 0

    held_gpu.step_budget = 1  # one step of the first job: a preview is made and kept
    wait_for(lambda: previews.version(_attempt(a).id), WAIT, 0.1, "the first preview to be kept")
    page = client.get(f"/jobs/{a.id}/live/").content.decode()
    assert 'class="live-preview"' in page
    image = client.get(f"/jobs/{a.id}/preview/")
    assert image.status_code == 200 and image["Content-Type"] == "image/png" and image.content.startswith(b"\x89PNG")
    assert client.get(f"/api/jobs/{a.id}").json()["preview_url"].startswith("http://testserver/api/jobs/")

    held_gpu.step_budget = 2  # the first job finishes; the second starts and is held
    _until([a, b, c], [("succeeded", None), ("running", None), ("submitted", 1)], "the queue to move up")
    assert previews.latest(_attempt(a).id) is None  # the finished job's preview is gone
    assert client.get(f"/jobs/{a.id}/preview/").status_code == 404
    assert 'class="live-preview"' not in client.get(f"/jobs/{a.id}/live/").content.decode()
    assert client.get(f"/api/jobs/{a.id}").json()["preview_url"] is None

    held_gpu.step_budget = 3
    _until([a, b, c], [("succeeded", None), ("succeeded", None), ("running", None)], "the last job to run")
    held_gpu.step_budget = None
    _until([a, b, c], [("succeeded", None)] * 3, "every job to end")
    assert all(previews.version(_attempt(job).id) is None for job in (a, b, c))
