"""The install page: system check, Install, live progress, and Pause / Resume / Cancel that
really stop and continue the download. The task body runs synchronously in the test (the
same function the Celery task calls), against the loopback artifact server."""
import pytest
from django.core.cache import cache

from routing import dispatch
from routing.models import Backend, HealthState
from tests.workers.installer.support import (
    ArtifactServer,
    FakeRunner,
    free_port,
    hooks_for,
    make_site,
    nvidia_machine,
)
from workers.installer.server import selectors
from workers.installer import launch
from workers.installer.server import adapter
from workers.installer.autostart import Launch
from workers.installer.download import part_path, partial_bytes
from workers.installer.layout import Layout
from workers.installer.pipeline import Installer
from workers.installer.server.models import InstallRun, InstallStatus

pytestmark = pytest.mark.django_db

MODEL = "/models/tiny.safetensors"


@pytest.fixture(autouse=True)
def instant_database_control(monkeypatch):
    # Production polls the row every 0.5 s; the test reacts to a click within the same chunk.
    monkeypatch.setattr(adapter, "CONTROL_INTERVAL", 0)
    monkeypatch.setattr(adapter, "WRITE_INTERVAL", 0)
    cache.clear()


@pytest.fixture
def sent(monkeypatch):
    """Tasks sent to Celery (after commit), instead of going to Redis."""
    messages = []
    monkeypatch.setattr(dispatch, "send", lambda name, args, queue, **options: messages.append((name, args, queue)))
    return messages


@pytest.fixture
def staff_client(client, alice):
    alice.is_staff = True
    alice.save()
    client.force_login(alice)
    return client


@pytest.fixture
def slow_server():
    server = ArtifactServer(rate=8_000_000).start()  # a 2 MB model takes ~0.25 s: room to click
    yield server
    server.stop()


@pytest.fixture
def site(slow_server, tmp_path, local_backend):
    return make_site(slow_server, tmp_path, model_size=2 * 1024 * 1024)


@pytest.fixture
def started(staff_client, site, tmp_path, sent, django_capture_on_commit_callbacks):
    """An install started from the page, pointed at the test manifest and a free port."""
    port = free_port()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/install/start/", {"path": str(tmp_path / "install"), "start": "on"})
    assert response.status_code == 302
    run = InstallRun.objects.get()
    # The page has no manifest or port field; aim this run at the test's ones.
    InstallRun.objects.filter(id=run.id).update(options={**run.options, "manifest": str(site.manifest), "port": port})
    yield InstallRun.objects.get()
    launch.stop(Launch(Layout(tmp_path / "install", "linux"), "127.0.0.1", port, cpu_only=True))


def run_task(run, generation, tmp_path, on_report=None):
    """The body of workers.install_tasks.run_install, with the test's runner and probe."""
    hooks = hooks_for(tmp_path, FakeRunner())
    overrides = {key: getattr(hooks, key) for key in ("run", "probe", "free_space", "policy", "home", "os_name")}
    return adapter.execute(run_id=run.id, generation=generation, report=on_report, **overrides)


def click_when_downloading(client, run, action: str, after_bytes: int = 256 * 1024):
    clicked = []

    def on_report(state, states):
        if state.name == "models" and state.bytes_done >= after_bytes and not clicked:
            clicked.append(client.post(f"/install/runs/{run.id}/{action}/").status_code)
    return on_report, clicked


def test_starting_from_the_page_dispatches_the_task_on_the_local_queue(started, sent):
    assert sent == [("workers.install_tasks.run_install", [started.id, 1], "local")]
    assert started.status == InstallStatus.PENDING and started.created_by.username == "alice"


