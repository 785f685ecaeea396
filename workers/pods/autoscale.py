"""The pod autoscaler (beat, control queue): spawn pods for the jobs waiting for one, within
RUNPOD_MAX_PODS and the spend caps; meter each pod's uptime against the installation's cap;
probe live pods and volume syncs; fail over jobs that waited too long; hand waiting jobs to pods
with room. Scaling down is the reaper's (services.pod_reap_idle). It only reads and writes rows
and sends the cloud queue's tasks (spawn, check) by name.
"""
import logging
import math
import uuid
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.caps import cloud_budget_left
from billing.ledger import held_by, meter_pod, pod_held
from billing.pods import pod_price_per_second
from billing.pricing import cost_at
from routing import dispatch
from routing.models import ACTIVE_ATTEMPT_STATES, Backend
from routing.services import attempt_fail

from .models import LIVE, RUNNING_REMOTELY, USABLE, CloudPod, PodAssignment, PodStatus
from .selectors import active_counts, expected_pod_rate, idle_limit, room, waiting_attempts
from .services import CHECK, CLOUD, NO_POD_IN_TIME, SPAWN, no_pods_left, pod_backends, pod_give_up, pods_dispatch_waiting
from .volume import live_syncs_check

log = logging.getLogger(__name__)


def autoscale(*, now=None) -> dict:
    """Spawn pods for the jobs waiting for one (never past RUNPOD_MAX_PODS or the spend
    caps), probe every live pod, fail over jobs that waited too long, and hand waiting jobs
    to pods with room. Scaling down is the reaper's job."""
    now = now or timezone.now()
    report = {"spawned": [], "checked": 0, "dispatched": 0, "gave_up": 0, "syncs": live_syncs_check()}
    for backend in pod_backends():
        if not settings.RUNPOD_POD_IMAGE:  # no image to run: jobs sent here fail over at once
            no_pods_left(backend, "RUNPOD_POD_IMAGE not set")
            continue
        _sync_busy_idle(backend.id)
        report["gave_up"] += _fail_long_waits(backend, now)
        _meter_pods(backend, now)
        report["spawned"] += _spawn_for_backlog(backend)
        for pod_id in CloudPod.objects.filter(backend=backend, status__in=LIVE).values_list("id", flat=True):
            dispatch.send_on_commit(CHECK, [pod_id], queue=CLOUD)
            report["checked"] += 1
        report["dispatched"] += pods_dispatch_waiting(backend_id=backend.id)
    return report


def _meter_pods(backend: Backend, now) -> None:
    """Hold each pod's uptime, so far and until the next pass, against the installation's cap,
    less what its jobs hold or were charged (billing/ledger.py). A pod the cap refuses is ended as
    soon as no job runs on it (the running jobs' meters meet the same cap and stop them)."""
    ahead = 2 * settings.RUNPOD_AUTOSCALE_SECONDS
    for pod in CloudPod.objects.filter(backend=backend, status__in=LIVE, runpod_id__isnull=False).select_related(
            "backend"):
        rate = pod_price_per_second(pod.cost_per_hour)
        uptime = cost_at(rate, (now - pod.created_at).total_seconds() + ahead)
        need = uptime - _covered_by_jobs(pod) - pod_held(pod.id)
        if need <= 0:
            continue
        refusal = meter_pod(pod=pod, amount=need + cost_at(rate, ahead), now=now) and \
            meter_pod(pod=pod, amount=need, now=now)
        if refusal and not active_counts([pod.id]).get(pod.id):
            pod_give_up(pod_id=pod.id, error=refusal)
        elif refusal:
            log.warning("pod %s: %s; it ends once its jobs stop", pod.name, refusal)


def _covered_by_jobs(pod: CloudPod) -> Decimal:
    """What the pod's jobs account for: the charges of those that ended, the holds of those in flight."""
    assignments = PodAssignment.objects.filter(pod=pod)
    ended = assignments.exclude(attempt__status__in=ACTIVE_ATTEMPT_STATES).aggregate(
        total=Sum("attempt__cost"))["total"] or Decimal("0")
    active = assignments.filter(attempt__status__in=ACTIVE_ATTEMPT_STATES).values("attempt_id")
    return ended + held_by(active)


def _spawn_for_backlog(backend: Backend) -> list[int]:
    with transaction.atomic():
        Backend.objects.select_for_update().get(id=backend.id)  # one autoscaler decides at a time
        waiting = waiting_attempts(backend.id).count()
        live = list(CloudPod.objects.filter(backend=backend, status__in=LIVE))
        need = waiting - room(live, active_counts(p.id for p in live))
        if need <= 0:
            return []
        running = CloudPod.objects.filter(status__in=RUNNING_REMOTELY).count()
        count = min(math.ceil(need / settings.RUNPOD_POD_MAX_JOBS), settings.RUNPOD_MAX_PODS - running)
        count = min(count, _affordable_pods())
        created = []
        for _ in range(max(0, count)):
            pod = CloudPod.objects.create(
                backend=backend, name=f"{settings.RUNPOD_POD_NAME_PREFIX}-{uuid.uuid4().hex[:12]}",
                status=PodStatus.STARTING, cost_per_hour=expected_pod_rate())
            dispatch.send_on_commit(SPAWN, [pod.id], queue=CLOUD)
            created.append(pod.id)
        if created:
            log.info("autoscaler: %s job(s) waiting for a pod; spawning %s pod(s)", waiting, len(created))
    return created


def _affordable_pods() -> int:
    """How many new pods the installation's remaining monthly budget allows: each commits at
    least its spin-up plus the idle limit before the reaper can stop it."""
    left = cloud_budget_left()
    rate = expected_pod_rate()
    commitment = rate * Decimal(settings.RUNPOD_POD_SPINUP_SECONDS + idle_limit(rate)) / Decimal(3600)
    return int(left // commitment) if commitment > 0 else settings.RUNPOD_MAX_PODS


def _fail_long_waits(backend: Backend, now) -> int:
    cutoff = now - timedelta(seconds=settings.RUNPOD_POD_WAIT_SECONDS)
    message = NO_POD_IN_TIME.format(minutes=settings.RUNPOD_POD_WAIT_SECONDS // 60)
    old = list(waiting_attempts(backend.id).filter(created_at__lt=cutoff).values_list("id", flat=True))
    for attempt_id in old:
        attempt_fail(attempt_id=attempt_id, error=message, retryable=True)
    return len(old)


def _sync_busy_idle(backend_id: int) -> None:
    """Keep the status column honest for the admin; decisions use the assignment rows."""
    pods = list(CloudPod.objects.filter(backend_id=backend_id, status__in=USABLE))
    counts = active_counts(p.id for p in pods)
    for pod in pods:
        if counts.get(pod.id):
            status = PodStatus.BUSY
        else:
            status = PodStatus.IDLE if pod.assignments.exists() else PodStatus.READY
        if status != pod.status:
            CloudPod.objects.filter(id=pod.id, status__in=USABLE).update(status=status)
