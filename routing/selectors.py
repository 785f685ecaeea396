"""Reads: what the router and the pages need, built from the database."""
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import caps, pricing
from workers.pods.selectors import pod_room
from workers.workflows import build_workflow
from workers.workflows.requirements import Inventory, requirements_of

from . import previews
from .backends import missing_settings
from .health import effective_health, health_detail
from .models import ACTIVE_ATTEMPT_STATES, Attempt, AttemptStatus, Backend, Category, Job, JobKind
from .policy import Candidate, JobFacts, has_room, local_horizon


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


def in_flight_by_backend(category: str = "") -> dict[int, int]:
    """Our attempts in flight per backend (only on backends of `category` when given: the router
    needs them for local GPUs alone, and the count grows with the backlog; a join, not a list
    of every local backend's id, so a fleet's size does not grow the statement)."""
    attempts = Attempt.objects.filter(status__in=ACTIVE_ATTEMPT_STATES)
    if category:
        attempts = attempts.filter(backend__category=category)
    rows = attempts.values("backend").annotate(n=Count("id")).order_by()
    return {row["backend"]: row["n"] for row in rows}


def local_room(*, limit: int) -> bool:
    """Whether any local GPU that is enabled and not down has room for one more job of either
    kind, by the router's rule (policy.has_room: the limit, and in a fleet the horizon of work)."""
    local = list(Backend.objects.filter(category=Category.LOCAL, enabled=True).exclude(health="down")
                 .values("id", "queue_depth", "expected_image_seconds", "expected_video_seconds"))
    in_flight = in_flight_by_backend(Category.LOCAL) if local else {}
    for seconds in ("expected_image_seconds", "expected_video_seconds"):
        horizon = local_horizon([row[seconds] for row in local], limit)
        if any(has_room(row["queue_depth"] + in_flight.get(row["id"], 0), row[seconds], limit=limit, horizon=horizon)
               for row in local):
            return True
    return False


def in_flight_by_user() -> dict[int, int]:
    rows = Attempt.objects.filter(status__in=ACTIVE_ATTEMPT_STATES).values("job__user").annotate(n=Count("id"))
    return {row["job__user"]: row["n"] for row in rows}


def estimate(backend: Backend, job: Job) -> tuple[Decimal, float]:
    """Expected marginal cost (USD) and seconds of this job on this backend: its kind's entry
    in the pricing table, which reads the live pods' room through the pod selectors."""
    return pricing.estimate(backend, job, pod_room=pod_room)


def locked_backends() -> list[Backend]:
    """Every backend, locked in a fixed order for the routing transaction: concurrent routers
    decide one after another, so "queue below the limit" can never be true for two at once.
    The inventory column (tens of kB per ComfyUI) is not read here: routing_inventories()
    keeps each one parsed, per process, until its `inventory_at` changes."""
    return list(Backend.objects.select_for_update().defer("inventory").order_by("id"))


# Parsed inventories by backend id: (inventory_at when read, Inventory or None). Every change of
# an inventory sets inventory_at (routing/inventory.py), to a new time or to None ("read it
# again"), and None is never cached, so a stale entry is never used.
_INVENTORIES: dict = {}


def routing_inventories(backends: list[Backend]) -> dict:
    """{backend id: Inventory or None} for `backends` (rows read without their inventory): the
    parsed ones kept from earlier decisions, the others read and parsed in one query. A kind
    that runs no ComfyUI (Gemini) has none: nothing to read."""
    found, misses = {}, []
    for backend in backends:
        cached = _INVENTORIES.get(backend.id)
        if backend.kind not in HAS_INVENTORY:
            found[backend.id] = None
        elif backend.inventory_at is not None and cached and cached[0] == backend.inventory_at:
            found[backend.id] = cached[1]
        else:
            misses.append(backend.id)
    if misses:
        for backend_id, inventory, read_at, config in Backend.objects.filter(id__in=misses).values_list(
                "id", "inventory", "inventory_at", "config"):
            found[backend_id] = Inventory.from_json(inventory or (config or {}).get("inventory"))
            if read_at is not None:
                _INVENTORIES[backend_id] = (read_at, found[backend_id])
    return found


def attempts_made():
    """A job's attempts so far, as an annotation of the job's own row (read with it: no query of
    its own)."""
    return Coalesce(Subquery(Attempt.objects.filter(job=OuterRef("pk")).order_by().values("job").annotate(
        n=Count("id")).values("n")), 0)