@pytest.mark.slow
def test_pause_and_resume_through_the_page_continue_the_download_from_where_it_stopped(
        staff_client, started, site, tmp_path, sent, django_capture_on_commit_callbacks):
    on_report, clicked = click_when_downloading(staff_client, started, "pause")
    assert run_task(started, 1, tmp_path, on_report) == InstallStatus.PAUSED
    run = InstallRun.objects.get()
    model = tmp_path / "install" / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors"
    kept = partial_bytes(model)
    assert clicked == [302] and run.status == InstallStatus.PAUSED and run.control == "none"
    assert 0 < kept < 2 * 1024 * 1024 and part_path(model).exists() and not model.exists()
    assert {s["name"]: s["status"] for s in run.steps}["models"] == "paused"

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/install/runs/{run.id}/resume/")
    assert sent[-1] == ("workers.install_tasks.run_install", [run.id, 2], "local")
    assert run_task(run, 2, tmp_path) == InstallStatus.SUCCEEDED
    assert (MODEL, kept) in site.server.requests  # continued from the byte where it stopped
    assert site.server.sent[MODEL] < 2 * 1024 * 1024 + 256 * 1024
    assert model.read_bytes() == site.models["tiny.safetensors"]
    run = InstallRun.objects.get()
    assert run.status == InstallStatus.SUCCEEDED and run.progress == 100 and run.finished_at
    assert {s["name"]: s["status"] for s in run.steps}["verify"] == "done"


@pytest.mark.slow
def test_a_verified_install_switches_the_local_backend_on_for_routing(started, tmp_path, local_backend):
    Backend.objects.filter(id=local_backend.id).update(enabled=False, health=HealthState.DOWN, consecutive_failures=5)
    assert run_task(started, 1, tmp_path) == InstallStatus.SUCCEEDED
    backend = Backend.objects.get(name="local")
    port = started.options["port"]
    assert backend.url == f"http://127.0.0.1:{port}" and backend.enabled and backend.health == HealthState.UP
    assert backend.gpu_name == "cpu"


