"""Writes for on-demand pods: spawn, ready, place a job, probe, reap, terminate, reconcile.

Every state change is a conditional update (`filter(id=…, status__in=expected).update(…)`),
so a task delivered twice changes nothing the second time. Time comes in as `now`, so tests
drive the reaper and the timeouts without waiting. HTTP (GraphQL, ComfyUI probes) happens
only in the services that the `cloud` queue runs (spawn, check, terminate, reconcile); the
beat decisions (autoscale, reap) only read and write rows and send those tasks.

How a job gets onto a pod without clients touching the database:
1. The router sends the job to the "pods" backend (routing/selectors.py prices it: nothing
   extra on a pod with room, else a new pod's spin-up + run time).
2. attempt_submit (routing/services.py) asks `pod_place` (placement.py) for a pod before submitting. It
   picks the least loaded usable pod with room, under a row lock, and records a
   PodAssignment; the spec gets `{"pod": {"id", "url"}}`. No pod has room → the attempt
   stays pending ("waiting"), and nothing is sent anywhere.
3. PodClient submits to that pod's ComfyUI; the handle carries the pod id and URL, so polls
   and cancels need only the handle.
4. Waiting attempts are what the autoscaler spawns pods for, and they are sent to submit
   again when a pod becomes ready or has room (`pods_dispatch_waiting`).
"""
import logging
from decimal import Decimal
from typing import Optional

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.ledger import record_idle, release_pod
from billing.pods import pod_cost, pod_price_per_second
from billing.pricing import cost_at
from project import queues
from routing import dispatch
from routing.backends import client_for_backend, missing_settings
from routing.health import health_record
from routing.inventory import inventory_due, inventory_store
from routing.models import AttemptStatus, Backend
from routing.services import attempt_fail
from workers.clients import BackendError

from .models import LIVE, LIVE_SYNCS, USABLE, CloudPod, PodAssignment, PodStatus, VolumeSync
from .selectors import (active_counts, idle_since, last_job_ended, reap_limit, room, stale,
                        waiting_attempts)

log = logging.getLogger(__name__)

SPAWN = "workers.pod_tasks.spawn_pod"
CHECK = "workers.pod_tasks.check_pod"
TERMINATE = "workers.pod_tasks.terminate_pod"
CLOUD = queues.CLOUD

NO_POD_IN_TIME = "No cloud pod became free within {minutes} minutes"


def _pod_client(backend: Backend):
    """The PodClient (GraphQL API + the pods' ComfyUI), imported through the registry so that
    the runpod SDK (over a second to import) loads only in processes that call RunPod."""
    return client_for_backend(backend)


def pod_is_running(remote: Optional[dict]) -> bool:
    return bool(remote) and remote.get("desiredStatus") == "RUNNING"


def pod_runtime_up(remote: Optional[dict]) -> bool:
    """RunPod's `runtime` is null while the container starts (reference §2.3)."""
    return pod_is_running(remote) and remote.get("runtime") is not None


def pod_backends():
    return [b for b in Backend.objects.filter(kind=Backend.Kind.POD, enabled=True) if not missing_settings(b)]


def pods_dispatch_waiting(*, backend_id: int) -> int:
    """Send waiting attempts to submit again, as many as the usable pods have room for."""
    pods = list(CloudPod.objects.filter(backend_id=backend_id, status__in=USABLE))
    free = room(pods, active_counts(p.id for p in pods))
    sent = 0
    for attempt_id in waiting_attempts(backend_id).values_list("id", flat=True)[:free]:
        dispatch.send_on_commit(dispatch.SUBMIT, [str(attempt_id)], queue=CLOUD)
        sent += 1
    return sent


