"""The client's address, for login throttling (django-axes' AXES_CLIENT_IP_CALLABLE).

Behind TRUSTED_PROXY_COUNT proxies (the TLS proxy of deploy/PRODUCTION.md: 1), REMOTE_ADDR is
the nearest proxy's, and each proxy appends the address it saw to X-Forwarded-For; the client is
that many entries from the right. Entries further left come from the client and are not trusted.
With no proxy (the default without HTTPS), it is REMOTE_ADDR."""
from django.conf import settings


def client_ip(request) -> str:
    count = settings.TRUSTED_PROXY_COUNT
    if count > 0:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR", "")
