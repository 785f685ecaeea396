"""A serverless endpoint's declared inventory, checked by a probe job (routing/inventory_probe.py)
against the fake RunPod; the worker side of the probe job is in test_runpod_worker_handler.py."""
import pytest

from billing.models import LedgerEntry
from routing import inventory_probe, maintenance
from routing.defaults import ensure_default_backends
from routing.models import Backend
from tests.fakes.runpod import ENDPOINT_ID, FakeRunPod

DECLARED = {"models": {"checkpoints": ["v1-5-pruned-emaonly.safetensors", "sdxl.safetensors"]}, "nodes": ["KSampler"]}
REPORTED = {"models": {"checkpoints": ["v1-5-pruned-emaonly.safetensors"], "vae": ["vae.safetensors"]},
            "nodes": ["KSampler", "SaveImage"]}


@pytest.fixture
def endpoint(db, settings):
    with FakeRunPod(run_delay=0.05) as fake:
        settings.RUNPOD_API_KEY, settings.RUNPOD_ENDPOINT_ID = "test-key", ENDPOINT_ID
        settings.RUNPOD_ENDPOINT_BASE_URL = fake.serverless_url
        ensure_default_backends()
        Backend.objects.filter(name="runpod").update(config={"inventory": DECLARED})
        yield fake, Backend.objects.get(name="runpod")


def probe_until_read(backend, fake, tries=50):
    for _ in range(tries):
        maintenance.backend_probe(backend_id=backend.id)
        if "inventory_probe" not in Backend.objects.get(id=backend.id).config:
            return Backend.objects.get(id=backend.id)
    raise AssertionError("the probe job was never read")


def test_the_probe_jobs_answer_becomes_the_inventory_and_names_what_the_declaration_gets_wrong(endpoint):
    fake, backend = endpoint
    fake.script({"status": "COMPLETED", "output": {"inventory": REPORTED}})
    assert inventory_probe.inventory_probe_start(backend_id=backend.id).startswith("probe job")
    [job] = fake.jobs.values()
    assert job.input == {"inventory": True}
    assert inventory_probe.inventory_probe_start(backend_id=backend.id) == "a probe job is already under way"

    backend = probe_until_read(backend, fake)
    assert backend.inventory["models"] == REPORTED["models"] and backend.inventory["source"] == f"probe job {job.id}"
    assert backend.config["inventory"] == DECLARED  # the staff's declaration is kept as written
    assert backend.config["inventory_probe_last"]["declared_missing"] == ["checkpoints/sdxl.safetensors"]
    [upkeep] = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.UPKEEP)
    assert upkeep.key == f"inventory-probe:{job.id}" and upkeep.amount > 0
    assert len(fake.jobs) == 1  # no second paid job


def test_a_worker_that_does_not_answer_the_probe_leaves_the_declaration_and_says_why(endpoint):
    fake, backend = endpoint
    fake.script({"status": "COMPLETED", "output": {"images": []}})  # an image without the probe branch
    inventory_probe.inventory_probe_start(backend_id=backend.id)
    backend = probe_until_read(backend, fake)
    assert not backend.inventory and backend.config["inventory"] == DECLARED
    assert "did not report an inventory" in backend.config["inventory_probe_last"]["error"]


def test_staff_send_the_probe_job_from_the_admin(endpoint, admin_client, monkeypatch, django_capture_on_commit_callbacks):
    _, backend = endpoint
    sent = []
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, queue, **options: sent.append((name, args, queue)))
    gemini = Backend.objects.get(name="gemini")
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post("/admin/routing/backend/", {"action": "verify_serverless_inventory",
                                                             "_selected_action": [backend.id, gemini.id]}, follow=True)
    assert sent == [("workers.tasks.start_inventory_probe", [backend.id], "cloud")]
    assert b"1 skipped" in page.content
