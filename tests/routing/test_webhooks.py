"""Job webhooks: signed, sent once when the job ends, retried, never to private hosts, on
their own queue; resolved once and connected to the address that was checked."""
import datetime
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import threading
from types import SimpleNamespace

import pytest
import urllib3
from django.test import Client

from project import queues
from routing import dispatch, services, tokens, webhooks
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
    Job.objects.filter(id=job.id).update(webhook_tries=settings.WEBHOOK_MAX_TRIES - 1)  # the earlier tries failed
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


def test_a_webhook_whose_message_was_lost_is_sent_again_by_the_sweeper(alice, receiver, local_backend, settings,
                                                                      monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from routing import maintenance

    settings.SWEEP_AFTER_SECONDS = 30
    receiver.statuses = [500, 200]
    job = _ended_job(alice, receiver.url)
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2  # try 2 due in 2 s; its message is lost
    sent = []
    monkeypatch.setattr(dispatch, "send", lambda name, args, queue, **options: sent.append((name, args, queue)))

    maintenance.sweep()
    assert sent == []  # not overdue yet
    Job.objects.filter(id=job.id).update(webhook_due_at=timezone.now() - timedelta(seconds=31))
    maintenance.sweep()
    maintenance.sweep()  # claimed by the first sweep: sent once

    assert [s for s in sent if s[0] == dispatch.WEBHOOK] == [(dispatch.WEBHOOK, [str(job.id), 2], queues.WEBHOOKS)]
    assert webhooks.webhook_deliver(job_id=job.id, try_number=2) is None
    assert Job.objects.get(id=job.id).webhook_state == "delivered" and len(receiver.calls) == 2
    assert webhooks.webhook_deliver(job_id=job.id, try_number=2) is None  # the original copy, late: nothing sent
    assert len(receiver.calls) == 2
    Job.objects.filter(id=job.id).update(webhook_due_at=timezone.now() - timedelta(seconds=31))
    maintenance.sweep()
    assert len([s for s in sent if s[0] == dispatch.WEBHOOK]) == 1  # a delivered webhook is never sent again


def test_a_resolver_that_fails_for_a_moment_is_retried_at_delivery_and_a_422_at_submission(
        alice, receiver, local_backend, settings, monkeypatch):
    import socket

    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="x")
    Job.objects.filter(id=job.id).update(webhook_url="https://hooks.example.com/x", webhook_state="pending")

    def resolver_down(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(webhooks, "getaddrinfo", resolver_down)
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2  # tried again later, not given up
    assert Job.objects.get(id=job.id).webhook_state == "pending"
    with pytest.raises(webhooks.WebhookRefused, match="cannot be checked.*Try again"):
        webhooks.validate_webhook_url("https://hooks.example.com/x")


def test_a_retry_goes_back_to_the_webhooks_queue(monkeypatch):
    retries = []
    monkeypatch.setattr(webhooks, "webhook_deliver", lambda job_id, try_number: 4)
    monkeypatch.setattr(tasks.deliver_webhook, "apply_async",
                        lambda args, countdown, queue: retries.append((args, countdown, queue)))
    tasks.deliver_webhook.run("job-id", 2)
    assert retries == [(["job-id", 3], 4, queues.WEBHOOKS)]
    assert tasks.deliver_webhook.queue == queues.WEBHOOKS


# --- the address guard ---------------------------------------------------------------------
NOT_PUBLIC = [
    "http://[::127.0.0.1]/x",  # IPv4-compatible loopback (ip.is_global says yes)
    "http://[::ffff:127.0.0.1]/x", "http://[::ffff:10.1.2.3]/x",  # IPv4-mapped
    "http://[64:ff9b::7f00:1]/x", "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64 to loopback, to 169.254.169.254
    "http://[64:ff9b:1::808:808]/x",  # local-use NAT64: never public, whatever it embeds
    "http://[2002:7f00:1::1]/x", "http://[2002:c0a8:0101::1]/x",  # 6to4 around 127.0.0.1, 192.168.1.1
    "http://[2001:0:808:808::80ff:fffe]/x",  # Teredo: client 127.0.0.1 (stored inverted)
    "http://[2001:0:a00:1::f7f7:f7f7]/x",  # Teredo: server 10.0.0.1
    "http://100.64.0.1/x", "http://198.18.0.1/x",  # shared address space, benchmarking
    "http://192.0.2.1/x", "http://198.51.100.7/x", "http://203.0.113.9/x", "http://[2001:db8::1]/x",  # docs
    "http://224.0.0.1/x", "http://[ff02::1]/x", "http://240.0.0.1/x", "http://255.255.255.255/x",
    "http://0.0.0.0/x", "http://[::]/x", "http://[fe80::1]/x", "http://[fd00::1]/x", "http://172.16.0.1/x",
    "http://2130706433/x", "http://0x7f.1/x",  # 127.0.0.1 in other spellings
]


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_every_form_of_a_non_public_address_is_refused(url, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(webhooks.WebhookRefused, match="private or local address"):
        webhooks.validate_webhook_url(url)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1",
                                     "::ffff:8.8.8.8", "2001:0:808:808::f7f7:f7f7"])
