"""The whole installer, step by step, against the loopback artifact server and a stand-in
ComfyUI that the start step really launches (and each test stops)."""
import json
import socket
import time

import pytest

from tests.workers.installer.support import (
    ArtifactServer,
    FakeRunner,
    Fault,
    hooks_for,
    make_site,
    nvidia_machine,
    options_for,
    tar_gz,
    without_pip_configuration,
    write_manifest,
)
from workers.installer import launch
from workers.installer.environment import CHECK_SCRIPT
from workers.installer.errors import InstallError
from workers.installer.pipeline import Installer, overall_progress


@pytest.fixture
def artifact_server():
    with ArtifactServer() as server:
        yield server


def installer_for(installers, site, tmp_path, runner=None, hooks=None, same_as=None, **options):
    runner = runner or FakeRunner()
    chosen = same_as.options if same_as else options_for(site, tmp_path, **options)
    installer = Installer(chosen, hooks or hooks_for(tmp_path, runner))
    installers.append(installer)
    return installer


def statuses(installer) -> dict:
    return {state.name: state.status for state in installer.states}


@pytest.mark.slow
def test_a_full_install_into_a_temp_dir_ends_with_the_verify_step_green(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    registered = []
    hooks = hooks_for(tmp_path, FakeRunner(), register=lambda info: registered.append(info) or "registered")
    installer = installer_for(installers, site, tmp_path, hooks=hooks)
    installer.run()
    assert statuses(installer) == {"check": "done", "download": "done", "extract": "done", "models": "done",
                                   "environment": "done", "service": "done", "verify": "done", "register": "done"}
    root = installer.layout.root
    assert (root / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors").read_bytes() == \
        site.models["tiny.safetensors"]
    assert not (root / "downloads" / "ComfyUI-0.0-standin.tar.gz").exists()  # archive removed once unpacked
    stats = launch.system_stats(installer.launch.url)
    assert stats["system"]["comfyui_version"] == "0.0-standin" and "--cpu" in stats["system"]["argv"]
    assert registered == [{"url": installer.launch.url, "gpu": "cpu", "vram_total": 0}]
    assert overall_progress(installer.states) == 100


def test_every_step_reports_progress_bytes_and_speed(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path, model_size=1024 * 1024)
    reports = []
    hooks = hooks_for(tmp_path, FakeRunner(), report=lambda state, states: reports.append(state.as_dict()))
    installer_for(installers, site, tmp_path, hooks=hooks, start=False).run()
    models = [r for r in reports if r["name"] == "models" and r["status"] == "running"]
    assert models[-1]["bytes_total"] == 1024 * 1024 and models[-1]["bytes_done"] == 1024 * 1024
    assert any(r["speed"] > 0 for r in models)
    assert {r["name"] for r in reports} == {"check", "download", "extract", "models", "environment", "service",
                                            "verify", "register"}


@pytest.mark.slow
def test_running_it_again_is_idempotent_and_fast(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    first = installer_for(installers, site, tmp_path)
    first.run()
    requests_before = len(artifact_server.requests)
    again = FakeRunner()
    started = time.monotonic()
    second = installer_for(installers, site, tmp_path, runner=again, same_as=first)
    second.run()
    assert time.monotonic() - started < 3
    assert len(artifact_server.requests) == requests_before  # nothing downloaded again
    [check] = again.commands  # one python subprocess, the readiness check: no venv, no pip
    assert check[:3] == [str(second.layout.python), "-I", str(CHECK_SCRIPT)]
    assert statuses(second) == {"check": "done", "download": "skipped", "extract": "skipped", "models": "skipped",
                                "environment": "skipped", "service": "done", "verify": "done",
                                "register": "skipped"}


def test_a_disk_too_small_fails_before_downloading_anything(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    installer = installer_for(installers, site, tmp_path, hooks=hooks_for(tmp_path, FakeRunner(), free=1024 * 1024))
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "check" and "not enough free disk space" in error.value.cause
    assert "--skip-models" in error.value.fix
    assert artifact_server.requests == []
    assert statuses(installer)["download"] == "pending"


def test_skip_models_downloads_no_model(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    installer = installer_for(installers, site, tmp_path, skip_models=True, start=False)
    installer.run()
    assert statuses(installer)["models"] == "skipped"
    assert [path for path, _ in artifact_server.requests] == ["/ComfyUI-0.0-standin.tar.gz"]


def test_persistent_model_corruption_fails_the_models_step_with_nothing_in_place(
        artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path, model_fault=Fault(corrupt="always"))
    installer = installer_for(installers, site, tmp_path)
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "models" and "mismatch" in str(error.value)
    checkpoints = installer.layout.comfy_dir / "models" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["put_checkpoints_here"]
    assert statuses(installer)["environment"] == "pending"


def test_an_archive_escaping_the_folder_fails_the_extract_step(artifact_server, tmp_path, installers):
    evil = tar_gz({"ComfyUI-x/main.py": b"", "ComfyUI-x/../../../evil.py": b"owned"})
    url = artifact_server.add("/evil.tar.gz", evil)
    manifest = write_manifest(tmp_path / "evil.json", url, evil, [])
    installer = Installer(options_for(type("Site", (), {"manifest": manifest}), tmp_path),
                          hooks_for(tmp_path, FakeRunner()))
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "extract" and "refusing to extract" in error.value.cause
    assert not installer.layout.comfy_dir.exists() and not (tmp_path / "evil.py").exists()


def test_a_failing_pip_names_the_step_the_cause_and_what_to_do(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    installer = installer_for(installers, site, tmp_path, runner=FakeRunner(fail="torchvision"))
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "environment"
    assert "Installing PyTorch (cpu) failed (exit code 1): ERROR: simulated failure" in error.value.cause
    assert "run the installer again" in error.value.fix
    assert str(error.value).startswith("Step 'environment' failed:")


def test_the_nvidia_build_comes_from_its_own_index_and_is_pinned_for_comfyuis_requirements(
        artifact_server, tmp_path, installers, monkeypatch):
    without_pip_configuration(monkeypatch)
    site = make_site(artifact_server, tmp_path)
    runner = FakeRunner(torch_found={"torch": "2.6.0+cu124", "cuda": "12.4", "hip": None, "gpu": True})
    hooks = hooks_for(tmp_path, runner, probe=nvidia_machine)
    installer_for(installers, site, tmp_path, hooks=hooks, start=False).run()
    torch, requirements = runner.pip_installs()[1:]
    assert torch[-2:] == ["--index-url", "https://download.pytorch.org/whl/cu124"]
    assert requirements[-2] == "-c" and "torch==2.6.0+cu124" in open(requirements[-1]).read()


def test_a_cuda_build_that_came_out_without_cuda_is_a_clear_failure(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    hooks = hooks_for(tmp_path, FakeRunner(), probe=nvidia_machine)  # the fake installs a CPU torch
    with pytest.raises(InstallError) as error:
        installer_for(installers, site, tmp_path, hooks=hooks, start=False).run()
    assert error.value.step == "environment" and "without CUDA support" in error.value.cause


def test_a_venv_made_for_another_pytorch_build_is_rebuilt(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    installer_for(installers, site, tmp_path, start=False).run()
    runner = FakeRunner(torch_found={"torch": "2.6.0+cu124", "cuda": "12.4", "hip": None, "gpu": True})
    hooks = hooks_for(tmp_path, runner, probe=nvidia_machine)
    installer_for(installers, site, tmp_path, start=False, hooks=hooks).run()
    assert runner.commands[0][1:3] == ["-m", "venv"]
    assert json.loads((tmp_path / "install" / "venv" / "comfy-hybrid-env.json").read_text())["build"] == "cu124"


@pytest.mark.slow
def test_a_port_taken_by_another_program_moves_comfyui_to_the_next_free_port(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        installer = installer_for(installers, site, tmp_path, port=taken)
        installer.run()
        assert installer.port != taken and launch.system_stats(f"http://127.0.0.1:{installer.port}")
    note = f"port {taken} is used by a program that is not ComfyUI"
    assert note in installer.state("check").message and note in installer.outcome()
    assert installer.plan["port"] == installer.port
    assert installer.layout.read_state()["port"] == {"asked": taken, "chosen": installer.port}


@pytest.mark.slow
def test_a_comfyui_that_crashes_on_start_fails_verify_with_its_log(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    installer = installer_for(installers, site, tmp_path, start=False)
    installer.run()
    (installer.layout.comfy_dir / "main.py").write_text("raise SystemExit('CUDA driver too old')\n")
    again = installer_for(installers, site, tmp_path)
    with pytest.raises(InstallError) as error:
        again.run()
    assert error.value.step == "verify" and "CUDA driver too old" in error.value.cause
    assert "comfyui.log" in error.value.fix


def test_two_installers_cannot_work_in_the_same_folder_at_once(artifact_server, tmp_path, installers):
    from workers.installer.layout import install_lock

    site = make_site(artifact_server, tmp_path)
    installer = installer_for(installers, site, tmp_path)
    installer.layout.root.mkdir(parents=True)
    with install_lock(installer.layout):
        with pytest.raises(InstallError) as error:
            installer_for(installers, site, tmp_path).run()
    assert "another installer is already working" in error.value.cause


def test_comfyui_is_started_without_the_workers_secrets(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = launch.comfy_environment()
    assert "GEMINI_API_KEY" not in env and "DATABASE_URL" not in env and env["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_model_already_in_place_is_verified_once_and_not_downloaded(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    checkpoint = tmp_path / "install" / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors"
    installer_for(installers, site, tmp_path, skip_models=True, start=False).run()
    checkpoint.write_bytes(site.models["tiny.safetensors"])  # e.g. copied from another machine
    installer = installer_for(installers, site, tmp_path, start=False)
    installer.run()
    assert statuses(installer)["models"] == "skipped"
    assert "/models/tiny.safetensors" not in [path for path, _ in artifact_server.requests]
    assert installer.layout.read_state()["verified"]["models/checkpoints/tiny.safetensors"]["sha256"]


@pytest.mark.slow
def test_the_core_runs_as_a_script_without_django(artifact_server, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    site = make_site(artifact_server, tmp_path)
    script = ("import json, sys\n"
              "from workers.installer.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'Django was imported'\n"
              "sys.exit(code)\n")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script, "check", "--json", "--manifest", str(site.manifest),
                           "--path", str(tmp_path / "install")], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["path"] == str(tmp_path / "install") and plan["items"][0]["name"] == "ComfyUI 0.0-standin"
    refused = subprocess.run([sys.executable, "-m", "workers.installer", "install", "--path", str(tmp_path / "x")],
                             cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert refused.returncode == 1 and "--yes" in refused.stderr


@pytest.mark.slow
def test_running_again_on_another_port_replaces_the_comfyui_it_started(artifact_server, tmp_path, installers):
    site = make_site(artifact_server, tmp_path)
    first = installer_for(installers, site, tmp_path)
    first.run()
    old_pid = int(first.layout.pid_file.read_text())
    second = installer_for(installers, site, tmp_path)  # a new free port
    second.run()
    assert launch.system_stats(second.launch.url) and launch.system_stats(first.launch.url) is None
    assert int(second.layout.pid_file.read_text()) != old_pid


def test_stop_never_kills_a_process_that_is_not_this_comfyui(tmp_path):
    import os
    from workers.installer.autostart import Launch
    from workers.installer.layout import Layout

    target = Launch(Layout(tmp_path, "linux"), "127.0.0.1", 8188, cpu_only=True)
    target.layout.pid_file.parent.mkdir(parents=True)
    target.layout.pid_file.write_text(str(os.getpid()))  # a reused pid: this test process
    assert launch.stop(target) is False and not target.layout.pid_file.exists()
