"""The submit form: valid input makes a job; every kind of bad input makes none."""
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from routing import forms
from routing.models import Job, JobStatus, Preference

pytestmark = pytest.mark.django_db

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def _post(client, **fields):
    data = {"kind": "image", "preference": "auto", "prompt": "a red fox", "width": 512, "height": 512}
    data.update(fields)
    return client.post("/submit/", data)


def test_it_creates_a_queued_job_and_remembers_the_preference(alice_client, alice):
    response = _post(alice_client, preference="local")
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.id}/"
    assert job.status == JobStatus.QUEUED and job.user == alice and job.prompt == "a red fox"
    assert Preference.objects.get(user=alice).preference == "local"
    assert alice_client.get("/submit/").context["form"].initial["preference"] == "local"


def test_it_accepts_a_pasted_api_workflow(alice_client):
    response = _post(alice_client, prompt="", workflow=json.dumps(WORKFLOW))
    assert response.status_code == 302
    assert Job.objects.get().workflow == WORKFLOW


def test_it_accepts_an_uploaded_workflow_file(alice_client):
    upload = SimpleUploadedFile("wf.json", json.dumps(WORKFLOW).encode(), "application/json")
    response = _post(alice_client, prompt="", workflow_file=upload)
    assert response.status_code == 302
    assert Job.objects.get().workflow == WORKFLOW


@pytest.mark.parametrize("fields, message", [
    ({"workflow": "{not json", "prompt": ""}, "not valid JSON"),
    ({"workflow": "[1, 2]", "prompt": ""}, "API format"),
    ({"workflow": json.dumps({"nodes": [], "links": []}), "prompt": ""}, "UI-format workflow"),
    ({"workflow": json.dumps({"1": {"inputs": {}}}), "prompt": ""}, "Node 1 has no class_type"),
    ({"workflow": json.dumps({"2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}), "prompt": ""},
     "links to node 9, which does not exist"),
    ({"preference": "mars"}, "Select a valid choice"),
    ({"kind": "hologram"}, "Select a valid choice"),
    ({"width": 0}, "greater than or equal to 64"),
    ({"height": -512}, "greater than or equal to 64"),
    ({"width": 500}, "multiple of 8"),
    ({"prompt": ""}, forms.ERR_NEITHER),
    ({"workflow": json.dumps(WORKFLOW)}, forms.ERR_BOTH),
    ({"kind": "video", "duration_seconds": 600}, "less than or equal to 30"),
])
def test_bad_input_gives_a_form_error_and_no_job(alice_client, fields, message):
    response = _post(alice_client, **fields)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Job.objects.exists()


def test_an_oversized_workflow_is_refused(alice_client, settings):
    settings.WORKFLOW_MAX_BYTES = 1024
    big = dict(WORKFLOW, **{str(i): {"class_type": "EmptyImage", "inputs": {"width": 64}} for i in range(3, 40)})
    response = _post(alice_client, prompt="", workflow=json.dumps(big))
    assert "at most 1 KB is allowed" in response.content.decode()
    assert not Job.objects.exists()


def test_too_many_nodes_are_refused(alice_client, settings):
    settings.WORKFLOW_MAX_NODES = 2
    big = dict(WORKFLOW, **{"3": {"class_type": "EmptyImage", "inputs": {}}})
    response = _post(alice_client, prompt="", workflow=json.dumps(big))
    assert "at most 2 are allowed" in response.content.decode()
    assert not Job.objects.exists()


def test_it_requires_sign_in(client):
    response = _post(client)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not Job.objects.exists()


# --- the first hour of a new user (issue 22) ------------------------------------------------------
def test_a_choice_nothing_here_can_run_is_refused_shown_as_such_and_never_the_default(alice_client, alice, settings):
    settings.GEMINI_API_KEY = ""  # Gemini is not set up
    response = _post(alice_client, preference="gemini")

    assert response.status_code == 200 and not Job.objects.exists()
    assert "Not set up on this installation (GEMINI_API_KEY missing)" in response.content.decode()
    assert not Preference.objects.filter(user=alice, preference="gemini").exists()
    Preference.objects.update_or_create(user=alice, defaults={"preference": "gemini"})  # saved before the fix
    page = alice_client.get("/submit/")
    assert page.context["form"].initial["preference"] == "auto"
    assert 'value="gemini" id="id_preference_3" disabled' in page.content.decode()


def test_a_custom_workflow_gets_the_size_it_makes_and_needs_no_size_fields(alice_client, local_backend):
    workflow = {**WORKFLOW, "1": {**WORKFLOW["1"], "inputs": {**WORKFLOW["1"]["inputs"], "width": 640, "height": 384}}}
    response = alice_client.post("/submit/", {"kind": "image", "preference": "auto", "workflow": json.dumps(workflow)})

    job = Job.objects.get()
    assert response.status_code == 302 and (job.width, job.height) == (640, 384)
    assert "640×384" in alice_client.get("/").content.decode()
    assert "640×384" in alice_client.get(f"/jobs/{job.id}/").content.decode()


def test_a_workflow_that_does_not_say_its_size_is_not_labelled_512(alice_client, local_backend):
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    alice_client.post("/submit/", {"kind": "image", "preference": "auto", "workflow": json.dumps(workflow)})

    job = Job.objects.get()
    assert (job.width, job.height) == (0, 0)
    assert "size set by its workflow" in alice_client.get(f"/jobs/{job.id}/").content.decode()


def test_a_fresh_job_page_does_not_blame_the_control_worker_and_a_stuck_one_does(alice_client, alice):
    from datetime import timedelta

    from django.utils import timezone

    from routing import services

    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="a fox")
    fresh = alice_client.get(f"/jobs/{job.id}/live/").content.decode()
    assert "Choosing where to run it" in fresh and "probably not running" not in fresh
    Job.objects.filter(id=job.id).update(created_at=timezone.now() - timedelta(seconds=40))
    stuck = alice_client.get(f"/jobs/{job.id}/live/").content.decode()
    assert "Not routed after 40 s" in stuck and "control" in stuck
    Job.objects.filter(id=job.id).update(status=JobStatus.FAILED, error="No backend can run this job")
    failed = alice_client.get(f"/jobs/{job.id}/live/").content.decode()
    assert "probably not running" not in failed


def test_a_prompt_that_is_too_long_gets_one_error_that_says_how_long_and_is_never_cut(alice_client):
    page = alice_client.get("/submit/").content.decode()
    assert 'maxlength="4000"' not in page  # the browser would cut a long paste mid-word

    response = _post(alice_client, prompt="a fox " * 750)  # 4500 characters

    errors = response.context["form"].errors["prompt"]
    assert errors == ["At most 4000 characters; this one has 4499. Shorten it and submit again."]
    assert not Job.objects.exists()


def test_a_long_prompt_is_a_short_title_on_the_job_page_with_the_whole_text_below(alice_client, alice):
    from routing import services

    prompt = "a lighthouse at dusk, " * 20
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt=prompt.strip())
    page = alice_client.get(f"/jobs/{job.id}/").content.decode()

    title = page.split('<h1 class="prompt">')[1].split("</h1>")[0]
    assert len(title) < 160 and title.endswith("…”")
    assert "Whole prompt (439 characters)" in page and prompt.strip() in page
