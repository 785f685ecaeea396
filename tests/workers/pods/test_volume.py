"""Models on cloud GPUs: pods mount the network volume, the sync command fills it (resumable),
and a job is placed only on a pod whose inventory holds its models. Against the fake RunPod,
which runs the real sync program (workers/installer/volume.py) for a sync pod, and the
installer tests' artifact server for the model files.
"""
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.models import LedgerEntry
from routing.defaults import ensure_default_backends
from routing.models import Attempt, Backend, Job, JobStatus
from tests.conftest import wait_for
from tests.fakes.runpod import NO_CAPACITY, FakeRunPod
from tests.workers.installer.support import ArtifactServer, Fault, payload, sha256, standin_release, write_manifest
from workers.clients import BackendError
from workers.clients.pods import with_registry_auth
from workers.installer.download import part_path, partial_bytes
from workers.pods import placement, services
from workers.pods import volume as volume_services
from workers.pods.models import CloudPod, PodStatus, SyncStatus, VolumeSync
from workers.workflows.requirements import Requirements

CHUNK = 64 * 1024


@pytest.fixture
def sent(monkeypatch):
    """Task names the services send (after commit), recorded instead of sent."""
    names = []
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, **options: names.append(name))
    return names


@pytest.fixture
def fake():
    with FakeRunPod(pod_start_delay=0.1) as server:
        yield server


@pytest.fixture
def cloud(db, settings, fake):
    settings.RUNPOD_API_KEY = "test-key"
    settings.RUNPOD_API_BASE_URL = fake.url
    settings.RUNPOD_POD_URL_TEMPLATE = fake.pod_url_template
    settings.RUNPOD_POD_IMAGE = "comfy-hybrid-worker:test"
    volume = fake.add_volume(name="models", data_center="EU-RO-1")
    settings.RUNPOD_NETWORK_VOLUME_ID = volume.id
    ensure_default_backends()
    return volume


def spawn(backend_name="pods") -> CloudPod:
    row = CloudPod.objects.create(backend=Backend.objects.get(name=backend_name),
                                  name=f"comfy-hybrid-{CloudPod.objects.count()}")
    services.pod_spawn(pod_id=row.id)
    row.refresh_from_db()
    return row


def test_a_pod_mounts_the_network_volume_in_its_data_center_on_a_gpu_offered_there(cloud, fake):
    fake.data_center_gpus = {"EU-RO-1": {"NVIDIA A40"}}  # the first two configured types are not there
    row = spawn()
    pod = fake.every_pod[row.runpod_id]
    assert (pod.volume, pod.data_center, pod.gpu[0]) == (cloud, "EU-RO-1", "NVIDIA A40")
    assert fake.graphql_ops.index("myself") < fake.graphql_ops.index("podFindAndDeployOnDemand")
    assert row.gpu_type == "NVIDIA A40" and row.status == PodStatus.STARTING


def test_a_volume_the_account_does_not_have_ends_the_pod_with_the_reason(cloud, fake, settings):
    settings.RUNPOD_NETWORK_VOLUME_ID = "vol-gone"
    row = spawn()
    assert row.status == PodStatus.FAILED and "no network volume vol-gone" in row.last_error
    assert not fake.every_pod


def test_without_a_gpu_in_the_volumes_data_center_the_error_names_it(cloud, fake):
    fake.data_center_gpus = {"EU-RO-1": set()}
    row = spawn()
    assert row.status == PodStatus.FAILED and "in data center EU-RO-1" in row.last_error
    assert NO_CAPACITY in row.last_error


def test_a_private_image_is_pulled_with_the_registry_credentials(cloud, fake, settings):
    fake.private_images["comfy-hybrid-worker:test"] = "cra-123"
    without = spawn()
    settings.RUNPOD_POD_REGISTRY_AUTH_ID = "cra-123"
    with_auth = spawn()
    assert fake.every_pod[with_auth.runpod_id].registry_auth == "cra-123"
    wait_for(lambda: services.pod_check(pod_id=with_auth.id) == PodStatus.READY, 10, 0.05, "the pod to be ready")
    assert services.pod_check(pod_id=without.id) == PodStatus.STARTING  # its image cannot be pulled
    assert fake.every_pod[without.runpod_id].registry_auth is None


