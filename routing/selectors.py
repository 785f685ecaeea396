"""Reads: what the router and the pages need, built from the database."""
from decimal import Decimal

from django.db.models import Count, Q

from billing import caps
from billing.pricing import gemini_video_price

from .backends import missing_settings
from .health import effective_health, health_detail
from .models import ACTIVE_ATTEMPT_STATES, Attempt, Backend, Category, Job, JobKind
from .policy import Candidate, JobFacts


def job_for_user(*, user, job_id) -> Job:
    """The user's own job, or Job.DoesNotExist (→ 404) for anyone else's."""
    return Job.objects.select_related("backend").get(id=job_id, user=user)


def jobs_for_user(*, user, status: str = "", backend: str = ""):
    jobs = Job.objects.filter(user=user).select_related("backend")
    if status:
        jobs = jobs.filter(status=status)
    if backend:
        jobs = jobs.filter(backend__category=backend)
    return jobs


def in_flight_by_backend(backend_ids=None) -> dict[int, int]:
    """Our attempts in flight per backend (only for `backend_ids` when given: the router needs
    them for local GPUs alone, and the count grows with the backlog)."""
    attempts = Attempt.objects.filter(status__in=ACTIVE_ATTEMPT_STATES)
    if backend_ids is not None:
        if not backend_ids:
            return {}
        attempts = attempts.filter(backend_id__in=backend_ids)
    rows = attempts.values("backend").annotate(n=Count("id")).order_by()
    return {row["backend"]: row["n"] for row in rows}


def in_flight_by_user() -> dict[int, int]:
    rows = Attempt.objects.filter(status__in=ACTIVE_ATTEMPT_STATES).values("job__user").annotate(n=Count("id"))
    return {row["job__user"]: row["n"] for row in rows}


def estimate(backend: Backend, job: Job) -> tuple[Decimal, float]:
    """Expected marginal cost (USD) and seconds of this job on this backend."""
    seconds = backend.expected_video_seconds if job.kind == JobKind.VIDEO else backend.expected_image_seconds
    if backend.category == Category.LOCAL:
        return Decimal("0"), seconds
    if backend.kind == Backend.Kind.GEMINI:
        if job.kind == JobKind.VIDEO:
            return gemini_video_price(backend, job.duration_seconds), seconds
        return backend.price_per_image, seconds
    if backend.kind == Backend.Kind.POD:  # nothing extra on a running pod with room, else a new pod
        from workers.pods.selectors import pod_estimate

        return pod_estimate(backend, seconds)
    return (backend.price_per_second * Decimal(str(seconds))).quantize(Decimal("0.000001")), seconds


def candidates_for(job: Job, refused: dict | None = None) -> list[Candidate]:
    """Every backend as a policy candidate. `refused`: backend id → cap refusal met while
    taking a hold in this same routing pass."""
    refused = refused or {}
    result = []
    # Locked in a fixed order for the routing transaction: concurrent routers decide one
    # after another, so "queue below the limit" can never be true for two of them at once.
    backends = list(Backend.objects.select_for_update().order_by("id"))
    in_flight = in_flight_by_backend([b.id for b in backends if b.category == Category.LOCAL])
    budget = caps.Budget.for_user(job.user_id)  # the caps, read once per decision
    for backend in backends:
        missing = missing_settings(backend)
        usable = backend.enabled and not missing
        cost, seconds = estimate(backend, job) if usable else (Decimal("0"), 0.0)
        result.append(Candidate(
            id=backend.id, name=backend.name, category=backend.category, enabled=backend.enabled,
            configured=not missing, missing=", ".join(f"{m} not set" for m in missing),
            health=effective_health(backend), health_detail=health_detail(backend),
            supports_video=backend.supports_video, supports_workflows=backend.supports_workflows,
            queue=backend.queue_depth + in_flight.get(backend.id, 0),
            cost=cost, seconds=seconds, priority=backend.priority,
            cap_refusal=refused.get(backend.id) or (budget.refusal(cost) if cost else ""),
        ))
    return result


def job_facts(job: Job) -> JobFacts:
    failed = job.attempts.filter(~Q(status__in=ACTIVE_ATTEMPT_STATES), retryable=True)
    return JobFacts(kind=job.kind, preference=job.preference, custom_workflow=job.is_custom_workflow,
                    excluded=frozenset(failed.values_list("backend_id", flat=True)))


class Availability:
    AVAILABLE = "available"
    BUSY = "busy"
    DOWN = "down"
    NOT_CONFIGURED = "not configured"
    DISABLED = "disabled"
    INSTALLING = "installing"
    CHECKING = "checking"


def backend_cards(*, kind: str, local_queue_limit: int, installing: bool = False) -> list[dict]:
    """Every backend as the selector page shows it: status, expected cost and time, GPU."""
    in_flight = in_flight_by_backend()
    probe_job = Job(kind=kind, duration_seconds=4 if kind == JobKind.VIDEO else 0)
    cards = []
    for backend in Backend.objects.all():
        queue = backend.queue_depth + in_flight.get(backend.id, 0)
        cost, seconds = estimate(backend, probe_job)
        cards.append({
            "backend": backend, "status": _availability(backend, queue, local_queue_limit, installing),
            "queue": queue, "cost": cost, "seconds": seconds, "missing": missing_settings(backend),
            "detail": health_detail(backend),
            "can_run": backend.supports_video or kind != JobKind.VIDEO,
        })
    return cards


def _availability(backend: Backend, queue: int, limit: int, installing: bool) -> str:
    if installing and backend.category == Category.LOCAL:
        return Availability.INSTALLING
    if not backend.enabled:
        return Availability.DISABLED
    if missing_settings(backend):
        return Availability.NOT_CONFIGURED
    health = effective_health(backend)
    if health == "down":
        return Availability.DOWN
    if health == "unknown":
        return Availability.CHECKING
    if backend.category == Category.LOCAL and queue >= limit:
        return Availability.BUSY
    return Availability.AVAILABLE


def queue_position(job: Job) -> dict | None:
    """How many jobs are ahead of this one, and where: {"ahead": n, "backend": name}.

    A job waiting for the local GPU counts the waiting jobs admitted before it (same order as
    admission) plus the GPU's current queue; a job queued on a backend uses the position the
    backend last reported."""
    from django.conf import settings
    from django.utils import timezone

    from .services import admission_order

    if job.status == "queued" and job.waiting:
        local = Backend.objects.filter(category=Category.LOCAL, enabled=True).order_by("priority").first()
        waiting = list(Job.objects.filter(status="queued", waiting=True)
                       .values("id", "user_id", "priority", "created_at")[:1000])
        now, in_flight = timezone.now(), in_flight_by_user()
        order = sorted(waiting, key=lambda j: admission_order(j, in_flight, now))
        ahead = next((i for i, j in enumerate(order) if j["id"] == job.id), len(order))
        busy = (local.queue_depth + in_flight_by_backend().get(local.id, 0)) if local else 0
        return {"ahead": ahead + busy, "backend": local.name if local else "local"}
    attempt = job.attempts.filter(status__in=("submitted", "pending")).order_by("-number").first()
    if attempt and attempt.queue_position is not None:
        return {"ahead": attempt.queue_position, "backend": attempt.backend.name}
    return None