# --- spawn and readiness (cloud queue) ----------------------------------------------------
def pod_spawn(*, pod_id: int, now=None) -> None:
    """Ask RunPod for the pod this row stands for. A redelivery first looks for a pod of the
    same name, so a crash between RunPod's answer and our update never makes a second one."""
    now = now or timezone.now()
    pod = CloudPod.objects.select_related("backend").get(id=pod_id)
    if pod.status != PodStatus.STARTING or pod.runpod_id:
        return
    client = _pod_client(pod.backend)
    if client.api is None:
        _pod_end_now(pod, "RUNPOD_API_KEY not set", now)
        return
    try:
        created = _adopt_by_name(client.api, pod.name) or client.api.create(
            name=pod.name, image=settings.RUNPOD_POD_IMAGE, gpu_types=settings.RUNPOD_POD_GPU_TYPES,
            env=pod_env(), disk_gb=settings.RUNPOD_POD_DISK_GB, volume_id=settings.RUNPOD_NETWORK_VOLUME_ID,
            registry_auth_id=settings.RUNPOD_POD_REGISTRY_AUTH_ID)
    except BackendError as error:
        log.warning("could not start pod %s: %s", pod.name, error.message)
        _pod_end_now(pod, error.message, now)
        no_pods_left(pod.backend, error.message)
        return
    updated = CloudPod.objects.filter(id=pod.id, status=PodStatus.STARTING, runpod_id__isnull=True).update(
        runpod_id=created["id"], gpu_type=created["gpu_type"], cost_per_hour=created["cost_per_hour"],
        url=client.pod_url(created["id"]))
    if not updated:  # the row was given up meanwhile: do not leave this pod running
        log.warning("pod %s was given up while RunPod created it; terminating %s", pod.name, created["id"])
        client.api.terminate(created["id"])
        return
    log.info("pod %s created on RunPod as %s (%s, $%s/h)", pod.name, created["id"], created["gpu_type"],
             created["cost_per_hour"])


def _adopt_by_name(api, name: str) -> Optional[dict]:
    try:
        return api.running_named(name)
    except BackendError as error:  # only a redelivered spawn needs it; reconcile ends any twin
        log.warning("could not list pods before creating %s: %s", name, error.message)
        return None


def pod_env() -> dict:
    """Environment of the pod's container (deploy/runpod-worker/start.sh reads it). RunPod adds
    RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY itself; our key is never sent to a pod."""
    return {"COMFY_HYBRID_MODE": "pod", "POD_IDLE_STOP_SECONDS": str(settings.RUNPOD_POD_SELF_STOP_SECONDS)}


def pod_check(*, pod_id: int, now=None) -> str:
    """Starting: ready once RunPod reports a runtime AND its ComfyUI answers; given up after
    RUNPOD_POD_START_TIMEOUT. Usable: replaced after repeated failed ComfyUI probes."""
    now = now or timezone.now()
    pod = CloudPod.objects.select_related("backend").get(id=pod_id)
    if pod.status == PodStatus.STARTING:
        return _check_starting(pod, now)
    if pod.status in USABLE:
        return _probe_usable(pod)
    return pod.status


def _check_starting(pod: CloudPod, now) -> str:
    timed_out = stale(pod.created_at, settings.RUNPOD_POD_START_TIMEOUT, now)
    if not pod.runpod_id:
        if timed_out:
            _pod_end_now(pod, "RunPod never confirmed the pod", now)
        return pod.status
    client = _pod_client(pod.backend)
    try:
        remote = client.api.get(pod.runpod_id)
    except BackendError as error:
        log.warning("could not read pod %s: %s", pod.runpod_id, error.message)
        return pod.status
    if not pod_is_running(remote):
        pod_give_up(pod_id=pod.id, error="RunPod stopped the pod before it became ready")
        return PodStatus.TERMINATING
    if pod_runtime_up(remote) and client.comfy(pod.url).health().ok:
        _read_inventory(pod, client.comfy(pod.url), force=True)  # a new pod: what its image holds
        pod_mark_ready(pod_id=pod.id, now=now, cost_per_hour=remote.get("costPerHr"))
        return PodStatus.READY
    if timed_out:
        pod_give_up(pod_id=pod.id, error=f"not ready after {settings.RUNPOD_POD_START_TIMEOUT}s")
        return PodStatus.TERMINATING
    return PodStatus.STARTING