def test_a_registry_auth_id_that_is_not_an_id_never_reaches_graphql():
    with pytest.raises(BackendError, match="is not a RunPod id") as refused:
        with_registry_auth('mutation { podFindAndDeployOnDemand( input: { name: "x" } ) }', 'x" } evil')
    assert refused.value.misconfigured


def ready(row: CloudPod) -> CloudPod:
    wait_for(lambda: services.pod_check(pod_id=row.id) == PodStatus.READY, 10, 0.05, "the pod to be ready")
    row.refresh_from_db()
    return row


def waiting_attempt(user, backend):
    job = Job.objects.create(user=user, prompt="a fox", status=JobStatus.ROUTED, backend=backend)
    return Attempt.objects.create(job=job, backend=backend, number=1)


def test_a_job_is_placed_only_on_a_pod_whose_inventory_holds_its_models(cloud, fake, alice, settings):
    settings.RUNPOD_POD_MAX_JOBS = 10
    fake.pod_comfy_kwargs = {**fake.pod_comfy_kwargs, "models": {"checkpoints": ["base.safetensors"]}}
    bare = ready(spawn())  # started before the volume held the video model
    (cloud.path / "models" / "diffusion_models").mkdir(parents=True)
    (cloud.path / "models" / "diffusion_models" / "wan.safetensors").write_bytes(b"w")
    filled = ready(spawn())
    assert filled.inventory["models"]["diffusion_models"] == ["wan.safetensors"]
    pods = Backend.objects.get(name="pods")
    video = Requirements(models=frozenset({("diffusion_models", "wan.safetensors")}))
    placed = [placement.pod_place(attempt=waiting_attempt(alice, pods), requires=video)["id"] for _ in range(3)]
    assert placed == [filled.runpod_id] * 3  # never the pod that lacks it, even with room
    nowhere = Requirements(models=frozenset({("checkpoints", "missing.safetensors")}))
    assert placement.pod_place(attempt=waiting_attempt(alice, pods), requires=nowhere) is None  # it waits
    CloudPod.objects.filter(id=bare.id).update(inventory={})  # not read yet: no job goes there
    assert placement.pod_place(attempt=waiting_attempt(alice, pods), requires=Requirements()) == \
        {"id": filled.runpod_id, "url": filled.url}


@pytest.fixture
def models(tmp_path, fake):
    """Two model files on the artifact server and a manifest that lists them."""
    files = {"big": payload(12 * CHUNK, seed=3), "small": payload(3 * CHUNK, seed=4)}
    with ArtifactServer() as server:
        big = server.add("/big.safetensors", files["big"], Fault(stall_at=7 * CHUNK + 100))
        small = server.add("/small.safetensors", files["small"])
        manifest = write_manifest(tmp_path / "manifest.json", server.url("/release.tar.gz"), standin_release(), [
            ("Small", small, files["small"], "models/checkpoints", "small.safetensors", False),
            ("Big", big, files["big"], "models/diffusion_models", "big.safetensors", False)])
        fake.sync_env = {"COMFY_HYBRID_SYNC_CHUNK": str(CHUNK)}
        yield server, manifest, files


