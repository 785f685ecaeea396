"""Webhooks: one signed POST to the job's webhook URL when the job ends, retried on failure.

A webhook is the one place a user names a URL the server will call, so it is guarded: only
http(s), and hosts that resolve to public addresses unless listed in WEBHOOK_ALLOWED_HOSTS —
never the server's own loopback or the private network behind it (no SSRF).
"""
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from urllib.parse import urlparse

import requests
from django.conf import settings

from .api.serializers import job_dict
from .models import Job

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Comfy-Hybrid-Signature"


class WebhookRefused(ValueError):
    pass


def validate_webhook_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise WebhookRefused("The webhook URL must be an http:// or https:// URL.")
    host = parsed.hostname
    if host in settings.WEBHOOK_ALLOWED_HOSTS:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 443, proto=socket.IPPROTO_TCP)}
    except socket.gaierror:
        raise WebhookRefused(f"The webhook host {host} does not resolve.")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise WebhookRefused(f"The webhook host {host} is a private or local address; ask an administrator "
                                 "to allow it (WEBHOOK_ALLOWED_HOSTS).")


def sign(body: bytes) -> str:
    key = (settings.WEBHOOK_SECRET or settings.SECRET_KEY).encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def post(url: str, payload: dict) -> None:
    """One delivery attempt; raises requests.RequestException (or ValueError) on failure."""
    validate_webhook_url(url)  # again at send time: DNS may have changed since submission
    body = json.dumps(payload, sort_keys=True).encode()
    response = requests.post(url, data=body, timeout=settings.WEBHOOK_TIMEOUT, allow_redirects=False,
                             headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body)})
    if response.status_code >= 300:
        raise requests.HTTPError(f"webhook answered HTTP {response.status_code}")


def webhook_deliver(*, job_id, try_number: int):
    """Deliver the job's webhook once. Returns the countdown of the next try, or None."""
    job = Job.objects.select_related("backend").get(id=job_id)
    if job.webhook_state != "pending":
        return None  # delivered (or given up) already: a duplicate task does nothing
    payload = {"event": "job.finished", "job": job_dict(job, settings.SITE_URL)}
    try:
        post(job.webhook_url, payload)
    except (requests.RequestException, WebhookRefused) as error:
        log.warning("webhook of job %s, try %s: %s", job.id, try_number, error)
        if try_number >= settings.WEBHOOK_MAX_TRIES or isinstance(error, WebhookRefused):
            Job.objects.filter(id=job.id, webhook_state="pending").update(webhook_state="failed")
            return None
        return min(300, 2 ** try_number)
    Job.objects.filter(id=job.id, webhook_state="pending").update(webhook_state="delivered")
    return None
