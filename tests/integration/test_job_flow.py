"""A job from the web form through real Redis and real Celery workers to a ComfyUI and back."""
import pytest

from routing.models import Job, JobStatus
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _final(job_id, timeout=60):
    def check():
        job = Job.objects.get(id=job_id)
        return job if job.is_final else None

    return wait_for(check, timeout, 0.1, f"job {job_id} to finish")


def _submit(client, **fields):
    data = {"kind": "image", "preference": "auto", "prompt": "a lighthouse at dusk", "width": 512,
            "height": 512, "seed": 7, "duration_seconds": ""}
    data.update(fields)
    response = client.post("/submit/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return Job.objects.latest("created_at")


def test_a_prompt_job_from_the_form_succeeds_with_its_output_stored(
        workers, fake_comfyui, local_backend, alice_client, client, bob):
    local_backend.url = fake_comfyui.url
    local_backend.save()
    workers.start()

    job = _final(_submit(alice_client).id)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.progress == 100 and job.backend == local_backend
    output = job.outputs.get()
    body = b"".join(alice_client.get(f"/outputs/{output.id}/").streaming_content)
    assert body.startswith(b"\x89PNG") and len(body) == output.size
    assert [a.status for a in job.attempts.all()] == ["succeeded"]
    client.force_login(bob)
    assert client.get(f"/outputs/{output.id}/").status_code == 404
    assert client.get(f"/jobs/{job.id}/").status_code == 404


def test_a_job_waits_with_a_clear_message_when_no_comfyui_is_running(workers, local_backend, alice_client, settings):
    local_backend.url = "http://127.0.0.1:9"  # discard port: nothing listens
    local_backend.save()
    workers.start()

    job = _submit(alice_client)
    job = wait_for(lambda: Job.objects.filter(id=job.id, waiting=True, waiting_for="outage").first(), 30, 0.1,
                   "the job to wait for the local ComfyUI")

    assert job.status == JobStatus.QUEUED and job.attempts.get().outage
    assert "not reachable (is it running?)" in job.attempts.get().error and "Traceback" not in job.attempts.get().error
    page = alice_client.get(f"/jobs/{job.id}/").content.decode()
    assert "not reachable" in page and "Waiting for local to answer again" in page
