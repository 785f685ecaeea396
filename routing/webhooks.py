"""Webhooks: one signed POST to the job's webhook URL when the job ends, retried on failure.

A webhook is the one place a user names a URL the server will call, so it is guarded (no SSRF):
only http(s), no credentials in the URL, and a host whose every address is public unless the
host is listed in WEBHOOK_ALLOWED_HOSTS — never the server's own loopback or the private network
behind it, whatever form the address takes (an IPv6 address that embeds an IPv4 one is judged
by the IPv4 it embeds).

A delivery resolves the host once, checks every address, and connects to a checked address
only: the TCP connection goes to that IP, while the Host header, TLS SNI and the certificate
check use the URL's host name. A name that answers a public address to the check and 127.0.0.1
to the connection (DNS rebinding) therefore reaches the public one. For the same reason no
HTTP(S)_PROXY is used: a proxy would resolve the name again.

Deliveries run on their own queue and worker (project/queues.py, WEBHOOKS) with a short timeout
(WEBHOOK_TIMEOUT, connect and read), so a slow receiver delays only webhooks, never routing.
"""
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass, replace
from datetime import timedelta
from socket import getaddrinfo  # the one resolution of a delivery; tests replace it here
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.utils import timezone
from requests.certs import where as default_ca_bundle
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ReadTimeoutError, SSLError

from .serializers import job_dict
from .models import Job

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Comfy-Hybrid-Signature"
MAX_URL_LENGTH = Job._meta.get_field("webhook_url").max_length
MAX_HOST_LENGTH = 253  # RFC 1035: a name of at most 253 characters, in labels of at most 63
MAX_LABEL_LENGTH = 63
HOST_TOO_LONG = (f"The webhook host name is too long (at most {MAX_HOST_LENGTH} characters, "
                 f"{MAX_LABEL_LENGTH} between dots).")
DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookRefused(ValueError):
    """The URL may never be called (permanent): a clear message for the user."""


class WebhookFailed(Exception):
    """One delivery attempt failed (retryable). The message names the host, never the URL."""


# IANA special-purpose ranges that are no webhook receiver, beyond what Python's flags say (and
# whatever Python version says it): shared address space, benchmarking, documentation, relays.
_NOT_PUBLIC = {
    4: [ipaddress.ip_network(net) for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")],
    6: [ipaddress.ip_network(net) for net in (
        "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
        "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")],
}
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (RFC 4291)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix (RFC 6052)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped, IPv4-compatible, NAT64,
    6to4 (2002::/16), Teredo (2001::/32: its server and its client). Empty for a plain one.
    (64:ff9b:1::/48, local-use NAT64, puts the IPv4 where its operator chose: never public.)"""
    if ip.ipv4_mapped:
        return (ip.ipv4_mapped,)
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip.sixtofour:
        return (ip.sixtofour,)
    return ip.teredo or ()


def is_public(ip) -> bool:
    """A public unicast address: not private, loopback, link-local, multicast, reserved,
    unspecified, shared (100.64/10), benchmarking or documentation, in any of its forms."""
    if ip.version == 6 and (embedded := embedded_ipv4(ip)):
        return all(is_public(address) for address in embedded)
    flagged = (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
               or ip.is_unspecified)
    return ip.is_global and not flagged and not any(ip in net for net in _NOT_PUBLIC[ip.version])


@dataclass(frozen=True)
class Target:
    """Where a webhook goes: the URL's parts and the checked addresses to connect to."""

    scheme: str
    host: str  # ASCII (IDNA), lower case, no brackets
    port: int
    path: str  # path and query
    addresses: tuple = ()  # the checked ones, in the resolver's order

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_webhook_url(url: str) -> Target:
    """The URL's parts, or WebhookRefused saying what is wrong with it (nothing is resolved)."""
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        raise WebhookRefused("The webhook URL must not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed [ or a port that is not a number in 1-65535
        raise WebhookRefused("The webhook URL is not a valid URL (check the host and the port).")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("The webhook URL must be an http:// or https:// URL.")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("The webhook URL must not contain a user name or password: they would be stored "
                             f"and sent in clear; check the {SIGNATURE_HEADER} header instead.")
    if port == 0:
        raise WebhookRefused("The webhook URL's port must be between 1 and 65535.")
    host = _ascii_host(parts.hostname)
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme], path)


def _ascii_host(host: str) -> str:
    if len(host) > MAX_HOST_LENGTH:
        raise WebhookRefused(HOST_TOO_LONG)
    if ":" in host:
        return host  # an IPv6 literal (urlsplit took it out of its brackets)
    try:
        ascii_host = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:  # a label over 63 characters, an empty label, or a name IDNA refuses
        raise WebhookRefused("The webhook host is not a valid host name (at most "
                             f"{MAX_LABEL_LENGTH} characters between dots).")
    if len(ascii_host) > MAX_HOST_LENGTH:  # an international name grows in its ASCII form
        raise WebhookRefused(HOST_TOO_LONG)
    return ascii_host


