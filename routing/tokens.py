"""Per-user API tokens: random keys of which only a SHA-256 digest is stored."""
import hashlib
import secrets
from datetime import timedelta

from django.utils import timezone

from .models import ApiToken

PREFIX = "chy_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Make a token; the key is returned once and never stored."""
    key = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100] or "API token", prefix=key[:10], digest=_digest(key))
    return token, key


def token_user(key: str):
    """The active user of a key, or None."""
    if not key or not key.startswith(PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(digest=_digest(key)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(id=token.id).update(last_used_at=now)  # throttled: not a write per call
    return token.user


def token_revoke(*, user, token_id: int) -> bool:
    return ApiToken.objects.filter(id=token_id, user=user).delete()[0] > 0
