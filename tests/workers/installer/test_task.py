"""The installer's Celery task and its database side: claims, duplicates, a dead worker's run
taken over, and the `manage.py install_comfyui` front."""
import json
from datetime import timedelta
from functools import partial

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from routing import dispatch
from routing.models import Backend
from tests.workers.installer.support import (
    ArtifactServer,
    FakeRunner,
    free_port,
    hooks_for,
    make_site,
)
from workers.installer.server import selectors, services
from workers.installer.server import tasks as install_tasks
from workers.installer import launch
from workers.installer.server import adapter
from workers.installer.autostart import Launch
from workers.installer.layout import Layout, install_lock
from workers.installer.server.models import InstallRun, InstallStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def artifact_server():
    with ArtifactServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)


def test_the_task_runs_on_the_local_queue_with_acks_late_and_long_time_limits():
    task = install_tasks.run_install
    assert task.queue == "local" and task.acks_late is True
    assert task.soft_time_limit >= 4 * 3600 and task.time_limit > task.soft_time_limit
    assert json.loads(json.dumps([1, 2])) == [1, 2]  # its arguments are plain ids


def test_a_duplicate_delivery_of_a_running_install_does_nothing():
    run = services.install_start(user=None, options={}, send=False)
    assert services.install_claim(run_id=run.id, generation=1)
    assert adapter.execute(run_id=run.id, generation=1) == "not claimed"
    assert InstallRun.objects.get().status == InstallStatus.RUNNING


def test_a_message_from_before_a_resume_is_stale():
    run = services.install_start(user=None, options={}, send=False)
    services.install_pause(run_id=run.id)
    assert services.install_resume(run_id=run.id, send=False) == 3
    assert not services.install_claim(run_id=run.id, generation=1)
    assert services.install_claim(run_id=run.id, generation=3)


