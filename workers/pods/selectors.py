"""Reads about pods, all from our own rows: room on each pod, jobs waiting for one, idle time."""
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Optional

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from billing.prices import pod_hourly_estimate, serverless_price_per_second
from billing.pricing import PodRoom
from routing.models import ACTIVE_ATTEMPT_STATES, ACTIVE_JOB_STATES, Attempt, AttemptStatus, Backend, Category

from .models import LIVE, USABLE, CloudPod, PodAssignment, PodStatus


def active_counts(pod_ids) -> dict[int, int]:
    """Jobs in flight per pod."""
    rows = (PodAssignment.objects.filter(pod_id__in=list(pod_ids), attempt__status__in=ACTIVE_ATTEMPT_STATES)
            .values("pod_id").annotate(n=Count("id")))
    return {row["pod_id"]: row["n"] for row in rows}


def room(pods, counts: dict) -> int:
    return sum(max(0, settings.RUNPOD_POD_MAX_JOBS - counts.get(pod.id, 0)) for pod in pods)


def waiting_attempts(backend_id: int):
    """Attempts routed to pods that no pod has taken yet, oldest first."""
    return (Attempt.objects.filter(backend_id=backend_id, status=AttemptStatus.PENDING, pod_assignment__isnull=True,
                                   job__status__in=ACTIVE_JOB_STATES).order_by("created_at"))


def last_job_ended(pod: CloudPod) -> Optional[datetime]:
    return pod.assignments.aggregate(last=Max("attempt__finished_at"))["last"]


def idle_since(pod: CloudPod) -> Optional[datetime]:
    """Idle is measured from our job records: the end of its last job, or when it became ready."""
    return last_job_ended(pod) or pod.ready_at


def expected_pod_rate() -> Decimal:
    """$/h a new pod will cost: the rate RunPod reported for the newest pod it created (the
    GPU types and clouds it picks from do not change between pods), else the price table's."""
    latest = (CloudPod.objects.filter(runpod_id__isnull=False, cost_per_hour__gt=0).exclude(runpod_id="")
              .order_by("-created_at").values_list("cost_per_hour", flat=True).first())
    return Decimal(latest) if latest else pod_hourly_estimate()


def pod_room(backend, now=None) -> PodRoom:
    """What the pods offer one more job, for its estimate (billing.pricing): no wait on a pod
    that is already paid for and has room (after the jobs already waiting), the rest of the
    spin-up on a starting one, else a new pod at the expected hourly rate (read only then)."""
    now = now or timezone.now()
    pods = list(CloudPod.objects.filter(backend_id=backend.id, status__in=LIVE))
    counts = active_counts(p.id for p in pods)
    waiting = waiting_attempts(backend.id).count()
    ready = [p for p in pods if p.status in USABLE]
    starting = [p for p in pods if p.status == PodStatus.STARTING]
    if room(ready, counts) > waiting:
        return PodRoom(wait=0)
    if room(ready, counts) + room(starting, counts) > waiting:
        oldest = min(p.created_at for p in starting)
        return PodRoom(wait=max(0.0, settings.RUNPOD_POD_SPINUP_SECONDS - (now - oldest).total_seconds()))
    rate = expected_pod_rate()
    return PodRoom(wait=None, rate=rate, idle_seconds=idle_limit(rate))


def idle_limit(cost_per_hour: Decimal) -> int:
    """How long the reaper lets a pod at this rate sit idle."""
    if Decimal(cost_per_hour) > Decimal(settings.RUNPOD_EXPENSIVE_PER_HOUR):
        return settings.RUNPOD_IDLE_SECONDS_EXPENSIVE
    return settings.RUNPOD_IDLE_SECONDS


def reap_limit(pod: CloudPod, now: datetime) -> int:
    """How long the reaper lets this pod sit idle: its idle_limit while keeping it warm pays,
    else 0 (it is stopped at the reaper's next pass once its last job ends).

    Keeping it warm pays while jobs wait for a pod, or while the cloud jobs submitted in the
    last RUNPOD_WARM_WINDOW_SECONDS (attempts on cloud backends, each priced at the serverless
    endpoint's expected seconds for its kind × its price per second) would have cost at least
    what a pod costs over that window. RunPod serverless takes a job at once at about 1.6× a
    pod's price per second, so an idle pod earns its keep only when work comes at least that
    fast; otherwise its idle tail is pure cost (bench/cost.py: the idle tails of pods started
    for lone videos were most of the gap to the offline plan). Without a serverless backend
    (the other way to run the next job is a new pod's spin-up), or with the window set to 0,
    the fixed idle_limit holds (the ski-rental rule). A new pod's estimate still prices the
    full idle_limit: the most it may bill idle, which its hold must cover. bench/costsim.py
    Simulator.warm_pays models this rule; tests/bench/test_cost_rules.py pins the two together.
    """
    limit = idle_limit(pod.cost_per_hour)
    window = settings.RUNPOD_WARM_WINDOW_SECONDS
    serverless = Backend.objects.filter(kind=Backend.Kind.RUNPOD, enabled=True).order_by("priority", "id").first()
    if not window or serverless is None or waiting_attempts(pod.backend_id).exists():
        return limit
    kinds = (Attempt.objects.filter(backend__category=Category.CLOUD, created_at__gt=now - timedelta(seconds=window))
             .values("job__kind").annotate(n=Count("id")))
    seconds = {"image": serverless.expected_image_seconds, "video": serverless.expected_video_seconds}
    demand = sum(row["n"] * Decimal(str(seconds.get(row["job__kind"], 0.0))) for row in kinds)
    return limit if demand * serverless_price_per_second(serverless) >= keep_warm_cost(pod.cost_per_hour, window) else 0


def keep_warm_cost(cost_per_hour, window: int) -> Decimal:
    """What a pod at this rate costs over the window (reap_limit's threshold)."""
    return Decimal(cost_per_hour) * Decimal(window) / Decimal(3600)


def stale(since: Optional[datetime], seconds: float, now: datetime) -> bool:
    return since is not None and now - since > timedelta(seconds=seconds)


def pod_figures(*, start: datetime, end: datetime, now=None) -> dict:
    """The staff dashboard's pod line for a period: pods alive in it, their average uptime
    (whole lives, to now for live ones) and jobs per pod."""
    now = now or timezone.now()
    pods = list(CloudPod.objects.filter(created_at__lt=end).exclude(terminated_at__lt=start)
                .values("created_at", "terminated_at", "jobs_processed"))
    if not pods:
        return {"count": 0, "avg_uptime_seconds": None, "jobs_per_pod": None}
    uptimes = [((pod["terminated_at"] or now) - pod["created_at"]).total_seconds() for pod in pods]
    return {"count": len(pods), "avg_uptime_seconds": round(sum(uptimes) / len(pods), 1),
            "jobs_per_pod": round(sum(pod["jobs_processed"] for pod in pods) / len(pods), 1)}
