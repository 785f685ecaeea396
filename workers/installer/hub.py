"""Hugging Face access tokens: which requests may carry one, and what a refusal means.

Gated models (a licence to accept first) and private ones answer 401/403 without a token. The
token comes from the environment under the names Hugging Face's own tools read (`HF_TOKEN`,
or the older `HUGGING_FACE_HUB_TOKEN`) and is sent as `Authorization: Bearer ...` to Hugging
Face hosts only: huggingface.co, hf.co and their subdomains. The downloader follows redirects
itself and asks `auth_headers` for every hop, so a redirect to a CDN or to any other host
never carries it. Nothing here formats the token into text, and the refusal messages name
the host that answered rather than its URL (a redirect target's query is often a signature).
"""
import os
import re
from typing import Mapping, Optional
from urllib.parse import urlsplit

from .errors import Failure

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # the first one set wins
HUB_DOMAINS = ("huggingface.co", "hf.co")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
# https://huggingface.co/<org>/<repo>/resolve/<revision>/<file>; datasets and spaces have a prefix.
_RESOLVE = re.compile(r"^/((?:datasets/|spaces/)?[^/]+/[^/]+)/resolve/")


def hub_token(environ: Optional[Mapping[str, str]] = None) -> str:
    """The token from the environment, or "" when none is set."""
    environ = os.environ if environ is None else environ
    return next((environ[name].strip() for name in TOKEN_VARIABLES if environ.get(name, "").strip()), "")


def is_hub(url: str) -> bool:
    """A Hugging Face host: the domains themselves or a subdomain, never a look-alike."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return any(host == domain or host.endswith("." + domain) for domain in HUB_DOMAINS)


def auth_headers(url: str, token: str) -> dict:
    """The headers a request to `url` carries for the token: none unless its host is Hugging Face's."""
    return {"Authorization": f"Bearer {token}"} if token and is_hub(url) else {}


def model_page(url: str) -> str:
    """The page of the model a .../resolve/... URL belongs to (where its licence is accepted), or ""."""
    match = _RESOLVE.match(urlsplit(url).path) if is_hub(url) else None
    return f"https://huggingface.co/{match.group(1)}" if match else ""


def refused(item, answered_url: str, status: int, *, token_sent: bool) -> Failure:
    """The Failure for a refusal retrying cannot fix (4xx), with the fix that fits who refused."""
    host = urlsplit(answered_url).hostname or answered_url
    cause = f"{item.label}: {item.url} answered HTTP {status}" + ("" if answered_url == item.url else f" (from {host})")
    if status in (401, 403) and is_hub(answered_url):
        return _hub_refusal(cause, item, status, token_sent)
    if status in (401, 403):
        return Failure(f"{cause}: {host} wants credentials, and the installer sends a token only to Hugging Face",
                       f"use a URL in the manifest that needs no sign-in, or put the file at {item.dest} yourself "
                       "(the installer checks its SHA-256 and keeps it)")
    return Failure(cause, "the URL in the manifest is wrong or the file moved: correct the manifest")


def _hub_refusal(cause: str, item, status: int, token_sent: bool) -> Failure:
    page = model_page(item.url) or "the model's page on huggingface.co"
    if status == 401 and token_sent:
        return Failure(f"{cause}: Hugging Face refused the token in HF_TOKEN",
                       f"the token is wrong, expired or revoked: create a new one at {TOKENS_PAGE}, set HF_TOKEN "
                       "to it and run the installer again")
    if status == 401:
        return Failure(f"{cause}: Hugging Face wants a token for this file",
                       f"set HF_TOKEN to a Hugging Face access token (create one at {TOKENS_PAGE}; 'Read' access "
                       f"is enough) and run the installer again; if the model is gated, also accept its licence "
                       f"on {page}")
    if token_sent:
        return Failure(f"{cause}: the model is gated and the account that owns HF_TOKEN has not been granted it",
                       f"open {page} signed in with the account that owns the token, accept the licence (some "
                       "models also wait for their authors' approval), then run the installer again")
    return Failure(f"{cause}: the model is gated",
                   f"accept its licence on {page}, create an access token of that account at {TOKENS_PAGE}, "
                   "set HF_TOKEN to it and run the installer again")
