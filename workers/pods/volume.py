"""The network volume every pod reads its models from: filled and updated on a short-lived pod.

`manage.py sync_volume` (or the admin action on Volume syncs) starts a sync: a VolumeSync row,
then a pod in the volume's data center, with the volume mounted at /workspace, running the
cloud image in sync mode (deploy/runpod-worker/start.sh → workers/installer/volume.py). The
pod fetches the manifest's models with the installer's resumable, verified downloads, straight
onto the volume, and reports progress at `GET /sync`. Beat (the pod autoscaler's round) checks
each live sync: it copies the progress to the row, and when the pod says done or failed, or
RunPod no longer runs it, or RUNPOD_VOLUME_SYNC_TIMEOUT passed, it terminates the pod and
records the pod's uptime as the installation's upkeep spend. A sync that failed mid-way left
its download parts on the volume: the next one resumes them.

The file list travels with the pod (its environment), so the volume follows this server's
manifest whatever the image was built with. Pods started after a sync see the new files;
running ones too (ComfyUI lists model folders afresh), once their inventory is read again.
"""
import logging
import uuid
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.ledger import record_upkeep
from billing.pods import pod_price_per_second
from billing.pricing import cost_at
from project import queues
from routing import dispatch
from routing.backends import client_for_backend
from routing.models import Backend
from workers.clients import BackendError
from workers.installer.hub import hub_token
from workers.installer.manifest import DEFAULT_MANIFEST, load_manifest
from workers.installer.volume import encode_files

from .models import LIVE_SYNCS, SyncStatus, VolumeSync

log = logging.getLogger(__name__)

SPAWN_SYNC = "workers.pod_tasks.spawn_volume_sync"
CHECK_SYNC = "workers.pod_tasks.check_volume_sync"
CLOUD = queues.CLOUD
RESUMES = "run the sync again: it resumes the downloads it left on the volume"


class SyncRefused(Exception):
    pass


def sync_files(*, with_optional: bool = False, manifest_path=DEFAULT_MANIFEST) -> list[dict]:
    """The manifest's models, as the sync pod fetches them (paths relative to the volume root,
    which is where extra_model_paths.yaml points every pod's ComfyUI)."""
    manifest = load_manifest(manifest_path)
    return [{"name": m.name, "url": m.url, "dest": m.dest, "filename": m.filename, "size": m.size,
             "sha256": m.sha256} for m in manifest.models if with_optional or not m.optional]


def volume_sync_start(*, with_optional: bool = False, spawn_here: bool = False,
                      manifest_path=DEFAULT_MANIFEST) -> tuple[VolumeSync, bool]:
    """Start a sync, or return the one under way (False: it was already running). The pod is
    asked for by a task on the cloud queue, or by the caller when `spawn_here` (the command)."""
    missing = [name for name in ("RUNPOD_API_KEY", "RUNPOD_POD_IMAGE", "RUNPOD_NETWORK_VOLUME_ID")
               if not getattr(settings, name)]
    if missing:
        raise SyncRefused(f"{', '.join(missing)} not set: the sync runs the pod image on RunPod with the network "
                          f"volume mounted (README.md, \"Models on cloud GPUs\")")
    with transaction.atomic():
        live = VolumeSync.objects.select_for_update().filter(status__in=LIVE_SYNCS).first()
        if live is not None:
            return live, False
        row = VolumeSync.objects.create(name=f"{settings.RUNPOD_POD_NAME_PREFIX}-sync-{uuid.uuid4().hex[:8]}",
                                        volume_id=settings.RUNPOD_NETWORK_VOLUME_ID,
                                        files=sync_files(with_optional=with_optional, manifest_path=manifest_path))
        if not spawn_here:
            dispatch.send_on_commit(SPAWN_SYNC, [row.id], queue=CLOUD)
    return row, True


def _client():
    backend = Backend.objects.filter(kind=Backend.Kind.POD).order_by("id").first() or Backend(kind=Backend.Kind.POD)
    return client_for_backend(backend)


def sync_env(files: list[dict]) -> dict:
    """The sync pod's environment. A Hugging Face token, when this server has one, goes with it
    (gated models); it is visible to whoever can read the pod on the RunPod account."""
    env = {"COMFY_HYBRID_MODE": "sync", "COMFY_HYBRID_SYNC": encode_files(files)}
    token = hub_token()
    if token:
        env["HF_TOKEN"] = token
    return env


