"""Backend health with hysteresis: down after 3 failures in a row, up after 2 successes.

Probes (beat) and task outcomes both report here. The router only reads the stored state; it
never probes on the request path. A probe older than HEALTH_STALE_SECONDS counts as unknown.
"""
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .models import Backend, HealthState

FAILURES_TO_DOWN = 3
SUCCESSES_TO_UP = 2


def next_state(state: str, failures: int, successes: int) -> str:
    """The health state after a streak of `failures` or `successes` (one of them is 0)."""
    if failures >= FAILURES_TO_DOWN:
        return HealthState.DOWN
    if successes >= SUCCESSES_TO_UP:
        return HealthState.UP
    if state == HealthState.UNKNOWN and successes:
        return HealthState.UP  # first ever contact: no history to protect against flapping
    return state


@transaction.atomic
def health_record(*, backend_id: int, ok: bool, detail: str = "", latency_ms=None,
                  queue_depth=None, gpu: str = "", vram_total=None, misconfigured: bool = False) -> Backend:
    """`misconfigured`: a failure its own settings cause (a rejected key, an unknown model). It
    is not a blip that hysteresis should smooth over: the backend is down at once."""
    now = timezone.now()
    # Counter updates in SQL so concurrent reporters never lose a count.
    streak = {"consecutive_successes": F("consecutive_successes") + 1, "consecutive_failures": 0} if ok else \
        {"consecutive_failures": F("consecutive_failures") + 1, "consecutive_successes": 0}
    fields = {"last_probe_at": now, **streak}
    if ok:
        fields.update(last_ok_at=now, latency_ms=latency_ms, last_error="")
        if queue_depth is not None:
            fields["queue_depth"] = queue_depth
        if gpu:
            fields.update(gpu_name=gpu, vram_total=vram_total)
    else:
        fields["last_error"] = detail[:2000]
        if misconfigured:
            fields["consecutive_failures"] = F("consecutive_failures") + FAILURES_TO_DOWN
    Backend.objects.filter(id=backend_id).update(**fields)
    backend = Backend.objects.select_for_update().get(id=backend_id)
    state = next_state(backend.health, backend.consecutive_failures, backend.consecutive_successes)
    if state != backend.health:
        down_since = now if state == HealthState.DOWN else None
        Backend.objects.filter(id=backend_id).update(health=state, down_since=down_since)
        backend.health, backend.down_since = state, down_since
    return backend


def success_seen(*, backend_id: int) -> None:
    """A job just succeeded there. Already up: one conditional update (its success streak and
    timestamps); otherwise the full record, which may bring it up."""
    now = timezone.now()
    if not Backend.objects.filter(id=backend_id, health=HealthState.UP).update(
            last_probe_at=now, last_ok_at=now, last_error="", consecutive_failures=0,
            consecutive_successes=F("consecutive_successes") + 1):
        health_record(backend_id=backend_id, ok=True)


def effective_health(backend: Backend, now=None) -> str:
    """Stored state, or unknown when the last probe is too old to trust."""
    now = now or timezone.now()
    stale = timedelta(seconds=settings.HEALTH_STALE_SECONDS)
    if backend.last_probe_at is None or now - backend.last_probe_at > stale:
        return HealthState.UNKNOWN
    return backend.health


def health_detail(backend: Backend) -> str:
    if backend.health != HealthState.DOWN:
        return ""
    since = f"since {backend.down_since:%H:%M} UTC" if backend.down_since else ""
    return " ".join(part for part in (since, f"({backend.last_error})" if backend.last_error else "") if part)
