"""Job webhooks: signed, sent once when the job ends, retried, never to private hosts."""
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from routing import services, webhooks
from routing.models import Job

pytestmark = pytest.mark.django_db


class Receiver:
    """A loopback HTTP server that records webhook calls and answers with `statuses` in turn."""

    def __init__(self, statuses=(200,)):
        self.calls, self.statuses = [], list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0])
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_SECRET = "hook-secret"
    server = Receiver()
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
