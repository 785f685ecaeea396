"""Reads for the local installer: runs for the page, the control flag for the task, and a
preview of the system check for the page before any install exists."""
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Optional

from django.core.cache import cache
from django.utils import timezone

from routing.health import effective_health
from routing.models import Backend, Category

from ..detect.probe import current_os
from ..errors import InstallError
from ..layout import Layout, lock_held
from ..pipeline import Installer, Options
from .models import ACTIVE_INSTALL_STATES, HEARTBEAT_STALE_SECONDS, InstallRun, InstallStatus

PREVIEW_CACHE_SECONDS = 60


def preview_key(options: Optional[dict]) -> str:
    """The cache key of install_preview for these options (services drop it when a run ends)."""
    digest = hashlib.sha256(json.dumps(options or {}, sort_keys=True, default=str).encode()).hexdigest()
    return f"workers:install-preview:{digest[:32]}"


def run_get(*, run_id: int) -> InstallRun:
    return InstallRun.objects.get(id=run_id)


def run_find(*, run_id: int) -> Optional[InstallRun]:
    return InstallRun.objects.filter(id=run_id).first()


def latest_run() -> Optional[InstallRun]:
    return InstallRun.objects.order_by("-created_at", "-id").first()


def active_run() -> Optional[InstallRun]:
    return InstallRun.objects.filter(status__in=ACTIVE_INSTALL_STATES).order_by("-created_at").first()


def install_in_progress() -> bool:
    """An install is queued or running (the backend cards show the local GPU as "installing")."""
    return InstallRun.objects.filter(status__in=(InstallStatus.PENDING, InstallStatus.RUNNING)).exists()


def recent_runs(*, limit: int = 5):
    return InstallRun.objects.order_by("-created_at", "-id")[:limit]


def run_control(*, run_id: int, generation: int) -> str:
    """"pause", "cancel" or "none" — and "cancel" once the run is no longer this generation's."""
    row = InstallRun.objects.filter(id=run_id).values("control", "generation", "status").first()
    if row is None or row["generation"] != generation or row["status"] != InstallStatus.RUNNING:
        return "cancel"
    return row["control"]


def is_stalled(run: InstallRun, now=None) -> bool:
    """Running, but its worker has not written for a while (killed, or the machine slept)."""
    if run.status != InstallStatus.RUNNING:
        return False
    now = now or timezone.now()
    last = run.heartbeat_at or run.updated_at
    return now - last > timedelta(seconds=HEARTBEAT_STALE_SECONDS)


def holder_gone(run: InstallRun) -> bool:
    """Running, but the folder lock its process holds for the whole run is free on this
    machine: the process is dead (killed, crashed), whatever its last heartbeat says."""
    if run.status != InstallStatus.RUNNING:
        return False
    folder = (run.plan or {}).get("path") or str(Options.from_dict(run.options).install_dir)
    return lock_held(Layout(Path(folder), current_os())) is False


def is_dead(run: InstallRun, now=None) -> bool:
    """Nobody is running this running install: silent too long, or its lock is free."""
    return is_stalled(run, now) or holder_gone(run)


def install_preview(options: Optional[dict] = None) -> dict:
    """What an install would do, checked from this process (the web server usually runs on
    the same machine as the local worker; the install re-checks on the worker). Cached
    briefly: the check runs nvidia-smi and friends."""
    key = preview_key(options)
    preview = cache.get(key)
    if preview is None:
        installer = Installer(Options.from_dict(options or {}))
        try:
            preview = {"plan": installer.check(), "error": ""}
        except InstallError as error:
            preview = {"plan": installer.plan, "error": str(error)}
        cache.set(key, preview, PREVIEW_CACHE_SECONDS)
    return preview


def comfyui_answering(now=None) -> Optional[dict]:
    """The local ComfyUI, when its last probe (recent enough to trust) found it up: what it is,
    for the install page to say so instead of offering a 5 GB install it does not need."""
    local = Backend.objects.filter(category=Category.LOCAL, enabled=True).order_by("priority").first()
    if local is None or effective_health(local, now) != "up":
        return None
    return {"gpu": local.gpu_name, "checked": local.last_ok_at or local.last_probe_at}
