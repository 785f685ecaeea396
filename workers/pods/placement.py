"""Placing a job's attempt on a pod, and marking a pod that failed one.

Below the job services (routing/services.py calls both while it submits and fails attempts)
and below the pod services, which fail attempts themselves: so neither imports the other's
module to reach these.
"""
from typing import Optional

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from routing.models import Attempt
from workers.workflows.requirements import Inventory, Requirements

from .models import USABLE, CloudPod, PodAssignment, PodStatus
from .selectors import active_counts


def holds(pod: CloudPod, requires: Requirements) -> bool:
    """The pod's inventory is known and has every model file and node class the job needs."""
    inventory = Inventory.from_json(pod.inventory)
    return inventory is not None and not inventory.lacks(requires)


def pod_place(*, attempt: Attempt, requires: Requirements = Requirements()) -> Optional[dict]:
    """The pod this attempt runs on, as `{"id", "url"}`: one whose inventory holds what the job
    `requires`; None when no such pod has room (it waits, and the autoscaler starts one).
    Idempotent: a redelivered submit gets the pod chosen the first time."""
    with transaction.atomic():
        existing = PodAssignment.objects.filter(attempt_id=attempt.id).select_related("pod").first()
        if existing is None:
            pods = list(CloudPod.objects.select_for_update()  # a pod that just failed a probe gets nothing new
                        .filter(backend_id=attempt.backend_id, status__in=USABLE, probe_failures=0)
                        .order_by("ready_at", "id"))
            counts = active_counts(p.id for p in pods)
            free = [p for p in pods if counts.get(p.id, 0) < settings.RUNPOD_POD_MAX_JOBS and holds(p, requires)]
            if not free:
                return None
            pod = min(free, key=lambda p: counts.get(p.id, 0))  # least loaded; oldest on ties
            try:
                with transaction.atomic():
                    existing = PodAssignment.objects.create(attempt_id=attempt.id, pod=pod)
            except IntegrityError:  # a concurrent delivery placed it first
                existing = PodAssignment.objects.select_related("pod").get(attempt_id=attempt.id)
            CloudPod.objects.filter(id=existing.pod_id, status__in=(PodStatus.READY, PodStatus.IDLE)).update(
                status=PodStatus.BUSY)
    return {"id": existing.pod.runpod_id, "url": existing.pod.url}


def pod_attempt_failed(*, attempt_id) -> None:
    """A job failed on its pod for a reason that was not its own: give that pod no new job until
    a probe says it answers again (the autoscaler probes it every RUNPOD_AUTOSCALE_SECONDS)."""
    assignment = PodAssignment.objects.filter(attempt_id=attempt_id).first()
    if assignment is not None:
        CloudPod.objects.filter(id=assignment.pod_id, status__in=USABLE).update(
            probe_failures=F("probe_failures") + 1)