def candidates_for(job: Job, refused: dict | None = None, backends: list | None = None,
                   budget=None) -> list[Candidate]:
    """Every backend as a policy candidate. `refused`: backend id → cap refusal met while
    taking a hold in this same routing pass; `backends`: the locked rows, when the caller
    has them (else they are locked here); `budget`: the user's caps, when the caller has them."""
    refused = refused or {}
    result = []
    backends = locked_backends() if backends is None else backends
    # Only a usable backend's inventory can decide anything (a disabled or unconfigured one is
    # refused for that first).
    inventories = routing_inventories([b for b in backends if b.enabled and not missing_settings(b)])
    in_flight = in_flight_by_backend(Category.LOCAL) if any(b.category == Category.LOCAL for b in backends) else {}
    budget = budget or caps.Budget.lazy(job.user_id)  # the caps, read once, and only for a priced candidate
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
            inventory=inventories.get(backend.id), install_hint=INSTALL_HINTS.get(backend.kind, ""),
        ))
    return result


# Where a missing model comes from, per backend kind (the end of a "lacks ..." reason).
INSTALL_HINTS = {
    Backend.Kind.COMFYUI: "install it on that ComfyUI (for the local GPU: the Local GPU page)",
    Backend.Kind.POD: "add it to the pods' models (deploy/runpod-worker)",
    Backend.Kind.RUNPOD: "add it to the endpoint's image and to the inventory in the backend's config",
}
# The kinds that run ComfyUI, so have an inventory (probed, or declared in their config).
HAS_INVENTORY = frozenset(INSTALL_HINTS)


def backend_inventory(backend: Backend):
    """What the backend can run: read from ComfyUI by the probe, or declared by staff in
    `config["inventory"]` (the serverless endpoint, whose ComfyUI cannot be asked). None: unknown."""
    return Inventory.from_json(backend.inventory or backend.config.get("inventory"))


def attempts_of(job: Job) -> list[Attempt]:
    """A job's attempts with their backends, by number, read once: the prefetched ones when a
    list prefetched them (`attempts__backend`), else one query."""
    if "attempts" in getattr(job, "_prefetched_objects_cache", {}):
        return list(job.attempts.all())
    return list(job.attempts.select_related("backend"))


def job_timeline(job: Job, attempts: list | None = None) -> list[dict]:
    """Each attempt with what happened next, worded truthfully: tried again on the same
    backend, moved to another, waited for an outage, or the end."""
    attempts = attempts_of(job) if attempts is None else attempts
    steps = []
    for attempt, after in zip(attempts, attempts[1:] + [None]):
        steps.append({"attempt": attempt, "next": _what_came_next(attempt, after, job)})
    return steps


def _what_came_next(attempt: Attempt, after, job: Job) -> str:
    if attempt.status != AttemptStatus.FAILED or not attempt.retryable:
        return ""
    why = f"{attempt.backend.name} was unreachable" if attempt.outage else "the backend was at fault"
    if after is None:
        return f"{why.capitalize()}; the job is waiting for a backend." if job.waiting else ""
    if after.backend_id == attempt.backend_id:
        return f"{why.capitalize()}, so the job was tried again on {attempt.backend.name}."
    return f"{why.capitalize()}, so the job moved to {after.backend.name}."


def inventory_summary(backend: Backend) -> dict:
    """For the pages: what the backend has, by folder, and where that came from."""
    inventory = backend_inventory(backend)
    if inventory is None:
        return {"known": False}
    models = {folder: sorted(files) for folder, files in sorted(inventory.models.items()) if files}
    source = (backend.inventory or {}).get("source") or "declared in config"
    return {"known": True, "models": models, "model_count": sum(len(f) for f in models.values()),
            "node_count": len(inventory.nodes) if inventory.nodes is not None else None,
            "read_at": backend.inventory_at, "source": source}


def job_workflow(job: Job) -> dict:
    """The ComfyUI workflow of a job: its own, or the bundled template filled with its prompt."""
    if job.workflow is not None:
        return job.workflow
    return build_workflow(kind=job.kind, prompt=job.prompt, negative_prompt=job.negative_prompt,
                          width=job.width, height=job.height, seed=job.seed,
                          duration_seconds=job.duration_seconds)


