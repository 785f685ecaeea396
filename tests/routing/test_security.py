"""Nobody let in: CSRF on every form, staff-only places, Flower auth, no secret anywhere,
no user-chosen URL fetched by the server, workflow limits checked twice."""
import json
import os
import subprocess
import sys

import pytest
import requests
from django.db.models import Q
from django.test import Client

from routing import services, tokens
from routing.models import ApiToken, Attempt, Backend, Job, JobStatus, Preference
from tests.conftest import ROOT, free_port, wait_for

SECRETS = {"RUNPOD_API_KEY": "rp_SECRET_runpod_123", "GEMINI_API_KEY": "AIza_SECRET_gemini_456",
           "WEBHOOK_SECRET": "whsec_SECRET_789"}


@pytest.fixture
def secret_settings(settings):
    for name, value in SECRETS.items():
        setattr(settings, name, value)
    settings.RUNPOD_ENDPOINT_ID = "endpoint1"
    return settings


@pytest.fixture
def csrf_alice(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    return browser


@pytest.fixture
def csrf_admin(admin_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    return browser


@pytest.mark.django_db
def test_every_user_form_refuses_a_post_without_its_csrf_token(csrf_alice, alice, local_backend):
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="x")
    posts = [
        ("/submit/", {"kind": "image", "preference": "auto", "prompt": "y", "width": 512, "height": 512}),
        (f"/jobs/{job.id}/cancel/", {}),
        (f"/jobs/{job.id}/retry/", {}),
        ("/backends/preference/", {"preference": "gemini"}),
        ("/account/tokens/", {"name": "t"}),
        ("/logout/", {}),
    ]
    for path, data in posts:
        assert csrf_alice.post(path, data).status_code == 403, path
    assert csrf_alice.post("/api/jobs", json.dumps({"prompt": "z"}), content_type="application/json").status_code == 403
    assert Job.objects.count() == 1 and Job.objects.get().status == JobStatus.QUEUED
    assert Preference.objects.get(user=alice).preference == "auto"
    assert not ApiToken.objects.exists()
    assert csrf_alice.get("/").status_code == 200  # still signed in: logout was refused too


@pytest.mark.django_db
def test_staff_forms_refuse_a_post_without_its_csrf_token(csrf_admin, local_backend):
    for path in ("/install/start/", "/admin/routing/backend/add/", "/admin/logout/"):
        assert csrf_admin.post(path, {}).status_code == 403, path
    assert Client(enforce_csrf_checks=True).post("/login/", {"username": "admin", "password": "x"}).status_code == 403


@pytest.mark.django_db
def test_the_admin_and_the_metrics_are_for_staff_only(alice_client, admin_client):
    for path in ("/admin/", "/admin/routing/job/", "/admin/billing/ledgerentry/", "/admin/metrics/"):
        response = alice_client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path
        assert admin_client.get(path).status_code == 200, path


@pytest.mark.django_db
def test_a_user_cannot_steer_the_installer(alice_client):
    for action in ("start", ):
        assert alice_client.post(f"/install/{action}/").status_code == 403


@pytest.mark.django_db
def test_nothing_a_user_submits_sets_a_url_the_server_fetches(alice, local_backend):
    _, key = tokens.token_create(user=alice, name="t")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    before = list(Backend.objects.values_list("name", "url"))
    response = api.post("/api/jobs", json.dumps({"prompt": "x", "backend_url": "http://169.254.169.254/",
                                                  "url": "http://evil.example/", "backend": "evil"}),
                        content_type="application/json")
    assert response.status_code == 201
    assert list(Backend.objects.values_list("name", "url")) == before
    job = Job.objects.get()
    attempt = services.job_route(job_id=job.id)
    assert attempt.backend == local_backend  # chosen by the router from staff-made rows only


@pytest.mark.django_db
def test_a_workflow_outside_the_allow_list_is_refused_at_submit_and_again_in_the_worker(
        alice_client, alice, local_backend, settings):
    settings.WORKFLOW_ALLOWED_CLASSES = ["EmptyImage", "SaveImage"]
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}},
                "2": {"class_type": "LoadImageFromUrl", "inputs": {"url": "http://10.0.0.1/x"}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    page = alice_client.post("/submit/", {"kind": "image", "preference": "auto", "width": 512, "height": 512,
                                          "workflow": json.dumps(workflow)}).content.decode()
    assert "Node 2: node type LoadImageFromUrl is not allowed here." in page
    assert not Job.objects.exists()
    # a job stored before the allow-list changed is stopped by the worker's second check
    job = services.job_submit(user=alice, kind="image", preference="auto", workflow=workflow)
    attempt = services.job_route(job_id=job.id)
    services.attempt_submit(attempt_id=attempt.id)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "LoadImageFromUrl is not allowed" in job.error


def _dotenv_value(name: str) -> str:
    for line in (ROOT / ".env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} is not in .env")


def _start_flower(redis_url: str, port: int, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "project", "flower", f"--port={port}",
                             "--address=127.0.0.1"], cwd=ROOT, env={**environment, "CELERY_BROKER_URL": redis_url,
                                                                   **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_flower_started_the_documented_way_asks_for_the_password_from_dotenv_on_every_path(redis_server):
    port = free_port()
    user, password = _dotenv_value("FLOWER_BASIC_AUTH").split(":", 1)
    flower = _start_flower(redis_server.url, port)  # `celery -A project flower`: the password only in .env
    try:
        def status():
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code
            except requests.RequestException:
                return None

        assert wait_for(status, 30, 0.2, "flower") == 401
        for path in ("/", "/api/tasks", "/broker", "/metrics", "/api/workers"):
            url = f"http://127.0.0.1:{port}{path}"
            assert requests.get(url, timeout=5).status_code == 401, path
            assert requests.get(url, auth=(user, "wrong"), timeout=5).status_code == 401, path
        assert requests.get(f"http://127.0.0.1:{port}/", auth=(user, password), timeout=5).status_code == 200
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", auth=(user, password), timeout=5)
        assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    finally:
        flower.terminate()
        flower.wait(10)


def test_flower_refuses_to_start_without_a_password(redis_server):
    flower = _start_flower(redis_server.url, free_port(), FLOWER_BASIC_AUTH="")
    try:
        _, err = flower.communicate(timeout=60)
    finally:
        flower.kill()
    assert flower.returncode != 0 and "Flower is not started without a password" in err


@pytest.mark.django_db
@pytest.mark.slow
def test_no_secret_appears_in_any_page_or_api_response(secret_settings, alice, admin_user, local_backend):
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="x")
    services.job_route(job_id=job.id)
    _, key = tokens.token_create(user=alice, name="t")
    user_pages = ["/", "/submit/", f"/jobs/{job.id}/", f"/jobs/{job.id}/live/", "/backends/", "/backends/cards/",
                  "/costs/", "/account/tokens/", "/install/", "/api/docs", "/api/openapi.json", "/api/health"]
    api_paths = ["/api/jobs", f"/api/jobs/{job.id}", "/api/backends", "/api/backends?kind=video", "/api/costs"]
    admin_pages = ["/admin/", "/admin/routing/backend/", *[f"/admin/routing/backend/{b.id}/change/"
                                                          for b in Backend.objects.all()],
                   "/admin/routing/job/", f"/admin/routing/job/{job.id}/change/", "/admin/routing/attempt/",
                   "/admin/billing/ledgerentry/", "/admin/metrics/", "/admin/django_celery_beat/periodictask/"]
    seen = []
    user = Client()
    user.force_login(alice)
    seen += [user.get(p).content.decode() for p in user_pages]
    seen += [Client(HTTP_AUTHORIZATION=f"Bearer {key}").get(p).content.decode() for p in api_paths]
    staff = Client()
    staff.force_login(admin_user)
    seen += [staff.get(p).content.decode() for p in admin_pages]
    everything = "\n".join(seen)
    assert len(seen) == len(user_pages) + len(api_paths) + len(admin_pages)
    for secret in [*SECRETS.values(), secret_settings.SECRET_KEY]:
        assert secret not in everything


@pytest.mark.integration
def test_no_secret_reaches_task_arguments_logs_or_job_errors(transactional_db, redis_server, alice, local_backend,
                                                              settings):
    """Jobs run by real workers whose environment holds the secrets: grep every message on the
    broker, every worker log line and every job error for them."""
    from tests.conftest import Workers
    from tests.fakes.gemini import FakeGemini

    redis_server.client().flushall()
    gemini = FakeGemini().start()
    try:
        env = {**SECRETS, "RUNPOD_ENDPOINT_ID": "endpoint1", "GEMINI_BASE_URL": gemini.url,
               "RUNPOD_ENDPOINT_BASE_URL": "http://127.0.0.1:9/v2", "RUNPOD_API_BASE_URL": "http://127.0.0.1:9"}
        for name, value in env.items():
            setattr(settings, name, value)
        Backend.objects.filter(name="local").update(url="http://127.0.0.1:9")
        Backend.objects.filter(kind="pod").update(enabled=False)  # no autoscaler runs here
        jobs = [services.job_submit(user=alice, kind="image", preference=p, prompt="secret test")
                for p in ("local", "cloud", "gemini", "auto")]
        broker = redis_server.client()  # one list per queue and broker priority ("control:3")
        queued = [m for key in broker.keys("*") if broker.type(key) == b"list"
                  for m in broker.lrange(key, 0, -1)]
        pool = Workers(redis_server.url, env=env)
        pool.start()
        try:
            # Local and cloud are unreachable: their jobs end waiting for them to answer again.
            ended = Q(status__in=("succeeded", "failed")) | Q(waiting_for="outage")
            wait_for(lambda: Job.objects.filter(ended, id__in=[j.id for j in jobs]).count() == 4, 90, 0.2, "jobs")
        finally:
            pool.stop_all()
        produced = [m.decode(errors="replace") for m in queued]
        produced += [log.read_text(errors="replace") for log in pool.logs]
        produced += list(Job.objects.values_list("error", flat=True))
        produced += list(Attempt.objects.values_list("error", flat=True))
        produced += [json.dumps(list(Job.objects.values("decision", "reason")), default=str)]
        text = "\n".join(produced)
        # Each job is routed where it was submitted: its message carries its attempt's id, not an object.
        first_attempts = [Attempt.objects.filter(job=j).order_by("number").first() for j in jobs]
        assert len(queued) == 4 and all(a and str(a.id) in "".join(produced[:4]) for a in first_attempts)
        for secret in SECRETS.values():
            assert secret not in text, secret
    finally:
        gemini.stop()


@pytest.mark.django_db
def test_logins_are_throttled_after_a_few_wrong_passwords_even_for_the_right_one(client, alice, settings):
    wrong = {"username": "alice", "password": "not-it"}
    answers = [client.post("/login/", wrong).status_code for _ in range(settings.AXES_FAILURE_LIMIT)]

    locked = client.post("/login/", {"username": "alice", "password": "alice-password-1"})

    assert answers[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)  # the form again, with its error
    assert locked.status_code == 429 and "Too many sign-in attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    # From another address the same user is not locked out (nobody can lock a user out remotely).
    elsewhere = Client(REMOTE_ADDR="10.9.8.7").post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert elsewhere.status_code == 302


@pytest.mark.django_db
def test_a_right_password_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/login/", {"username": "alice", "password": "not-it"})
    assert client.post("/login/", {"username": "alice", "password": "alice-password-1"}).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/login/", {"username": "alice", "password": "not-it"}).status_code == 200


@pytest.mark.django_db
def test_every_response_carries_the_content_security_policy(alice_client):
    for path in ("/", "/login/", "/api/docs", "/api/openapi.json", "/no-such-page/"):
        policy = alice_client.get(path)["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "'unsafe-inline'" not in policy
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy, path


INTERNAL = ("ComfyUI at http://127.0.0.1:8388 is not reachable (is it running?); FileNotFoundError: "
            "/home/ana/ComfyUI/models/checkpoints/v1-5.safetensors on 10.0.0.7:8188")


@pytest.mark.django_db
def test_users_see_what_happened_without_internal_addresses_and_staff_see_the_detail(
        alice, alice_client, admin_client, local_backend):
    from routing.health import health_record

    job = services.job_submit(user=alice, kind="image", preference="local", prompt="a fox")
    Attempt.objects.create(job=job, backend=local_backend, number=1, status="failed", error=INTERNAL)
    Job.objects.filter(id=job.id).update(status=JobStatus.FAILED, error=INTERNAL, reason=f"local: {INTERNAL}",
                                         decision={"local": f"offline — {INTERNAL}"})
    health_record(backend_id=local_backend.id, ok=False, detail=INTERNAL)
    token_client = Client(HTTP_AUTHORIZATION=f"Bearer {tokens.token_create(user=alice, name='t')[1]}")

    seen = [alice_client.get(f"/jobs/{job.id}/").content.decode(), alice_client.get("/backends/").content.decode(),
            token_client.get(f"/api/jobs/{job.id}").content.decode(), token_client.get("/api/jobs").content.decode()]

    for text in seen:
        for internal in ("127.0.0.1", "8388", "10.0.0.7", "/home/ana", "ComfyUI/models"):
            assert internal not in text, internal
    assert "ComfyUI is not reachable (is it running?)" in seen[0] and "v1-5.safetensors" in seen[0]
    assert "ComfyUI is not reachable" in json.loads(seen[2])["error"]
    staff = admin_client.get(f"/admin/routing/job/{job.id}/change/").content.decode()
    assert "http://127.0.0.1:8388" in staff  # the staff's detail is kept


def test_the_user_text_keeps_the_words_and_drops_only_the_insides():
    from routing.errors import for_users

    assert for_users("RunPod at https://api.runpod.ai/v2 did not answer in time") == "RunPod did not answer in time"
    assert for_users(r"see C:\Users\ana\ComfyUI\main.py") == "see main.py"
    assert for_users("[::1]:8188 and gpu-box.local:8188") == "(address hidden) and (address hidden)"
    for kept in ("Daily spending limit reached: $5.00 of $5.00 used, resets at 00:00 UTC.",
                 "lacks diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors — install it from the Local GPU page",
                 "Cannot execute because node NoSuchSamplerNode does not exist.", "denoise 0.5/1.0"):
        assert for_users(kept) == kept


@pytest.mark.django_db
def test_behind_the_tls_proxy_a_lockout_is_the_clients_not_everyones(alice, settings):
    settings.TRUSTED_PROXY_COUNT = 1  # what HTTPS=true sets: every request comes from the proxy
    # the attacker also forges an entry of its own; the proxy appends the address it really saw
    attacker = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4, 203.0.113.9")
    owner = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attacker.post("/login/", {"username": "alice", "password": "guess"})

    assert attacker.post("/login/", {"username": "alice", "password": "alice-password-1"}).status_code == 429
    assert owner.post("/login/", {"username": "alice", "password": "alice-password-1"}).status_code == 302
