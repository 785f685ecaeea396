"""Job webhooks: signed, sent once when the job ends, retried, never to private hosts, on
their own queue."""
import hashlib
import hmac
import json

import pytest

from project import queues
from routing import dispatch, services, webhooks
from routing.models import Job
from tests.fakes.webhook_receiver import WebhookReceiver
from workers import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_SECRET = "hook-secret"
    server = WebhookReceiver()
    yield server
    server.close()


def _ended_job(user, url):
    job = services.job_submit(user=user, kind="image", preference="auto", prompt="x", webhook_url=url)
    services.job_cancel(user=user, job_id=job.id)
    return Job.objects.get(id=job.id)


def test_the_webhook_is_signed_and_sent_once(alice, receiver, local_backend):
    job = _ended_job(alice, receiver.url)
    assert job.webhook_state == "pending"
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    [(headers, body)] = receiver.calls
    expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Comfy-Hybrid-Signature"] == expected
    payload = json.loads(body)
    assert payload["event"] == "job.finished" and payload["job"]["id"] == str(job.id)
    assert payload["job"]["status"] == "cancelled"
    assert Job.objects.get(id=job.id).webhook_state == "delivered"


def test_a_failed_delivery_is_retried_with_backoff(alice, receiver, local_backend):
    receiver.statuses = [500, 200]
    job = _ended_job(alice, receiver.url)
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2
    assert Job.objects.get(id=job.id).webhook_state == "pending"
    assert webhooks.webhook_deliver(job_id=job.id, try_number=2) is None
    assert len(receiver.calls) == 2 and Job.objects.get(id=job.id).webhook_state == "delivered"


def test_delivery_gives_up_after_the_last_try(alice, receiver, local_backend, settings):
    receiver.statuses = [500]
    job = _ended_job(alice, receiver.url)
    assert webhooks.webhook_deliver(job_id=job.id, try_number=settings.WEBHOOK_MAX_TRIES) is None
    assert Job.objects.get(id=job.id).webhook_state == "failed"


def test_a_private_address_is_refused_even_at_send_time(alice, receiver, local_backend, settings):
    job = _ended_job(alice, receiver.url)
    settings.WEBHOOK_ALLOWED_HOSTS = []
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    assert receiver.calls == [] and Job.objects.get(id=job.id).webhook_state == "failed"


@pytest.mark.parametrize("url", ["http://localhost/x", "http://10.0.0.5/x", "http://169.254.169.254/latest",
                                 "http://[::1]/x", "file:///etc/passwd"])
def test_local_and_private_targets_are_refused(url, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.validate_webhook_url(url)


def test_a_job_without_a_webhook_sends_nothing(alice, local_backend):
    job = _ended_job(alice, "")
    assert job.webhook_state == ""


# --- queue ---------------------------------------------------------------------------------
def test_the_delivery_is_sent_to_the_webhooks_queue_not_control(alice, local_backend, monkeypatch,
                                                                 django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(dispatch, "send", lambda name, args, queue, **options: sent.append((name, queue)))
    with django_capture_on_commit_callbacks(execute=True):
        _ended_job(alice, "https://hooks.example.com/x")
    assert [queue for name, queue in sent if name == dispatch.WEBHOOK] == [queues.WEBHOOKS]


def test_a_retry_goes_back_to_the_webhooks_queue(monkeypatch):
    retries = []
    monkeypatch.setattr(webhooks, "webhook_deliver", lambda job_id, try_number: 4)
    monkeypatch.setattr(tasks.deliver_webhook, "apply_async",
                        lambda args, countdown, queue: retries.append((args, countdown, queue)))
    tasks.deliver_webhook.run("job-id", 2)
    assert retries == [(["job-id", 3], 4, queues.WEBHOOKS)]
    assert tasks.deliver_webhook.queue == queues.WEBHOOKS