def webhook_target(url: str) -> Target:
    """Parse the URL, resolve its host once and check every address it resolves to."""
    target = parse_webhook_url(url)
    addresses = _resolve(target.host, target.port)
    if target.host not in {host.lower().rstrip(".") for host in settings.WEBHOOK_ALLOWED_HOSTS}:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address)):
                raise WebhookRefused(f"The webhook host {target.host} is a private or local address; ask an "
                                     "administrator to allow it (WEBHOOK_ALLOWED_HOSTS).")
    return replace(target, addresses=addresses)


def validate_webhook_url(url: str) -> None:
    """At submission: any doubt is the submitter's to fix or retry (a 422), never a 500."""
    try:
        webhook_target(url)
    except WebhookFailed as failed:
        raise WebhookRefused(f"The webhook URL cannot be checked: {failed}. Try again in a moment.")


def _resolve(host: str, port: int) -> tuple:
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        if error.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):  # the resolver, not the name
            raise WebhookFailed(f"the name {host} could not be looked up just now ({error.strerror})")
        raise WebhookRefused(f"The webhook host {host} does not resolve.")
    except UnicodeError:
        raise WebhookRefused(f"The webhook host {host} does not resolve.")
    return tuple(dict.fromkeys(info[4][0].split("%")[0] for info in infos))  # in order, no zone index


def sign(body: bytes) -> str:
    key = settings.WEBHOOK_SECRET.encode()  # never SECRET_KEY itself (settings derive one when unset)
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def post(url: str, payload: dict) -> None:
    """One delivery attempt: WebhookRefused (permanent) or WebhookFailed (retryable) on failure."""
    target = webhook_target(url)  # again at send time: DNS may have changed since submission
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Host": target.host_header, "Content-Type": "application/json", SIGNATURE_HEADER: sign(body),
               "User-Agent": "comfy-hybrid-webhook"}
    status = _send(target, body, headers)
    if status >= 300:
        raise WebhookFailed(f"{target.host} answered HTTP {status}")


def _send(target: Target, body: bytes, headers: dict) -> int:
    """POST to the first checked address that takes the connection; the HTTP status."""
    for address in target.addresses:
        try:
            return _send_to(target, address, body, headers)
        except ConnectTimeoutError:  # also NewConnectionError: on to the next checked address
            if address == target.addresses[-1]:
                raise WebhookFailed(f"could not connect to {target.host} at {address}")
        except ReadTimeoutError:
            raise WebhookFailed(f"{target.host} did not answer within {settings.WEBHOOK_TIMEOUT:g} s")
        except SSLError as error:
            raise WebhookFailed(f"TLS with {target.host} failed: {error}")
        except HTTPError as error:  # the connection broke, or the answer was not HTTP
            raise WebhookFailed(f"{target.host}: {type(error).__name__}: {error}")


def _send_to(target: Target, address: str, body: bytes, headers: dict) -> int:
    with _pool(target, address) as pool:
        response = pool.urlopen("POST", target.path, body=body, headers=headers, redirect=False,
                                assert_same_host=False, preload_content=False)
        response.release_conn()  # the status is all we need: the body is never read
        return response.status


def _pool(target: Target, address: str):
    """A pool of one connection to `address`; TLS sends and verifies the URL's host name."""
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_TIMEOUT, read=settings.WEBHOOK_TIMEOUT)
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False, maxsize=1)
    return urllib3.HTTPSConnectionPool(
        address, target.port, timeout=timeout, retries=False, maxsize=1, cert_reqs="CERT_REQUIRED",
        server_hostname=target.host, assert_hostname=target.host, **_trust_store())


def _trust_store() -> dict:
    # The CA bundle requests would use: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else certifi's.
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or default_ca_bundle()
    return {"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}


TRY_LIFETIME_SECONDS = 60  # a delivery task's soft time limit: a try still open after it is lost


def webhook_deliver(*, job_id, try_number: int):
    """Deliver the job's webhook once. Returns the countdown of the next try, or None."""
    job = Job.objects.select_related("backend").get(id=job_id)
    if job.webhook_state != "pending":
        return None  # delivered (or given up) already: a duplicate task does nothing
    # Claimed, like a poll's seq: a try is made once, by the first of its copies to come (the
    # sweeper re-sends a try that looks lost, and the original may only have been waiting).
    # If this try never ends (its worker dies), the sweeper sends the next once this is past.
    if not Job.objects.filter(id=job.id, webhook_state="pending", webhook_tries=try_number - 1).update(
            webhook_tries=try_number, webhook_due_at=timezone.now() + timedelta(seconds=TRY_LIFETIME_SECONDS)):
        return None
    payload = {"event": "job.finished", "job": job_dict(job, settings.SITE_URL)}
    try:
        post(job.webhook_url, payload)
    except (WebhookFailed, WebhookRefused) as error:
        log.warning("webhook of job %s, try %s: %s", job.id, try_number, error)
        if try_number >= settings.WEBHOOK_MAX_TRIES or isinstance(error, WebhookRefused):
            Job.objects.filter(id=job.id, webhook_state="pending").update(webhook_state="failed")
            return None
        countdown = min(300, 2 ** try_number)
        Job.objects.filter(id=job.id, webhook_state="pending").update(
            webhook_due_at=timezone.now() + timedelta(seconds=countdown))
        return countdown
    Job.objects.filter(id=job.id, webhook_state="pending").update(webhook_state="delivered")
    return None
