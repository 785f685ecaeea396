"""Writes and reads of a backend's inventory: the model files and node classes it has.

The probe reads it from ComfyUI's `/object_info` (routing/maintenance.py, and the pod services
for pods) when it is due: never read, read before an outage (a restart can bring other custom
nodes and models), marked stale by a prompt the server refused for a missing model or node, or
older than INVENTORY_MAX_AGE_SECONDS. The router only reads what is stored.
"""
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import dispatch
from .models import Backend, HealthState


def inventory_due(backend: Backend, now=None) -> bool:
    now = now or timezone.now()
    if backend.inventory_at is None or backend.health != HealthState.UP or backend.consecutive_failures:
        return True
    return now - backend.inventory_at > timedelta(seconds=settings.INVENTORY_MAX_AGE_SECONDS)


def inventory_store(*, backend_id: int, inventory: dict, source: str, now=None) -> dict:
    """Store it as the backend's; returns what was stored (with where and when it was read)."""
    now = now or timezone.now()
    stored = {**inventory, "source": source, "read_at": now.isoformat()}
    Backend.objects.filter(id=backend_id).update(inventory=stored, inventory_at=now)
    return stored


@transaction.atomic
def inventory_forget(*, backend_id: int, lacks) -> None:
    """The backend said it lacks these ("folder/file" or "node Class"): take them out of its
    inventory at once, so the router stops sending jobs that need them, and read it again soon."""
    backend = Backend.objects.select_for_update().get(id=backend_id)
    inventory = dict(backend.inventory or {})
    models = {folder: list(files) for folder, files in (inventory.get("models") or {}).items()}
    nodes = list(inventory.get("nodes") or [])
    for item in lacks:
        if item.startswith("node "):
            nodes = [n for n in nodes if n != item[5:]]
        else:
            folder, _, name = item.partition("/")
            models[folder] = [f for f in models.get(folder, []) if f != name]
    if inventory:
        inventory.update(models=models, nodes=nodes)
    Backend.objects.filter(id=backend_id).update(inventory=inventory, inventory_at=None)
    dispatch.send_on_commit(dispatch.PROBE, [backend_id], queue=backend.queue, countdown=1)  # read it again