def _probe_usable(pod: CloudPod) -> str:
    comfy = _pod_client(pod.backend).comfy(pod.url)
    health = comfy.health()
    if not health.ok:  # one lost request is not a dead pod: look again before counting it
        health = comfy.health()
    if health.ok:
        CloudPod.objects.filter(id=pod.id).update(probe_failures=0, last_error="")
        _read_inventory(pod, comfy)
        return pod.status
    CloudPod.objects.filter(id=pod.id).update(probe_failures=F("probe_failures") + 1, last_error=health.detail[:2000])
    if pod.probe_failures + 1 >= settings.RUNPOD_POD_FAILURES_TO_REPLACE:
        pod_give_up(pod_id=pod.id, error=f"ComfyUI stopped answering: {health.detail}")
        return PodStatus.TERMINATING
    return pod.status


def _read_inventory(pod: CloudPod, comfy, force: bool = False) -> None:
    """What this pod's ComfyUI holds, on its row (placement reads it) and as the pods backend's
    (the router reads that: the newest pod's, every pod having the same image and volume). Read
    at start, and again when the backend's is due or the pod's is not known."""
    if not (force or not pod.inventory or inventory_due(pod.backend)):
        return
    try:
        inventory = comfy.inventory()
    except BackendError as error:
        log.warning("could not read the inventory of pod %s: %s", pod.id, error.message)
        return
    if inventory is None:
        return
    stored = inventory_store(backend_id=pod.backend_id, inventory=inventory, source=f"object_info of pod {pod.id}")
    CloudPod.objects.filter(id=pod.id).update(inventory=stored)


def pod_mark_ready(*, pod_id: int, now=None, cost_per_hour=None) -> bool:
    now = now or timezone.now()
    fields = {"status": PodStatus.READY, "ready_at": now, "probe_failures": 0}
    if cost_per_hour:
        fields["cost_per_hour"] = Decimal(str(cost_per_hour))
    with transaction.atomic():
        updated = CloudPod.objects.filter(id=pod_id, status=PodStatus.STARTING).update(**fields)
        if updated:
            pods_dispatch_waiting(backend_id=CloudPod.objects.get(id=pod_id).backend_id)
    if updated:
        log.info("pod %s is ready", pod_id)
    return bool(updated)


def pod_give_up(*, pod_id: int, error: str) -> bool:
    """A live pod that cannot serve (never got ready, ComfyUI died, stopped outside us):
    terminate it; it ends as failed."""
    with transaction.atomic():
        updated = CloudPod.objects.filter(id=pod_id, status__in=LIVE).update(
            status=PodStatus.TERMINATING, last_error=error[:2000])
        if updated:
            dispatch.send_on_commit(TERMINATE, [pod_id], queue=CLOUD)
    if updated:
        log.warning("giving up pod %s: %s", pod_id, error)
    return bool(updated)


def _pod_end_now(pod: CloudPod, error: str, now) -> None:
    """A pod that never existed on RunPod: nothing to terminate, nothing billed."""
    CloudPod.objects.filter(id=pod.id, status=PodStatus.STARTING, runpod_id__isnull=True).update(
        status=PodStatus.FAILED, last_error=error[:2000], terminated_at=now)


def no_pods_left(backend: Backend, error: str) -> None:
    """RunPod cannot give us a pod and none is coming: the jobs waiting fail over now rather
    than at RUNPOD_POD_WAIT_SECONDS."""
    health_record(backend_id=backend.id, ok=False, detail=error)
    if CloudPod.objects.filter(backend=backend, status__in=LIVE).exists():
        return
    for attempt_id in waiting_attempts(backend.id).values_list("id", flat=True):
        attempt_fail(attempt_id=attempt_id, error=f"No cloud pod could be started: {error}", retryable=True)