def test_a_redelivered_message_takes_over_the_run_of_a_dead_worker():
    run = services.install_start(user=None, options={}, send=False)
    services.install_claim(run_id=run.id, generation=1)
    InstallRun.objects.filter(id=run.id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert services.install_claim(run_id=run.id, generation=1)


def test_giving_up_after_repeated_crashes_fails_only_a_run_nobody_is_running():
    run = services.install_start(user=None, options={}, send=False)
    services.install_claim(run_id=run.id, generation=1)
    assert not services.install_give_up(run_id=run.id, generation=1)  # a live task still has it
    InstallRun.objects.filter(id=run.id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert services.install_give_up(run_id=run.id, generation=1)
    assert InstallRun.objects.get().status == InstallStatus.FAILED


def test_a_stalled_install_can_be_resumed_from_the_page():
    run = services.install_start(user=None, options={}, send=False)
    services.install_claim(run_id=run.id, generation=1)
    assert services.install_resume(run_id=run.id, send=False) is None  # alive: nothing to resume
    InstallRun.objects.filter(id=run.id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert services.install_resume(run_id=run.id, send=False) == 2


@pytest.fixture
def command_site(artifact_server, tmp_path, monkeypatch, local_backend):
    site = make_site(artifact_server, tmp_path)
    hooks = hooks_for(tmp_path, FakeRunner())
    test_hooks = {key: getattr(hooks, key) for key in ("run", "probe", "free_space", "policy", "home", "os_name")}
    monkeypatch.setattr(adapter, "execute", partial(adapter.execute, **test_hooks))
    port = free_port()
    yield site, port
    launch.stop(Launch(Layout(tmp_path / "install", "linux"), "127.0.0.1", port, cpu_only=True))


@pytest.mark.slow
def test_the_management_command_installs_with_progress_lines_and_registers_the_backend(
        command_site, tmp_path, capsys):
    site, port = command_site
    call_command("install_comfyui", "--yes", "--no-service", "--path", str(tmp_path / "install"),
                 "--manifest", str(site.manifest), "--port", str(port))
    out = capsys.readouterr().out
    assert "[4/8] Download the models: done" in out and "[7/8] Start ComfyUI and verify: done" in out
    assert f"answers at http://127.0.0.1:{port}" in out
    run = InstallRun.objects.get()
    assert run.status == InstallStatus.SUCCEEDED and run.install_path == str(tmp_path / "install")
    assert Backend.objects.get(name="local").url == f"http://127.0.0.1:{port}"


def test_the_management_command_takes_over_a_paused_install(command_site, tmp_path, capsys):
    site, port = command_site
    paused = services.install_start(user=None, options={"path": "/somewhere/else"}, send=False)
    services.install_pause(run_id=paused.id)
    call_command("install_comfyui", "--yes", "--no-service", "--no-start", "--path", str(tmp_path / "install"),
                 "--manifest", str(site.manifest), "--port", str(port))
    run = InstallRun.objects.get()
    assert run.id == paused.id and run.status == InstallStatus.SUCCEEDED
    assert run.options["path"] == str(tmp_path / "install")
    assert "Continuing install" in capsys.readouterr().out


def test_the_management_command_refuses_while_a_worker_is_installing(command_site, tmp_path):
    folder = tmp_path / "install"
    run = services.install_start(user=None, options={"path": str(folder)}, send=False)
    services.install_claim(run_id=run.id, generation=1)
    with install_lock(Layout(folder, "linux")):  # the worker's process holds the folder
        with pytest.raises(CommandError, match="running on a worker"):
            call_command("install_comfyui", "--yes", "--path", str(folder))
    assert InstallRun.objects.get().generation == 1


def test_the_management_command_takes_over_a_killed_install_at_once(command_site, tmp_path, capsys):
    """The row says running with a fresh heartbeat, but the folder lock is free: the process
    that held it is gone (the OS frees a dead process's lock), so no 120 s wait."""
    site, port = command_site
    folder = tmp_path / "install"
    run = services.install_start(user=None, options={"path": str(folder)}, send=False)
    services.install_claim(run_id=run.id, generation=1)
    with install_lock(Layout(folder, "linux")):
        pass  # it ran here, then was killed: the lock file is there and free
    assert selectors.holder_gone(InstallRun.objects.get()) and not selectors.is_stalled(InstallRun.objects.get())

    call_command("install_comfyui", "--yes", "--no-service", "--no-start", "--path", str(folder),
                 "--manifest", str(site.manifest), "--port", str(port))
    again = InstallRun.objects.get()
    assert again.id == run.id and again.status == InstallStatus.SUCCEEDED and again.generation == 2
    assert f"Continuing install #{run.id}" in capsys.readouterr().out


def test_a_rerun_into_the_folder_of_a_failed_install_continues_that_row(command_site, tmp_path):
    site, port = command_site
    args = ["install_comfyui", "--yes", "--no-service", "--no-start", "--path", str(tmp_path / "install"),
            "--port", str(port)]
    with pytest.raises(CommandError):
        call_command(*args, "--manifest", str(tmp_path / "missing.json"))
    failed = InstallRun.objects.get()
    assert failed.status == InstallStatus.FAILED

    call_command(*args, "--manifest", str(site.manifest))
    assert InstallRun.objects.count() == 1  # the same install, not a second row
    run = InstallRun.objects.get()
    assert run.id == failed.id and run.status == InstallStatus.SUCCEEDED and run.error == ""

    call_command(*args, "--manifest", str(site.manifest))  # after a success, a repair run is its own row
    assert InstallRun.objects.count() == 2


def test_a_run_is_claimed_only_with_its_folder_lock_held(tmp_path):
    folder = tmp_path / "install"
    run = services.install_start(user=None, options={"path": str(folder), "manifest": str(tmp_path / "none.json")},
                                 send=False)
    with install_lock(Layout(folder, "linux")):  # another installer (a bootstrap script) works there
        assert adapter.execute(run_id=run.id, generation=run.generation) == InstallStatus.FAILED
    failed = InstallRun.objects.get()
    assert "another installer is already working in" in failed.error


def test_the_management_command_fails_with_the_step_and_what_to_do(command_site, tmp_path):
    site, port = command_site
    with pytest.raises(CommandError) as error:
        call_command("install_comfyui", "--yes", "--no-service", "--path", str(tmp_path / "install"),
                     "--manifest", str(tmp_path / "missing.json"), "--port", str(port))
    assert "Step 'check' failed: cannot read the manifest" in str(error.value)
    assert "What to do: pass --manifest" in str(error.value)
