"""Reads about pods, all from our own rows: room on each pod, jobs waiting for one, idle time."""
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Optional

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from billing.prices import pod_hourly_estimate
from billing.pricing import PodRoom
from routing.models import ACTIVE_ATTEMPT_STATES, ACTIVE_JOB_STATES, Attempt, AttemptStatus

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