def test_cancel_through_the_page_stops_the_download_and_installs_nothing(staff_client, started, tmp_path):
    on_report, clicked = click_when_downloading(staff_client, started, "cancel")
    assert run_task(started, 1, tmp_path, on_report) == InstallStatus.CANCELLED
    run = InstallRun.objects.get()
    assert clicked == [302] and run.status == InstallStatus.CANCELLED and run.finished_at
    assert not (tmp_path / "install" / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors").exists()


def test_a_failure_shows_the_step_the_cause_and_what_to_do(staff_client, started, tmp_path):
    hooks = hooks_for(tmp_path, FakeRunner(), free=1000)
    adapter.execute(run_id=started.id, generation=1, run=hooks.run, probe=hooks.probe, free_space=hooks.free_space)
    run = InstallRun.objects.get()
    assert run.status == InstallStatus.FAILED and run.error.startswith("Step 'check' failed: not enough free disk")
    page = staff_client.get("/install/").content.decode()
    assert "not enough free disk space" in page and "What to do" in page and "data-resume" in page


def test_pausing_a_queued_install_stops_it_before_any_worker_starts_it(staff_client, started, tmp_path):
    staff_client.post(f"/install/runs/{started.id}/pause/")
    run = InstallRun.objects.get()
    assert run.status == InstallStatus.PAUSED and run.generation == 2
    assert run_task(run, 1, tmp_path) == "not claimed"  # the message already queued is stale


def test_cancelling_a_paused_install_ends_it_at_once(staff_client, started):
    staff_client.post(f"/install/runs/{started.id}/pause/")
    staff_client.post(f"/install/runs/{started.id}/cancel/")
    assert InstallRun.objects.get().status == InstallStatus.CANCELLED


def test_a_second_install_cannot_start_while_one_is_in_progress(staff_client, started, sent):
    response = staff_client.post("/install/start/", {"path": "/elsewhere"}, follow=True)
    assert "already in progress" in response.content.decode()
    assert InstallRun.objects.count() == 1 and len(sent) == 1


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_a_non_staff_user_cannot_steer_an_install(client, bob, started, action):
    client.force_login(bob)
    assert client.post(f"/install/runs/{started.id}/{action}/").status_code == 403
    assert InstallRun.objects.get().status == InstallStatus.PENDING


def test_a_non_staff_user_cannot_start_an_install(client, bob, sent):
    client.force_login(bob)
    assert client.post("/install/start/", {"path": "/tmp/x"}).status_code == 403
    assert InstallRun.objects.count() == 0 and sent == []


def test_a_non_staff_user_sees_the_status_read_only(client, bob, started):
    client.force_login(bob)
    page = client.get("/install/").content.decode()
    assert "Waiting for the local worker" in page and 'id="live"' in page
    assert "data-pause" not in page and "data-cancel" not in page and "install-start" not in page
    assert "Only staff can install" in page


def test_an_anonymous_visitor_is_sent_to_the_login_page(client):
    response = client.get("/install/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_page_shows_the_system_check_before_any_install(staff_client, tmp_path, monkeypatch):
    monkeypatch.setattr(selectors, "Installer",
                        lambda options: Installer(options, hooks_for(tmp_path, FakeRunner(), probe=nvidia_machine)))
    page = staff_client.get("/install/").content.decode()
    assert "NVIDIA A40" in page and "supports CUDA 12.4" in page and "<code>cu124</code>" in page
    assert "Stable Diffusion 1.5" in page and "free" in page and "needed" in page and "about" in page
    assert 'action="/install/start/"' in page


@pytest.mark.slow
def test_the_live_partial_shows_each_step_and_says_when_it_is_final(staff_client, started, tmp_path):
    live = staff_client.get(f"/install/runs/{started.id}/live/").content.decode()
    assert "data-final" not in live and 'data-step="models"' in live and "data-pause" in live
    run_task(started, 1, tmp_path)
    live = staff_client.get(f"/install/runs/{started.id}/live/").content.decode()
    assert "data-final" in live and "Installed" in live and "answers at" in live
    assert staff_client.get("/install/runs/999999/live/").status_code == 404


def test_a_non_staff_user_sees_no_server_paths_or_machine_details(client, bob, started):
    InstallRun.objects.filter(id=started.id).update(install_path="/srv/secret-place/comfyui", status="failed",
                                                    error="Could not write /srv/secret-place/comfyui/models")
    client.force_login(bob)
    page = client.get("/install/").content.decode() + client.get(f"/install/runs/{started.id}/live/").content.decode()
    assert "/srv/secret-place" not in page and "Install folder" not in page
    assert "Could not write models" in page  # what happened, without where


def test_the_page_says_when_comfyui_already_answers_instead_of_offering_an_install(staff_client, local_backend, client,
                                                                                 bob):
    from django.utils import timezone

    from routing.models import Backend

    Backend.objects.filter(id=local_backend.id).update(health="up", last_probe_at=timezone.now(),
                                                       last_ok_at=timezone.now(), gpu_name="NVIDIA GeForce RTX 4090")
    page = staff_client.get("/install/").content.decode()
    assert "ComfyUI already answers" in page and "NVIDIA GeForce RTX 4090" in page
    assert '<details class="install-anyway"><summary>Install another copy anyway</summary>' in page
    client.force_login(bob)
    assert "ComfyUI already answers" in client.get("/install/").content.decode()


@pytest.mark.slow
def test_a_killed_install_shows_at_once_and_resumes_from_the_page(staff_client, started, tmp_path, sent,
                                                                  django_capture_on_commit_callbacks):
    """Its row still says running with a fresh heartbeat; the free folder lock says its
    process is gone, so the page offers Resume now, not two minutes later."""
    from workers.installer.server import services
    from workers.installer.layout import install_lock

    services.install_claim(run_id=started.id, generation=1)
    layout = Layout(tmp_path / "install", "linux")
    with install_lock(layout):
        live = staff_client.get(f"/install/runs/{started.id}/live/").content.decode()
        assert "has stopped" not in live and "data-pause" in live  # alive: its lock is held
    live = staff_client.get(f"/install/runs/{started.id}/live/").content.decode()
    assert "The installer working on it has stopped" in live and "data-resume" in live

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(f"/install/runs/{started.id}/resume/").status_code == 302
    assert sent[-1] == ("workers.install_tasks.run_install", [started.id, 2], "local")
    assert run_task(started, 2, tmp_path) == InstallStatus.SUCCEEDED


@pytest.mark.slow
def test_after_an_install_the_page_shows_what_an_install_would_do_now_not_the_old_plan(
        staff_client, started, tmp_path, monkeypatch):
    monkeypatch.setattr(selectors, "Installer", lambda options: Installer(options, hooks_for(tmp_path, FakeRunner())))
    staff_client.get("/install/")  # the preview is cached...
    assert run_task(started, 1, tmp_path) == InstallStatus.SUCCEEDED  # ...and dropped when the install ends
    assert InstallRun.objects.get().plan["download_bytes"] > 0  # the plan the run started with
    page = staff_client.get("/install/").content.decode()
    assert "already installed" in page and "2.0\xa0MB to download" not in page