def job_facts(job: Job, tried: int | None = None) -> JobFacts:
    """What the policy knows of the job. `tried`: its attempts so far, when the caller counted
    them (none: nothing excluded or lost, and no query for them)."""
    if tried == 0:
        return JobFacts(kind=job.kind, preference=job.preference, custom_workflow=job.is_custom_workflow,
                        requires=requirements_of(job_workflow(job)))
    ended = job.attempts.filter(~Q(status__in=ACTIVE_ATTEMPT_STATES), retryable=True)
    lost = ended.filter(outage=True, status=AttemptStatus.FAILED).filter(
        Q(backend__last_ok_at__isnull=True) | Q(backend__last_ok_at__lte=F("finished_at")))
    return JobFacts(kind=job.kind, preference=job.preference, custom_workflow=job.is_custom_workflow,
                    excluded=frozenset(ended.filter(outage=False).values_list("backend_id", flat=True)),
                    requires=requirements_of(job_workflow(job)),
                    lost=frozenset(lost.values_list("backend_id", flat=True)))


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
    needs = requirements_of(job_workflow(probe_job))
    cards = []
    for backend in Backend.objects.all():
        queue = backend.queue_depth + in_flight.get(backend.id, 0)
        cost, seconds = estimate(backend, probe_job)
        inventory = backend_inventory(backend) if backend.supports_workflows else None
        cards.append({
            "backend": backend, "status": _availability(backend, queue, local_queue_limit, installing),
            "queue": queue, "cost": cost, "seconds": seconds, "missing": missing_settings(backend),
            "detail": health_detail(backend),
            "can_run": backend.supports_video or kind != JobKind.VIDEO,
            "inventory": inventory_summary(backend) if backend.supports_workflows else None,
            "lacks": inventory.lacks(needs) if inventory else [],
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


def admission_order(job: dict, in_flight: dict, now) -> tuple:
    """Sort key of a waiting job: effective priority (its priority plus one level per
    PRIORITY_AGING_SECONDS waited, so nothing starves), then the user's jobs in flight, then age."""
    aged = (now - job["created_at"]).total_seconds() / settings.PRIORITY_AGING_SECONDS
    return (-int(job["priority"] + aged), in_flight.get(job["user_id"], 0), job["created_at"])


def queue_position(job: Job, active: Attempt | None = None) -> dict | None:
    """How many jobs are ahead of this one, and where: {"ahead": n, "backend": name}.

    A job waiting for the local GPU counts the waiting jobs admitted before it (same order as
    admission) plus the GPU's current queue; a job queued on a backend uses the position the
    backend last reported."""
    if job.status == "queued" and job.waiting:
        local = Backend.objects.filter(category=Category.LOCAL, enabled=True).order_by("priority").first()
        waiting = list(Job.objects.filter(status="queued", waiting=True)
                       .values("id", "user_id", "priority", "created_at")[:1000])
        now, in_flight = timezone.now(), in_flight_by_user()
        order = sorted(waiting, key=lambda j: admission_order(j, in_flight, now))
        ahead = next((i for i, j in enumerate(order) if j["id"] == job.id), len(order))
        busy = (local.queue_depth + in_flight_by_backend().get(local.id, 0)) if local else 0
        return {"ahead": ahead + busy, "backend": local.name if local else "local"}
    attempt = active if active is not None else job.attempts.filter(
        status__in=("submitted", "pending")).select_related("backend").order_by("-number").first()
    if attempt and attempt.queue_position is not None:
        return {"ahead": attempt.queue_position, "backend": attempt.backend.name}
    return None


# --- watching a job run -------------------------------------------------------------------
def running_attempt(job: Job) -> Attempt | None:
    if job.status != "running":
        return None
    return job.attempts.filter(status=AttemptStatus.RUNNING).select_related("backend").order_by("-number").first()


def job_watch(job: Job, attempts: list) -> dict:
    """What the job page and the API show of a job in flight, from its attempts read once
    (`attempts_of`): jobs ahead, time left, and the running attempt's live preview version."""
    active = next((a for a in reversed(attempts) if a.status in ACTIVE_ATTEMPT_STATES), None)
    running = active if job.status == "running" and active and active.status == AttemptStatus.RUNNING else None
    return {"position": queue_position(job, active), "eta": job_eta(job, active) if active else None,
            "running": running, "preview_version": previews.version(running.id) if running else None}


def job_preview(job: Job) -> tuple[str, bytes] | None:
    attempt = running_attempt(job)
    return previews.latest(attempt.id) if attempt else None


def job_eta(job: Job, attempt: Attempt, now=None) -> int | None:
    """Seconds until the job should be done, from what its backend has been learned to take for
    this kind of job: the time left of its `attempt`'s run (the active one), or, queued on a
    backend, the runs ahead too."""
    now = now or timezone.now()
    if attempt is None or job.is_final:
        return None
    backend = attempt.backend
    expected = backend.expected_video_seconds if job.kind == JobKind.VIDEO else backend.expected_image_seconds
    if not expected:
        return None
    if attempt.running_at:
        left = expected - (now - attempt.running_at).total_seconds()
        return round(left) if left >= 1 else None  # past its learned time: no honest estimate left
    return round(expected * (1 + (attempt.queue_position or 0)))


PREFERENCE_CATEGORIES = ("local", "cloud", "gemini")  # every "where to run" choice but auto


def unavailable_preferences() -> dict[str, str]:
    """Each "where to run" choice that nothing here can run, with why: no backend of that
    category is both enabled and configured. Such a choice is refused at submit and is never
    offered (or remembered) as a default."""
    backends = list(Backend.objects.only("kind", "category", "enabled"))  # one read for every choice
    usable = {b.category for b in backends if b.enabled and not missing_settings(b)}
    reasons = {}
    for category in PREFERENCE_CATEGORIES:
        if category not in usable:
            missing = sorted({s for b in backends if b.category == category for s in missing_settings(b)})
            reasons[category] = (f"Not set up on this installation ({', '.join(missing)} missing)" if missing
                                 else "Switched off on this installation") + ": choose Auto or another option."
    return reasons