def test_public_addresses_pass_in_every_form(address):
    assert webhooks.is_public(ipaddress.ip_address(address))


def test_a_name_with_one_private_address_among_public_ones_is_refused(settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    monkeypatch.setattr(webhooks, "getaddrinfo", lambda *args, **kwargs: [
        _addrinfo("93.184.215.14"), _addrinfo("::ffff:127.0.0.1")])
    with pytest.raises(webhooks.WebhookRefused, match="private or local address"):
        webhooks.validate_webhook_url("https://hooks.example.com/x")


@pytest.mark.parametrize("url, message", [
    ("http://" + "a" * 600 + "/x", "host name is too long"),
    ("http://" + ".".join(["a" * 60] * 5) + "/x", "host name is too long"),  # 304 characters in short labels
    ("http://" + "a" * 64 + ".example.com/x", "not a valid host name"),
    ("https://hooks.example.com/" + "x" * 500, "longer than 500 characters"),
    ("https://user:secret@hooks.example.com/x", "must not contain a user name or password"),
    ("https://token@hooks.example.com/x", "must not contain a user name or password"),
    ("https://hooks.example.com:99999/x", "not a valid URL"),
    ("https://hooks.example.com:0/x", "between 1 and 65535"),
    ("https://[::1/x", "not a valid URL"),
    ("https://hooks.example.com/x y", "spaces or control characters"),
    ("https://hooks.example.com/x\r\nX-Injected: 1", "spaces or control characters"),
])
def test_malformed_urls_are_refused_with_what_is_wrong(url, message):
    with pytest.raises(webhooks.WebhookRefused, match=message):
        webhooks.validate_webhook_url(url)


@pytest.mark.parametrize("url", ["http://" + "a" * 600 + "/x", "https://u:p@hooks.example.com/x",
                                 "https://hooks.example.com:99999/x"])
def test_the_api_answers_422_and_stores_nothing_for_a_bad_webhook_url(alice, local_backend, url):
    _, key = tokens.token_create(user=alice, name="t")
    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/api/jobs", json.dumps({"prompt": "x", "webhook_url": url}), content_type="application/json")
    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "webhook_url"]
    assert error["msg"].startswith("The webhook") or error["msg"] == "String should have at most 500 characters"
    assert not Job.objects.exists()


# --- one resolution, and the connection goes to the checked address ------------------------
PUBLIC = "93.184.215.14"


def _addrinfo(address, port=443):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


