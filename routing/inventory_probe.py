"""Verifying a serverless endpoint's inventory with a probe job.

The endpoint's ComfyUI cannot be asked directly: its inventory is declared by staff in the
backend's `config["inventory"]`. Staff can have it checked (admin: Backends → "Verify the
serverless inventory"): one small RunPod job (`{"input": {"inventory": true}}`) asks a worker
of the endpoint what its ComfyUI holds (deploy/runpod-worker/handler.py). The next health probe
reads the result: it becomes the backend's inventory (the router trusts it over the
declaration), what the declaration names but the worker lacks is shown in the admin, and the
job's seconds are recorded as the installation's upkeep spend. One probe job at a time.
"""
import logging
from datetime import datetime, timedelta

from django.utils import timezone

from billing.ledger import record_upkeep
from billing.pricing import metered_cost
from workers.clients import BackendError
from workers.workflows.requirements import Inventory, Requirements

from .backends import client_for_backend, missing_settings
from .inventory import inventory_store
from .models import Backend

log = logging.getLogger(__name__)

PROBE, LAST = "inventory_probe", "inventory_probe_last"
GIVE_UP_AFTER = timedelta(minutes=15)  # a cold start plus the job, with room


def inventory_probe_start(*, backend_id: int) -> str:
    """Start the probe job (the cloud worker runs this). Returns what happened, for the log."""
    backend = Backend.objects.get(id=backend_id)
    if backend.kind != Backend.Kind.RUNPOD or missing_settings(backend):
        return "not a configured serverless endpoint"
    if (backend.config or {}).get(PROBE):
        return "a probe job is already under way"
    try:
        handle = client_for_backend(backend).start_inventory_probe()
    except BackendError as error:
        _remember(backend, {"error": error.message})
        return error.message
    _set_config(backend.id, {PROBE: {**handle, "sent_at": timezone.now().isoformat()}})
    return f"probe job {handle['job_id']} started"


def inventory_probe_check(backend: Backend, client, now=None) -> None:
    """Read the probe job's result, if one is under way (from the backend's health probe)."""
    probe = (backend.config or {}).get(PROBE)
    if not probe:
        return
    now = now or timezone.now()
    try:
        result = client.inventory_probe_result(probe)
    except BackendError as error:
        if error.retryable:
            return  # RunPod did not answer this time: the next probe reads it
        _remember(backend, {"job_id": probe["job_id"], "error": error.message})
        return
    if result is None:
        if now - datetime.fromisoformat(probe["sent_at"]) > GIVE_UP_AFTER:
            _remember(backend, {"job_id": probe["job_id"], "error": "the probe job did not finish in 15 minutes"})
        return
    inventory, seconds = result
    inventory_store(backend_id=backend.id, inventory=inventory, source=f"probe job {probe['job_id']}", now=now)
    _remember(backend, {"job_id": probe["job_id"], "declared_missing": declared_missing(backend, inventory),
                        "seconds": seconds})
    record_upkeep(key=f"inventory-probe:{probe['job_id']}", amount=metered_cost(backend, seconds), pod_id="",
                  note=f"inventory probe job {probe['job_id']} on {backend.name}")


def declared_missing(backend: Backend, inventory: dict) -> list[str]:
    """What the staff's declaration names that the worker's ComfyUI does not hold."""
    declared = Inventory.from_json((backend.config or {}).get("inventory"))
    if declared is None:
        return []
    needs = Requirements(models=frozenset((folder, name) for folder, names in declared.models.items()
                                          for name in names),
                         nodes=declared.nodes or frozenset())
    return Inventory.from_json(inventory).lacks(needs)


def _remember(backend: Backend, outcome: dict) -> None:
    """The probe job is over: its outcome kept for the admin, the job forgotten."""
    if outcome.get("error"):
        log.warning("inventory probe of %s: %s", backend.name, outcome["error"])
    _set_config(backend.id, {LAST: {**outcome, "at": timezone.now().isoformat()}}, drop=(PROBE,))


def _set_config(backend_id: int, values: dict, drop=()) -> None:
    backend = Backend.objects.get(id=backend_id)
    config = {key: value for key, value in (backend.config or {}).items() if key not in drop}
    Backend.objects.filter(id=backend_id).update(config={**config, **values})