def volume_sync_spawn(*, sync_id: int, now=None) -> None:
    """Ask RunPod for the sync pod; a redelivery adopts the one of the same name."""
    row = VolumeSync.objects.get(id=sync_id)
    if row.status != SyncStatus.STARTING or row.runpod_id:
        return
    client = _client()
    try:
        created = client.api.running_named(row.name) or client.api.create(
            name=row.name, image=settings.RUNPOD_POD_IMAGE, gpu_types=settings.RUNPOD_POD_GPU_TYPES,
            env=sync_env(row.files), disk_gb=10, volume_id=row.volume_id,
            registry_auth_id=settings.RUNPOD_POD_REGISTRY_AUTH_ID)
    except BackendError as error:
        _finish(row, SyncStatus.FAILED, f"RunPod could not start the sync pod: {error.message}", now)
        return
    VolumeSync.objects.filter(id=row.id, status=SyncStatus.STARTING, runpod_id__isnull=True).update(
        runpod_id=created["id"], gpu_type=created["gpu_type"], cost_per_hour=created["cost_per_hour"],
        url=client.pod_url(created["id"]), message="the sync pod is starting")
    log.info("volume sync %s: pod %s (%s)", row.name, created["id"], created["gpu_type"])


def live_syncs_check() -> int:
    """Beat: a check of every live sync (the pod autoscaler's round sends them)."""
    ids = list(VolumeSync.objects.filter(status__in=LIVE_SYNCS).values_list("id", flat=True))
    for sync_id in ids:
        dispatch.send_on_commit(CHECK_SYNC, [sync_id], queue=CLOUD)
    return len(ids)


def volume_sync_check(*, sync_id: int, now=None) -> str:
    """Copy the sync pod's progress; end the sync when the pod says it is over, or is gone."""
    now = now or timezone.now()
    row = VolumeSync.objects.get(id=sync_id)
    if row.status not in LIVE_SYNCS:
        return row.status
    late = now - row.created_at > timedelta(seconds=settings.RUNPOD_VOLUME_SYNC_TIMEOUT)
    if not row.runpod_id:
        if now - row.created_at > timedelta(seconds=settings.RUNPOD_POD_START_TIMEOUT):
            return _finish(row, SyncStatus.FAILED, "RunPod never confirmed the sync pod", now)
        return row.status
    client = _client()
    try:
        remote = client.api.get(row.runpod_id)
    except BackendError as error:
        log.warning("volume sync %s: could not read its pod: %s", row.name, error.message)
        return row.status
    if not remote or remote.get("desiredStatus") != "RUNNING":
        return _finish(row, SyncStatus.FAILED, f"the sync pod stopped before it finished; {RESUMES}", now)
    try:
        status = client.sync_status(row.url)
    except BackendError as error:  # still pulling the image, or starting
        if late:
            return _finish(row, SyncStatus.FAILED, f"no answer from the sync pod ({error.message}); {RESUMES}", now)
        return row.status
    VolumeSync.objects.filter(id=row.id, status__in=LIVE_SYNCS).update(
        status=SyncStatus.RUNNING, progress=status, message=str(status.get("message", ""))[:2000])
    if status["state"] == "done":
        return _finish(row, SyncStatus.DONE, str(status.get("message") or "done"), now)
    if status["state"] == "failed":
        return _finish(row, SyncStatus.FAILED, str(status.get("message") or "failed"), now)
    if late:
        return _finish(row, SyncStatus.FAILED, f"not finished after {settings.RUNPOD_VOLUME_SYNC_TIMEOUT} s; {RESUMES}",
                       now)
    return SyncStatus.RUNNING


def _finish(row: VolumeSync, status: str, message: str, now=None) -> str:
    """The sync is over: its pod terminated, its uptime recorded as upkeep spend, once."""
    now = now or timezone.now()
    cost = cost_at(pod_price_per_second(row.cost_per_hour), (now - row.created_at).total_seconds()) \
        if row.runpod_id else Decimal("0")
    if not VolumeSync.objects.filter(id=row.id, status__in=LIVE_SYNCS).update(
            status=status, message=message[:2000], finished_at=now, cost=cost):
        return VolumeSync.objects.values_list("status", flat=True).get(id=row.id)
    if row.runpod_id:
        try:
            _client().api.terminate(row.runpod_id)
        except BackendError as error:  # reconcile terminates a finished sync's pod it still finds
            log.warning("volume sync %s: could not terminate pod %s: %s", row.name, row.runpod_id, error.message)
        record_upkeep(key=f"volume-sync:{row.id}", amount=cost, pod_id=row.runpod_id,
                      note=f"network volume sync pod {row.name} ({status})")
    log.info("volume sync %s %s: %s", row.name, status, message)
    return status
