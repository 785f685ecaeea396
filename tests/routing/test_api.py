"""The JSON API: tokens and sessions, validation, ownership, OpenAPI, rate limit."""
import json

import pytest
from django.test import Client

from routing import services, tokens
from routing.models import ApiToken, Job, JobStatus

pytestmark = pytest.mark.django_db

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "api"}}}


@pytest.fixture
def api(alice, local_backend):
    _, key = tokens.token_create(user=alice, name="tests")
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def _post(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json")


def test_a_prompt_job_is_created_with_a_token(api, alice):
    response = _post(api, "/api/jobs", {"prompt": "a red fox", "preference": "local", "priority": "high"})
    assert response.status_code == 201, response.content
    body = response.json()
    job = Job.objects.get(id=body["id"])
    assert job.user == alice and body["status"] == "queued" and body["priority"] == "high"
    assert body["attempts"] == [] and body["outputs"] == [] and body["cost"] == "0.000000"


def test_a_workflow_job_is_created(api):
    response = _post(api, "/api/jobs", {"workflow": WORKFLOW})
    assert response.status_code == 201 and Job.objects.get().workflow == WORKFLOW


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": "x", "width": 0}, "width", "greater than or equal to 64"),
    ({"prompt": "x", "height": 500}, "height", "multiple of 8"),
    ({"workflow": {"1": {"inputs": {}}}}, "workflow", "Node 1 has no class_type"),
    ({}, "prompt", "Write a prompt"),
    ({"prompt": "x", "kind": "video", "duration_seconds": 99}, "duration_seconds", "less than or equal to 30"),
    ({"prompt": "x", "webhook_url": "http://127.0.0.1:8000/hook"}, "webhook_url", "private or local address"),
    ({"prompt": "x", "webhook_url": "ftp://example.com/x"}, "webhook_url", "http:// or https://"),
    ({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                                 "color": 0}},
                   "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}},
     "workflow", "saves nothing Comfy Hybrid can keep"),
])
def test_invalid_input_is_a_422_naming_the_field_and_creates_nothing(api, body, field, message):
    response = _post(api, "/api/jobs", body)
    assert response.status_code == 422
    [error] = [e for e in response.json()["detail"] if e["loc"][-1] == field]
    assert message in error["msg"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("body", [{"prompt": "x", "preference": "mars"}, {"prompt": "x", "workflow": [1, 2]},
                                  {"prompt": "x", "width": "wide"}])
def test_wrong_types_and_unknown_choices_are_422(api, body):
    response = _post(api, "/api/jobs", body)
    assert response.status_code == 422 and response.json()["detail"]
    assert not Job.objects.exists()


def test_malformed_json_is_a_400_not_a_500(api):
    response = api.post("/api/jobs", "{not json", content_type="application/json")
    assert response.status_code in (400, 422) and not Job.objects.exists()


def test_requests_without_a_valid_token_are_refused(client, alice):
    assert client.get("/api/jobs").status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer chy_nope").get("/api/jobs").status_code == 401


def test_a_revoked_token_stops_working(alice):
    token, key = tokens.token_create(user=alice, name="t")
    tokens.token_revoke(user=alice, token_id=token.id)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/jobs").status_code == 401


def test_only_the_tokens_digest_is_stored(alice):
    _, key = tokens.token_create(user=alice, name="t")
    assert key not in json.dumps(list(ApiToken.objects.values()), default=str)


def test_the_web_session_works_and_needs_csrf_for_writes(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get("/api/jobs").status_code == 200
    assert _post(browser, "/api/jobs", {"prompt": "x"}).status_code == 403
    assert not Job.objects.exists()


def test_a_write_with_no_credentials_is_a_401_not_a_csrf_403(db):
    anonymous = Client(enforce_csrf_checks=True)

    for path in ("/api/jobs", f"/api/jobs/{'0' * 8}-0000-4000-8000-{'0' * 12}/cancel"):
        response = _post(anonymous, path, {"prompt": "x"})
        assert response.status_code == 401, (path, response.content)
    assert anonymous.get("/api/jobs").status_code == 401
    assert not Job.objects.exists()


def test_listing_shows_only_my_jobs_and_filters(api, alice, bob):
    services.job_submit(user=alice, kind="image", preference="auto", prompt="mine")
    services.job_submit(user=bob, kind="image", preference="auto", prompt="his")
    Job.objects.filter(prompt="mine").update(status=JobStatus.FAILED)
    body = api.get("/api/jobs").json()
    assert body["count"] == 1 and body["results"][0]["prompt"] == "mine"
    assert api.get("/api/jobs?status=succeeded").json()["count"] == 0


def test_another_users_job_is_404_and_a_malformed_id_is_refused(api, bob):
    theirs = services.job_submit(user=bob, kind="image", preference="auto", prompt="his")
    assert api.get(f"/api/jobs/{theirs.id}").status_code == 404
    assert api.post(f"/api/jobs/{theirs.id}/cancel").status_code == 404
    assert Job.objects.get(id=theirs.id).status == JobStatus.QUEUED
    assert api.get("/api/jobs/not-a-uuid").status_code == 422


def test_cancel_then_cancel_again(api, alice):
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="x")
    assert api.post(f"/api/jobs/{job.id}/cancel").json()["status"] == "cancelled"
    response = api.post(f"/api/jobs/{job.id}/cancel")
    assert response.status_code == 409 and "already finished" in response.json()["detail"]


def test_backends_show_status_and_prices_but_no_secrets_or_urls(api, settings):
    settings.GEMINI_API_KEY = "AIza-very-secret"
    body = api.get("/api/backends").json()
    by_name = {b["name"]: b for b in body}
    assert by_name["local"]["expected_cost"] == "0.000000" and by_name["gemini"]["expected_cost"] == "0.067000"  # gemini-3.1-flash-image
    text = json.dumps(body)
    assert "AIza-very-secret" not in text and "127.0.0.1" not in text


def test_costs_are_mine_and_staff_can_see_all(api, admin_user):
    mine = api.get("/api/costs").json()
    assert mine["scope"] == "me" and "caps" in mine and mine["spend"]["total"] == "0.000000"
    _, key = tokens.token_create(user=admin_user, name="staff")
    staff = Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/costs?scope=all").json()
    assert staff["scope"] == "all"
    assert api.get("/api/costs?scope=all").json()["scope"] == "me"


def test_health_is_public_and_reports_database_broker_and_backends(client, local_backend, redis_server):
    body = client.get("/api/health").json()
    assert body["database"] == "ok" and body["broker"] == "ok" and body["backends"]["local"] == "unknown"


def test_the_openapi_schema_and_offline_docs_are_served(client):
    schema = client.get("/api/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/backends", "/api/costs",
            "/api/health"} <= set(schema["paths"])
    docs = client.get("/api/docs").content.decode()
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()


def test_too_many_submissions_get_a_429_with_retry_after(api, settings):
    settings.SUBMIT_RATE_PER_MINUTE = 2
    for _ in range(2):
        assert _post(api, "/api/jobs", {"prompt": "x"}).status_code == 201
    response = _post(api, "/api/jobs", {"prompt": "x"})
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert "at most 2 jobs a minute" in response.json()["detail"]
    assert Job.objects.count() == 2


def test_the_form_is_rate_limited_too(alice_client, settings, local_backend):
    settings.SUBMIT_RATE_PER_MINUTE = 1
    data = {"kind": "image", "preference": "auto", "prompt": "x", "width": 512, "height": 512}
    assert alice_client.post("/submit/", data).status_code == 302
    assert "Too many submissions" in alice_client.post("/submit/", data).content.decode()
    assert Job.objects.count() == 1


def test_a_retry_is_rate_limited_like_a_submission(alice_client, alice, settings, local_backend, admin_client):
    settings.SUBMIT_RATE_PER_MINUTE = 2
    first = services.job_submit(user=alice, kind="image", preference="auto", prompt="x")
    Job.objects.filter(id=first.id).update(status=JobStatus.FAILED)

    assert alice_client.post(f"/jobs/{first.id}/retry/").status_code == 302  # the second job this minute
    page = alice_client.post(f"/jobs/{first.id}/retry/", follow=True).content.decode()

    assert "Too many submissions: at most 2 jobs a minute" in page and Job.objects.count() == 2
    admin_page = admin_client.post("/admin/routing/job/", {"action": "retry_jobs", "_selected_action": [first.id]},
                                   follow=True).content.decode()
    assert "Queued 0 new job(s)" in admin_page and "Too many submissions" in admin_page
    assert Job.objects.count() == 2


def test_tokens_are_made_and_revoked_in_the_ui(alice_client, alice):
    page = alice_client.post("/account/tokens/", {"name": "script"}).content.decode()
    key = page.split('<code id="new-token">')[1].split("</code>")[0]
    assert Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/jobs").status_code == 200
    token = ApiToken.objects.get(user=alice)
    alice_client.post("/account/tokens/", {"revoke": token.id})
    assert not ApiToken.objects.exists()
    assert key not in alice_client.get("/account/tokens/").content.decode()


def test_listing_jobs_reads_their_attempts_once_not_once_per_job_and_field(api, alice, local_backend):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from routing.models import Attempt

    def listing_queries(n):
        for i in range(n):
            job = services.job_submit(user=alice, kind="image", preference="local", prompt=f"j{i}")
            Job.objects.filter(id=job.id).update(status=JobStatus.SUBMITTED)
            Attempt.objects.create(job=job, backend=local_backend, number=1, status="submitted", queue_position=i)
        with CaptureQueriesContext(connection) as seen:
            body = api.get("/api/jobs?limit=200").json()
        assert body["count"] == Job.objects.count()
        return len(seen)

    api.get("/api/jobs")  # the token's last use is written at most once a while: not in the counts
    few, many = listing_queries(2), listing_queries(8)
    assert many == few  # the page reads attempts, backends and outputs in a fixed number of queries
