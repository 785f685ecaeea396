"""Job pages and outputs: owners see theirs, everyone else gets a 404."""
import pytest
from django.core.files.base import ContentFile

from routing import services
from routing.models import Attempt, Job, JobStatus, Output

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(alice, local_backend):
    job = Job.objects.create(user=alice, prompt="a castle", status=JobStatus.SUCCEEDED, backend=local_backend)
    attempt = Attempt.objects.create(job=job, backend=local_backend, number=1, status="succeeded")
    Output.objects.create(job=job, attempt=attempt, index=0, filename="c.png", mime="image/png", size=4,
                          sha256="x", file=ContentFile(b"\x89PNG", name="c.png"))
    return job


def test_the_owner_sees_the_job_and_its_output(alice_client, job):
    page = alice_client.get(f"/jobs/{job.id}/").content.decode()
    assert "a castle" in page and "Succeeded" in page
    output = job.outputs.get()
    response = alice_client.get(f"/outputs/{output.id}/")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == b"\x89PNG"


@pytest.mark.parametrize("path", ["/jobs/{job}/", "/jobs/{job}/live/", "/outputs/{output}/"])
def test_another_user_gets_404(client, charlie, job, path):
    client.force_login(charlie)
    url = path.format(job=job.id, output=job.outputs.get().id)
    assert client.get(url).status_code == 404


def test_another_users_job_cannot_be_cancelled_or_retried(client, charlie, alice, local_backend):
    job = Job.objects.create(user=alice, prompt="x")
    client.force_login(charlie)
    assert client.post(f"/jobs/{job.id}/cancel/").status_code == 404
    assert client.post(f"/jobs/{job.id}/retry/").status_code == 404
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED and Job.objects.count() == 1


def test_a_malformed_job_id_is_a_404_not_a_500(alice_client):
    assert alice_client.get("/jobs/not-a-uuid/").status_code == 404


def test_cancelling_a_queued_job_marks_it_cancelled(alice_client, alice):
    job = Job.objects.create(user=alice, prompt="x")
    alice_client.post(f"/jobs/{job.id}/cancel/")
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED


def test_the_job_list_filters_by_status(alice_client, alice):
    Job.objects.create(user=alice, prompt="first one", status=JobStatus.FAILED)
    Job.objects.create(user=alice, prompt="second one", status=JobStatus.SUCCEEDED)
    page = alice_client.get("/?status=failed").content.decode()
    assert "first one" in page and "second one" not in page


def test_the_job_list_shows_an_empty_state_with_what_to_do(alice_client):
    assert "Submit your first one" in alice_client.get("/").content.decode()


def test_retry_makes_a_new_job_with_the_same_request(alice, local_backend):
    old = Job.objects.create(user=alice, prompt="again", width=768, height=512, status=JobStatus.FAILED)
    new = services.job_retry(user=alice, job_id=old.id)
    assert new.id != old.id and (new.prompt, new.width, new.status) == ("again", 768, JobStatus.QUEUED)


def test_a_job_added_in_the_admin_is_routed_at_once(admin_user, alice, rf, monkeypatch, django_capture_on_commit_callbacks):
    from django.contrib.admin.sites import site

    from routing import dispatch
    from project import queues

    sent = []
    monkeypatch.setattr(dispatch, "send", lambda name, args, queue, **options: sent.append((name, args, queue)))
    request = rf.post("/admin/routing/job/add/")
    request.user = admin_user
    job = Job(user=alice, prompt="from the admin", status=JobStatus.QUEUED)

    with django_capture_on_commit_callbacks(execute=True):
        site._registry[Job].save_model(request, job, form=None, change=False)
        site._registry[Job].save_model(request, job, form=None, change=True)  # an edit routes nothing

    assert sent == [(dispatch.ROUTE, [str(job.id)], queues.CONTROL)]  # (not the next sweep, a minute later)


def test_the_admin_has_the_sites_favicon(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert '<link rel="icon" href="data:image/svg+xml' in page


def test_the_gallery_shows_only_my_outputs_newest_first(alice_client, client, bob, job):
    page = alice_client.get("/gallery/").content.decode()
    output = job.outputs.get()
    assert f"/outputs/{output.id}/" in page and "a castle" in page
    client.force_login(bob)
    assert f"/outputs/{output.id}/" not in client.get("/gallery/").content.decode()
    assert "Nothing here yet" in client.get("/gallery/").content.decode()