# --- idle shutdown (beat every minute, control queue) -------------------------------------
def pod_reap_idle(*, now=None) -> list[int]:
    """Terminate pods idle longer than their reap_limit (selectors.py): RUNPOD_IDLE_SECONDS
    (RUNPOD_IDLE_SECONDS_EXPENSIVE above RUNPOD_EXPENSIVE_PER_HOUR) while keeping them warm pays,
    else at once. Idle is measured from our own job records, never from whether a process
    answers. Pods stuck terminating are sent again."""
    now = now or timezone.now()
    reaped = [pod_id for pod_id in CloudPod.objects.filter(status__in=USABLE).values_list("id", flat=True)
              if _reap_if_idle(pod_id, now)]
    for pod_id in CloudPod.objects.filter(status=PodStatus.TERMINATING).exclude(id__in=reaped).values_list("id", flat=True):
        dispatch.send_on_commit(TERMINATE, [pod_id], queue=CLOUD)
    return reaped


def _reap_if_idle(pod_id: int, now) -> bool:
    with transaction.atomic():
        pod = CloudPod.objects.select_for_update().get(id=pod_id)  # pod_place takes the same lock
        if pod.status not in USABLE or active_counts([pod.id]).get(pod.id):
            return False
        limit = reap_limit(pod, now)
        since = idle_since(pod)
        if not stale(since, limit, now):
            return False
        updated = CloudPod.objects.filter(id=pod.id, status__in=USABLE).update(
            status=PodStatus.TERMINATING, last_job_ended_at=last_job_ended(pod), last_error="")
        if updated:
            dispatch.send_on_commit(TERMINATE, [pod.id], queue=CLOUD)
            log.info("pod %s idle since %s (limit %ss): terminating", pod.name, since, limit)
    return bool(updated)


# --- terminate (cloud queue) --------------------------------------------------------------
def pod_terminate(*, pod_id: int, now=None) -> bool:
    """Terminate on RunPod, then record uptime, idle cost and each job's share, once."""
    now = now or timezone.now()
    pod = CloudPod.objects.select_related("backend").get(id=pod_id)
    if pod.status != PodStatus.TERMINATING:
        return False
    if pod.runpod_id:
        try:
            _pod_client(pod.backend).api.terminate(pod.runpod_id)
        except BackendError as error:  # stays terminating; the reaper sends it again
            log.warning("could not terminate pod %s (%s): %s", pod.name, pod.runpod_id, error.message)
            return False
    final = PodStatus.FAILED if pod.last_error else PodStatus.TERMINATED  # given up, not reaped
    with transaction.atomic():
        updated = CloudPod.objects.filter(id=pod.id, status=PodStatus.TERMINATING).update(
            status=final, terminated_at=now)
        if updated:
            _settle_costs(CloudPod.objects.get(id=pod.id), now)
    if updated:
        log.info("pod %s (%s) terminated", pod.name, pod.runpod_id)
    return bool(updated)


def _settle_costs(pod: CloudPod, now) -> None:
    """The pod's uptime cost, and its idle part: what its jobs were not charged (billing.pods).
    Each job was charged for its own seconds when it ended, against its user's caps."""
    assignments = list(pod.assignments.select_related("attempt"))
    jobs = [(a.attempt.started_at or a.created_at, a.attempt.finished_at or now) for a in assignments]
    charged = sum((a.attempt.cost for a in assignments), Decimal("0"))
    cost = pod_cost(cost_per_hour=pod.cost_per_hour, started=pod.created_at, ended=now, jobs=jobs, charged=charged)
    CloudPod.objects.filter(id=pod.id).update(
        jobs_processed=sum(1 for a in assignments if a.attempt.status == AttemptStatus.SUCCEEDED),
        busy_seconds=cost.busy_seconds, uptime_cost=cost.uptime_cost, idle_cost=cost.idle_cost,
        last_job_ended_at=last_job_ended(pod))
    release_pod(pod=pod)
    for assignment in assignments:
        PodAssignment.objects.filter(id=assignment.id, cost_settled=False).update(
            cost=assignment.attempt.cost, cost_settled=True)
    _record_idle(pod, cost.idle_cost, now)