class Rebinding:
    """DNS for one name that answers `answers` in turn (the last from then on; by default a
    public address first and 127.0.0.1 after: rebinding), in place of socket.getaddrinfo
    everywhere; and a network that carries public addresses' connections to the loopback
    receiver (those in `down` refuse), recording where each connection was meant to go."""

    def __init__(self, monkeypatch, name, answers=((PUBLIC,), ("127.0.0.1",)), down=()):
        self.name, self.lookups, self.connections = name, [], []
        real_getaddrinfo, real_connect = socket.getaddrinfo, urllib3.util.connection.create_connection

        def getaddrinfo(host, port, *args, **kwargs):
            if host != self.name:
                return real_getaddrinfo(host, port, *args, **kwargs)
            self.lookups.append(host)
            return [_addrinfo(address, port) for address in answers[min(len(self.lookups), len(answers)) - 1]]

        def create_connection(address, *args, **kwargs):
            self.connections.append(address)
            if address[0] in down:
                raise ConnectionRefusedError(111, "Connection refused")
            loopback = "127.0.0.1" if webhooks.is_public(ipaddress.ip_address(address[0])) else address[0]
            return real_connect((loopback, address[1]), *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(webhooks, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)


def test_a_rebinding_name_is_resolved_once_and_reached_at_the_checked_address(alice, receiver, local_backend,
                                                                              settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns = Rebinding(monkeypatch, "hooks.example.com")
    port = receiver.server.server_port
    job = _ended_job(alice, f"http://hooks.example.com:{port}/hook?k=1")

    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None

    assert dns.lookups == ["hooks.example.com"]  # one resolution for the check and the connection
    assert dns.connections == [(PUBLIC, port)]  # never 127.0.0.1, which the second answer would give
    [(headers, _)] = receiver.calls
    assert headers["Host"] == f"hooks.example.com:{port}"
    assert Job.objects.get(id=job.id).webhook_state == "delivered"


def test_the_next_checked_address_is_tried_when_one_refuses_the_connection(alice, receiver, local_backend,
                                                                          settings, monkeypatch, caplog):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns = Rebinding(monkeypatch, "hooks.example.com", answers=[("2606:4700::1", PUBLIC)], down={"2606:4700::1"})
    port = receiver.server.server_port
    job = _ended_job(alice, f"http://hooks.example.com:{port}/hook")
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    assert dns.lookups == ["hooks.example.com"] and dns.connections == [("2606:4700::1", port), (PUBLIC, port)]
    assert len(receiver.calls) == 1

    dns = Rebinding(monkeypatch, "hooks.example.com", answers=[("2606:4700::1",)], down={"2606:4700::1"})
    Job.objects.filter(id=job.id).update(webhook_state="pending", webhook_tries=0)  # a fresh first try
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2
    assert "could not connect to hooks.example.com at 2606:4700::1" in caplog.text


def test_an_allowed_private_host_is_resolved_once_and_reached_at_that_address(alice, receiver, local_backend,
                                                                            settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
    lookups = []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        return [_addrinfo("127.0.0.1", port)]

    monkeypatch.setattr(webhooks, "getaddrinfo", getaddrinfo)
    job = _ended_job(alice, f"http://hooks.internal:{receiver.server.server_port}/hook")
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    assert lookups == ["hooks.internal"] and receiver.calls[0][0]["Host"].startswith("hooks.internal:")


# --- TLS: the certificate and SNI are the host name's, though the connection is to an IP ----
@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A private CA (trusted through REQUESTS_CA_BUNDLE, as requests would be) and a server
    certificate from it for hooks.example.com."""
    ca = certificate_authority(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.bundle))
    return ca


def certificate_authority(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem(certificate):
        return certificate.public_bytes(serialization.Encoding.PEM)

    def build(subject, issuer, public_key, signing_key, *extensions):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key) \
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1)) \
            .not_valid_after(now + datetime.timedelta(days=1))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Comfy Hybrid test CA")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key,
                    (x509.BasicConstraints(ca=True, path_length=None), True))
    (folder / "ca.pem").write_bytes(pem(ca_cert))

    def issue(name):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key.public_key(), ca_key,
                     (x509.SubjectAlternativeName([x509.DNSName(name)]), False))
        (folder / f"{name}.pem").write_bytes(pem(cert))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return folder / f"{name}.pem", folder / f"{name}.key"

    return SimpleNamespace(bundle=folder / "ca.pem", issue=issue)


def _https_receiver(tls, name):
    server = WebhookReceiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls.issue(name))
    server.names = []
    context.sni_callback = lambda sock, sni, ctx: server.names.append(sni)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    return server


def test_tls_is_verified_for_the_host_name_though_the_connection_goes_to_the_checked_ip(
        alice, local_backend, settings, monkeypatch, tls):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns = Rebinding(monkeypatch, "hooks.example.com")
    server = _https_receiver(tls, "hooks.example.com")
    try:
        job = _ended_job(alice, f"https://hooks.example.com:{server.server.server_port}/hook")
        assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None
    finally:
        server.close()
    assert dns.connections == [(PUBLIC, server.server.server_port)] and server.names == ["hooks.example.com"]
    assert Job.objects.get(id=job.id).webhook_state == "delivered"


@pytest.mark.slow
def test_a_certificate_for_another_name_is_refused(alice, local_backend, settings, monkeypatch, tls, caplog):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    Rebinding(monkeypatch, "hooks.example.com")
    server = _https_receiver(tls, "other.example.com")
    try:
        job = _ended_job(alice, f"https://hooks.example.com:{server.server.server_port}/hook")
        assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2  # tried again later
    finally:
        server.close()
    assert server.calls == [] and Job.objects.get(id=job.id).webhook_state == "pending"
    assert "TLS with hooks.example.com failed" in caplog.text


# --- a slow receiver, and what the log says --------------------------------------------------
@pytest.mark.slow
def test_a_receiver_that_never_answers_is_given_up_on_after_the_timeout(alice, receiver, local_backend, settings,
                                                                         caplog):
    settings.WEBHOOK_TIMEOUT = 0.5
    receiver.hold = threading.Event()  # released at the end: the receiver sleeps far past the timeout
    try:
        job = _ended_job(alice, receiver.url)
        assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2
    finally:
        receiver.hold.set()
    assert len(receiver.calls) == 1 and Job.objects.get(id=job.id).webhook_state == "pending"
    assert "did not answer within 0.5 s" in caplog.text


def test_the_log_names_the_host_never_the_url_that_may_carry_a_token(alice, receiver, local_backend, caplog):
    receiver.statuses = [500]
    job = _ended_job(alice, receiver.url + "?token=SECRET-TOKEN-123")
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2
    assert "127.0.0.1 answered HTTP 500" in caplog.text and "SECRET-TOKEN-123" not in caplog.text


def test_two_copies_of_one_try_make_one_delivery_while_it_is_pending(alice, receiver, local_backend):
    receiver.statuses = [500, 500, 500]
    job = _ended_job(alice, receiver.url)
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) == 2
    assert webhooks.webhook_deliver(job_id=job.id, try_number=1) is None  # a copy of try 1: not made again

    assert len(receiver.calls) == 1 and Job.objects.get(id=job.id).webhook_tries == 1