def test_the_sync_command_fills_the_volume_resumes_after_its_pod_dies_and_pods_then_hold_the_models(
        transactional_db, cloud, fake, models, monkeypatch, alice):
    server, manifest, files = models
    monkeypatch.setattr("workers.management.commands.sync_volume.CHECK_EVERY", 0.1)
    outcome = {}

    def first_run():
        try:
            call_command("sync_volume", "--manifest", str(manifest))
        except CommandError as error:
            outcome["error"] = str(error)

    runner = threading.Thread(target=first_run)
    runner.start()
    big = cloud.path / "models" / "diffusion_models" / "big.safetensors"
    wait_for(lambda: partial_bytes(big) >= 6 * CHUNK and VolumeSync.objects.filter(runpod_id__isnull=False).exists(),
             30, 0.05, "the big file to be part-way")
    first = VolumeSync.objects.get()
    fake.crash_pod(first.runpod_id)  # the sync pod's machine fails mid-download
    server.released.set()
    runner.join(60)
    assert "the sync pod stopped before it finished" in outcome["error"]
    first.refresh_from_db()
    assert first.status == SyncStatus.FAILED and first.runpod_id in fake.terminated
    kept = partial_bytes(big)
    assert kept >= 6 * CHUNK and part_path(big).exists()

    server.faults["/big.safetensors"].stall_at = None
    call_command("sync_volume", "--manifest", str(manifest))

    second = VolumeSync.objects.exclude(id=first.id).get()
    assert second.status == SyncStatus.DONE and second.runpod_id in fake.terminated
    assert ("/big.safetensors", kept) in server.requests  # resumed where the dead pod left it
    assert sha256(big.read_bytes()) == sha256(files["big"]) and not part_path(big).exists()
    small = cloud.path / "models" / "checkpoints" / "small.safetensors"
    assert small.read_bytes() == files["small"]
    # The small file, finished before the first pod died, is checked and kept; the big one resumed.
    assert {f["name"]: f["state"] for f in second.progress["files"]} == {"Small": "in place", "Big": "downloaded"}
    assert [path for path, _ in server.requests].count("/small.safetensors") == 1
    upkeep = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.UPKEEP)
    assert upkeep.count() == 2 and all(entry.amount > 0 for entry in upkeep)

    pod = ready(spawn())  # a pod started now holds both, and gets the job that needs them
    needs = Requirements(models=frozenset({("diffusion_models", "big.safetensors"), ("checkpoints", "small.safetensors")}))
    assert placement.pod_place(attempt=waiting_attempt(alice, Backend.objects.get(name="pods")),
                               requires=needs)["id"] == pod.runpod_id


def test_a_second_sync_while_one_runs_follows_it_and_reconcile_leaves_its_pod_alone(cloud, fake, models):
    server, manifest, _ = models
    server.faults["/big.safetensors"].stall_at = None
    call_command("sync_volume", "--manifest", str(manifest), "--no-wait")
    row, started = volume_services.volume_sync_start(manifest_path=manifest)
    assert not started and VolumeSync.objects.count() == 1
    assert services.pod_reconcile()["terminated"] == [] and row.runpod_id in fake.pods
    wait_for(lambda: volume_services.volume_sync_check(sync_id=row.id) == SyncStatus.DONE, 60, 0.1, "the sync")
    assert row.runpod_id in fake.terminated


def test_the_sync_refuses_clearly_without_a_volume(cloud, settings):
    settings.RUNPOD_NETWORK_VOLUME_ID = ""
    with pytest.raises(CommandError, match="RUNPOD_NETWORK_VOLUME_ID not set"):
        call_command("sync_volume")
    assert not VolumeSync.objects.exists()


def test_staff_start_a_sync_from_the_admin_and_a_second_click_shows_the_one_under_way(
        cloud, admin_client, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = admin_client.get("/admin/pods/volumesync/add/", follow=True)
    row = VolumeSync.objects.get()
    assert b"Started" in first.content and sent == ["workers.pod_tasks.spawn_volume_sync"]
    second = admin_client.get("/admin/pods/volumesync/add/", follow=True)
    assert b"already under way" in second.content and VolumeSync.objects.count() == 1
    assert row.status == SyncStatus.STARTING and row.files[0]["name"]


def test_the_admin_says_why_a_sync_cannot_start(cloud, admin_client, settings):
    settings.RUNPOD_NETWORK_VOLUME_ID = ""
    page = admin_client.get("/admin/pods/volumesync/add/", follow=True)
    assert page.status_code == 200 and b"RUNPOD_NETWORK_VOLUME_ID not set" in page.content
    assert not VolumeSync.objects.exists()