def _record_idle(pod: CloudPod, amount: Decimal, now) -> None:
    """Wasted pod time into the ledger, as its own entry."""
    record_idle(key=f"pod-idle:{pod.id}", amount=amount, backend=pod.backend, pod_id=pod.runpod_id or "",
                now=now, note=f"idle time of pod {pod.name}")


# --- reconcile (beat, cloud queue) --------------------------------------------------------
def pod_reconcile(*, now=None) -> dict:
    """Compare RunPod's list of our pods (named with RUNPOD_POD_NAME_PREFIX; other pods on the
    account are never touched) with our rows. Untracked pods, and pods we ended that still
    run, are terminated and logged; live rows RunPod no longer runs are closed."""
    report = {"terminated": [], "closed": []}
    backends = pod_backends()
    if not backends:
        return report
    api = _pod_client(backends[0]).api
    try:
        listed = api.list()
    except BackendError as error:
        log.warning("reconcile: could not list pods: %s", error.message)
        return report
    remote = [pod for pod in listed if str(pod.get("name", "")).startswith(settings.RUNPOD_POD_NAME_PREFIX + "-")]
    rows = {row.runpod_id: row for row in CloudPod.objects.filter(runpod_id__in=[p["id"] for p in remote])}
    syncs = {row.name: row for row in VolumeSync.objects.filter(name__in=[p.get("name") for p in remote])}
    for pod in remote:
        sync = syncs.get(pod.get("name"))
        if sync is not None:  # a volume sync pod: its own checks end it; one left running after its end goes
            if sync.status not in LIVE_SYNCS and pod.get("desiredStatus") != "TERMINATED" \
                    and _reconcile_terminate(api, pod["id"]):
                report["terminated"].append(pod["id"])
            continue
        action = _reconcile_one(api, pod, rows.get(pod["id"]))
        if action:
            report[action].append(pod["id"])
    running = {pod["id"] for pod in remote if pod_is_running(pod)}
    for row in CloudPod.objects.filter(status__in=USABLE + (PodStatus.STARTING,), runpod_id__isnull=False):
        if row.runpod_id not in running and pod_give_up(pod_id=row.id, error="RunPod no longer runs this pod"):
            report["closed"].append(row.runpod_id)
    return report


def _reconcile_one(api, pod: dict, row: Optional[CloudPod]) -> Optional[str]:
    if pod.get("desiredStatus") == "TERMINATED":
        return None
    if row is None:
        if CloudPod.objects.filter(name=pod.get("name"), status=PodStatus.STARTING, runpod_id__isnull=True).exists():
            return None  # its spawn call is in flight and will adopt it by name
        log.warning("reconcile: pod %s (%s) is not tracked here; terminating it", pod["id"], pod.get("name"))
        action = _reconcile_terminate(api, pod["id"])
        if action:
            _record_untracked(pod)
        return action
    if row.status in (PodStatus.TERMINATED, PodStatus.FAILED):
        log.warning("reconcile: pod %s is %s here but RunPod still has it (%s); terminating it",
                    pod["id"], row.status, pod.get("desiredStatus"))
        return _reconcile_terminate(api, pod["id"])
    return None


def _record_untracked(pod: dict) -> None:
    """A pod of ours RunPod ran with no row here (its create answer was lost and no spawn
    adopted it) billed all the same: its uptime as RunPod reports it goes into the ledger as
    the installation's idle cost, once."""
    rate = Decimal(str(pod.get("costPerHr") or 0))
    seconds = float(pod.get("uptimeSeconds") or 0)
    backend = Backend.objects.filter(kind=Backend.Kind.POD).order_by("id").first()
    record_idle(key=f"pod-untracked:{pod['id']}", amount=cost_at(pod_price_per_second(rate), seconds), backend=backend,
                pod_id=pod["id"], note=f"untracked pod {pod.get('name', '')} terminated by reconcile")


def _reconcile_terminate(api, pod_id: str) -> Optional[str]:
    try:
        api.terminate(pod_id)
    except BackendError as error:  # the next pass tries again; the other pods are still reconciled
        log.warning("reconcile: could not terminate pod %s: %s", pod_id, error.message)
        return None
    return "terminated"
