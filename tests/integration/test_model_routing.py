"""Jobs go where their models are, and outages make them wait: real Redis, real Celery workers,
the fake ComfyUI (validating like ComfyUI 0.8.0) and the fake RunPod.

This process plays beat: it runs the health probes (which read the inventory) and the
sweeper itself, on every tick of its wait loop.
"""
import time

import pytest

from routing import maintenance, services
from routing.models import Backend, HealthState, Job, JobStatus
from tests.conftest import configure, wait_for
from tests.fakes.runpod import FakeRunPod
from workers.pods import autoscale as pod_autoscale

pytestmark = pytest.mark.integration

FAST = {"COMFYUI_POLL_INTERVAL": 0.1, "COMFYUI_WATCH_SECONDS": 1.0, "POLL_INTERVAL_SECONDS": 0.2}


@pytest.fixture
def local(settings, workers, local_backend, fake_comfyui):
    configure(settings, workers, **FAST)
    Backend.objects.filter(id=local_backend.id).update(url=fake_comfyui.url)
    probe("local")
    return fake_comfyui


def probe(name: str) -> Backend:
    maintenance.backend_probe(backend_id=Backend.objects.get(name=name).id)
    return Backend.objects.get(name=name)


def play_beat_until(condition, timeout: float, message: str, *, pods: bool = False):
    def tick():
        for backend in Backend.objects.filter(kind="comfyui"):
            maintenance.backend_probe(backend_id=backend.id)
        maintenance.sweep()
        if pods:
            pod_autoscale.autoscale()
        return condition()

    return wait_for(tick, timeout, 0.3, message)


def submit(user, count=1, **fields):
    options = {"kind": "image", "preference": "auto", "prompt": "a lighthouse", **fields}
    return [services.job_submit(user=user, seed=i, **options) for i in range(count)]


def finished(jobs):
    rows = [Job.objects.get(id=job.id) for job in jobs]
    return rows if all(row.is_final for row in rows) else None


def test_a_video_job_that_local_lacks_runs_on_a_pod_and_local_stays_up(settings, workers, local, alice):
    local.models = {**local.models, "diffusion_models": []}  # an SD-only install, read as such
    Backend.objects.filter(name="local").update(inventory={}, inventory_at=None)
    probe("local")
    with FakeRunPod(pod_start_delay=0.3, queue_delay=0.1, run_delay=0.2) as runpod:
        configure(settings, workers, RUNPOD_API_KEY="test-key", RUNPOD_API_BASE_URL=runpod.url,
                  RUNPOD_POD_URL_TEMPLATE=runpod.pod_url_template, RUNPOD_POD_IMAGE="comfy-hybrid-worker:test",
                  RUNPOD_MAX_PODS=1)
        workers.start(concurrency=3)
        [job] = submit(alice, kind="video", duration_seconds=1, width=256, height=256)

        [job] = play_beat_until(lambda: finished([job]), 90, "the video job to finish", pods=True)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.backend.name == "pods" and job.attempts.count() == 1, [(a.backend.name, a.status, a.error) for a in job.attempts.all()]
    assert job.decision["local"].startswith("lacks diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors")
    assert job.outputs.get().mime == "video/mp4"
    local_row = Backend.objects.get(name="local")
    assert local_row.health == HealthState.UP and local_row.consecutive_failures == 0
    pods = Backend.objects.get(name="pods")
    assert "wan2.1_t2v_1.3B_fp16.safetensors" in pods.inventory["models"]["diffusion_models"]


def test_a_missing_model_never_changes_a_backends_health(settings, workers, local, alice, bob):
    # The inventory says the VAE is there; then it is deleted: ComfyUI's answer corrects it.
    first_read = Backend.objects.get(name="local").inventory_at
    local.models = {**local.models, "vae": []}
    workers.start(queues="control,local", concurrency=2)
    videos = submit(alice, 3, kind="video", duration_seconds=1, width=256, height=256, preference="local")

    videos = wait_for(lambda: finished(videos), 60, 0.2, "the video jobs to end")
    [image] = submit(bob)
    [image] = wait_for(lambda: finished([image]), 60, 0.2, "bob's image job")  # nobody else is affected

    assert [job.status for job in videos] == [JobStatus.FAILED] * 3
    assert all("local: lacks vae/wan_2.1_vae.safetensors" in job.error for job in videos), videos[-1].error
    assert [job.attempts.count() for job in videos] == [1, 1, 1]  # never sent to local again once it said so
    assert image.status == JobStatus.SUCCEEDED, image.error
    row = Backend.objects.get(name="local")
    assert row.health == HealthState.UP and row.consecutive_failures == 0 and not row.last_error
    assert row.inventory["models"]["vae"] == [] and row.inventory_at != first_read  # corrected, then read again


def test_forty_queued_jobs_all_succeed_across_a_ten_second_comfyui_outage(settings, workers, local, alice, bob):
    configure(settings, workers, LOCAL_QUEUE_LIMIT=5, SWEEP_AFTER_SECONDS=5)
    local.step_delay, local.steps = 0.05, 4
    workers.start(queues="control,local", concurrency=3)
    jobs = submit(alice, 20, preference="local") + submit(bob, 20)
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).exists(), 60, 0.1, "the first job to finish")

    local.stop()  # ComfyUI restarts: its queue and history are lost, nothing answers for 10 s
    outage = time.monotonic() + 10
    play_beat_until(lambda: time.monotonic() > outage, 30, "the outage to last 10 s")
    local.start()

    jobs = play_beat_until(lambda: finished(jobs), 240, "all 40 jobs to finish")
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 40, [job.error for job in jobs if job.error][:3]
    assert all(job.outputs.count() == 1 for job in jobs)
    lost = [a for job in jobs for a in job.attempts.all() if a.status == "failed"]
    assert all(a.outage for a in lost)  # only the outage cost attempts, never a job
    assert all(job.failovers == 0 and job.retries == job.attempts.count() - 1 for job in jobs)
    assert Backend.objects.get(name="local").health == HealthState.UP
    assert not Job.objects.filter(waiting=True).exists()
