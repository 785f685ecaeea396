"""Webhooks on their own queue, with real Redis, real worker processes (one per queue, as in
deploy/Procfile) and the fake ComfyUI: a user whose webhook receiver never answers cannot hold
anyone else's jobs.

The receiver holds every request until the test lets it go, and WEBHOOK_TIMEOUT is set longer
than the test waits for bob, so the deliveries in flight stay in flight: bob's jobs then end
while alice's deliveries are provably still held (the receiver has answered nothing), however
fast or slow this machine is. With deliveries on `control`, as before, bob's jobs could not even
be routed until a held delivery timed out.
"""
import hashlib
import hmac
import json
import threading

import pytest
from django.test import Client

from project import queues
from routing import tokens
from routing.models import Job, JobStatus
from tests.conftest import configure, wait_for
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

HELD_SECONDS = 50  # WEBHOOK_TIMEOUT here: under the task's 60 s soft limit, over bob's wait
BOB_WAIT_SECONDS = HELD_SECONDS - 10
WORKER_CONCURRENCY = 2
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@pytest.fixture
def receiver(workers):
    server = WebhookReceiver(hold=threading.Event())
    yield server
    server.close()  # before the workers stop: their held deliveries end at once


def _api(user):
    _, key = tokens.token_create(user=user, name="tests")
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def _submit(api, **fields) -> str:
    body = {"prompt": "a lighthouse at dusk", "preference": "local", **fields}
    response = api.post("/api/jobs", json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_a_receiver_that_never_answers_holds_no_one_elses_jobs(
        workers, receiver, fake_comfyui, local_backend, alice, bob, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    workers.env["WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
    configure(settings, workers, WEBHOOK_TIMEOUT=HELD_SECONDS, WEBHOOK_SECRET="hook-secret", LOCAL_QUEUE_LIMIT=100)
    local_backend.url = fake_comfyui.url
    local_backend.save()
    for queue in (queues.CONTROL, queues.LOCAL, queues.WEBHOOKS):
        workers.start(queue, concurrency=WORKER_CONCURRENCY, name=queue)

    alice_api, bob_api = _api(alice), _api(bob)
    alices = [_submit(alice_api, webhook_url=receiver.url, seed=n) for n in range(20)]
    wait_for(lambda: len(receiver.calls) >= WORKER_CONCURRENCY, 60, 0.1, "alice's first deliveries to be held")
    bobs = [_submit(bob_api, seed=n) for n in range(3)]
    wait_for(lambda: Job.objects.filter(id__in=bobs, status__in=FINAL).count() == 3, BOB_WAIT_SECONDS, 0.1,
             "bob's jobs to end (are they held behind alice's webhooks?)")

    assert list(Job.objects.filter(id__in=bobs).values_list("status", flat=True)) == ["succeeded"] * 3
    assert receiver.answered == []  # every delivery of alice's is still held...
    assert len(receiver.calls) <= WORKER_CONCURRENCY  # ...by the webhooks worker's processes alone
    assert not Job.objects.filter(id__in=alices, webhook_state="delivered").exists()

    receiver.hold.set()
    wait_for(lambda: Job.objects.filter(id__in=alices, webhook_state="delivered").count() == 20, 120, 0.2,
             "alice's webhooks to be delivered once the receiver answers")
    assert set(Job.objects.filter(id__in=alices).values_list("status", flat=True)) == {"succeeded"}
    assert {json.loads(body)["job"]["id"] for _, body in receiver.calls} == set(alices)
    for headers, body in receiver.calls:
        assert headers["X-Comfy-Hybrid-Signature"] == \
            "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
