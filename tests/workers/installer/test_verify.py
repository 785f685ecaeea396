"""Verify proves the ComfyUI answering is this install's: by its argv, on a port of its own;
ComfyUI's start-up check runs first; a failure quotes ComfyUI's first error, not its log's tail.
The stand-in ComfyUI really runs (and each test stops it: the `installers` fixture, conftest.py)."""
import json

import pytest

from tests.workers.installer.support import (
    CRASHES_WHEN_SERVING_MAIN,
    MISSING_MODULE,
    MISSING_MODULE_MAIN,
    ArtifactServer,
    Completed,
    FakeRunner,
    hooks_for,
    make_site,
    nvidia_machine,
    options_for,
)
from workers.installer import comfylog, identity, launch
from workers.installer.autostart import Launch
from workers.installer.errors import InstallError
from workers.installer.layout import Layout
from workers.installer.pipeline import Installer

MISSING = f"ModuleNotFoundError: No module named '{MISSING_MODULE}'"


@pytest.fixture
def site(tmp_path):
    with ArtifactServer() as server:
        yield make_site(server, tmp_path)


def installer_in(installers, site, tmp_path, folder="install", runner=None, hooks=None, **options) -> Installer:
    installer = Installer(options_for(site, tmp_path, path=str(tmp_path / folder), **options),
                          hooks or hooks_for(tmp_path, runner or FakeRunner()))
    installers.append(installer)
    return installer


def answering_main(installer) -> str:
    return identity.argv_of(launch.system_stats(installer.launch.url))[0]


# Which ComfyUI answers -------------------------------------------------------------------
def stats_with(argv) -> dict:
    return {"system": {"argv": argv}, "devices": []}


def test_a_comfyui_is_this_installs_only_when_its_argv_names_this_main_py(tmp_path):
    layout = Layout(tmp_path / "install", "linux")
    main = str(layout.comfy_dir / "main.py")
    assert identity.runs_this_install(stats_with([main, "--port", "8188"]), layout)
    assert not identity.runs_this_install(stats_with([str(tmp_path / "other/ComfyUI/main.py")]), layout)
    assert not identity.runs_this_install(stats_with(["main.py", "--port", "8188"]), layout)  # proves nothing
    assert not identity.runs_this_install(stats_with(None), layout) and not identity.runs_this_install(None, layout)


def test_the_main_py_is_compared_by_its_resolved_path(tmp_path):
    (tmp_path / "real/ComfyUI").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    layout = Layout(tmp_path / "real", "linux")
    assert identity.runs_this_install(stats_with([str(tmp_path / "link/ComfyUI/main.py")]), layout)
    assert identity.runs_this_install(stats_with([str(tmp_path / "real/ComfyUI/../ComfyUI/main.py")]), layout)


def test_settings_match_when_ours_come_first_and_the_users_extra_arguments_follow(tmp_path):
    gpu = Launch(Layout(tmp_path, "linux"), "127.0.0.1", 8188, cpu_only=False)
    cpu = Launch(Layout(tmp_path, "linux"), "127.0.0.1", 8188, cpu_only=True)
    assert identity.has_settings(stats_with([cpu.main, *cpu.comfy_args, "--lowvram"]), cpu)
    assert not identity.has_settings(stats_with([cpu.main, *cpu.comfy_args]), gpu)  # an old --cpu is ours
    assert not identity.has_settings(stats_with([gpu.main, *gpu.comfy_args]), cpu)


# The first error, not the tail -----------------------------------------------------------
CHAINED = """Starting server
Traceback (most recent call last):
  File "/c/nodes.py", line 2, in load
    import cv2
ModuleNotFoundError: No module named 'cv2'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/c/main.py", line 9, in <module>
    raise RuntimeError("custom nodes failed")
RuntimeError: custom nodes failed
"""


def test_the_first_error_is_the_last_line_of_the_first_traceback():
    assert comfylog.first_error(CHAINED) == "ModuleNotFoundError: No module named 'cv2'"
    assert comfylog.missing_module("ModuleNotFoundError: No module named 'google.protobuf'") == "google"


def test_without_a_traceback_the_last_lines_are_quoted():
    assert comfylog.first_error("CUDA driver too old\n") == ""
    assert comfylog.quote_error("a\nb\n\nCUDA driver too old\n") == "a | b | CUDA driver too old"


# Ports -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_install_on_a_taken_port_gets_the_next_free_one_and_registers_its_own_url(
        site, tmp_path, installers):
    first = installer_in(installers, site, tmp_path, folder="first")
    first.run()
    registered = []
    hooks = hooks_for(tmp_path, FakeRunner(), register=lambda info: registered.append(info["url"]) or "registered")
    second = installer_in(installers, site, tmp_path, folder="second", hooks=hooks, port=first.port)
    second.run()
    assert second.port != first.port
    assert answering_main(second) == str(second.layout.comfy_dir / "main.py")
    assert answering_main(first) == str(first.layout.comfy_dir / "main.py")  # the first is left running
    assert registered == [second.launch.url]
    taken = f"port {first.port} is used by the ComfyUI of {first.layout.comfy_dir / 'main.py'}"
    assert taken in second.state("check").message and taken in second.outcome()
    assert f"--port {second.port} " in second.layout.start_script.read_text()
    assert second.layout.read_state()["port"] == {"asked": first.port, "chosen": second.port}


@pytest.mark.slow
def test_a_rerun_keeps_the_port_chosen_before_even_once_the_asked_one_is_free(site, tmp_path, installers):
    first = installer_in(installers, site, tmp_path, folder="first")
    first.run()
    second = installer_in(installers, site, tmp_path, folder="second", port=first.port)
    second.run()
    launch.stop(first.launch)
    pid = second.layout.pid_file.read_text()
    again = installer_in(installers, site, tmp_path, folder="second", port=first.port)
    again.run()
    assert again.port == second.port and again.layout.pid_file.read_text() == pid  # no restart
    assert f"chosen by an earlier run when port {first.port} was taken" in again.outcome()


@pytest.mark.slow
def test_an_old_comfyui_of_this_install_with_other_settings_is_restarted(site, tmp_path, installers):
    cpu = installer_in(installers, site, tmp_path)
    cpu.run()
    old_pid = cpu.layout.pid_file.read_text()
    gpu_runner = FakeRunner(torch_found={"torch": "2.6.0+cu124", "cuda": "12.4", "hip": None, "gpu": True})
    gpu = installer_in(installers, site, tmp_path, hooks=hooks_for(tmp_path, gpu_runner, probe=nvidia_machine),
                       port=cpu.port)
    gpu.run()
    assert gpu.port == cpu.port and gpu.layout.pid_file.read_text() != old_pid
    argv = identity.argv_of(launch.system_stats(gpu.launch.url))
    assert argv[0] == str(gpu.layout.comfy_dir / "main.py") and "--cpu" not in argv


# ComfyUI's own start-up check ------------------------------------------------------------
@pytest.mark.slow
def test_the_start_up_check_runs_with_the_servers_own_arguments_before_it(site, tmp_path, installers):
    installer = installer_in(installers, site, tmp_path)
    installer.run()
    log = installer.layout.log_file.read_text()
    checked = json.loads(log.split("start-up check passed: ")[1].splitlines()[0])
    assert checked == [*installer.launch.argv[1:], "--quick-test-for-ci"]
    assert log.index("start-up check passed") < log.index("stand-in ComfyUI listening")


def verify_failure_with(main_py: str, installers, site, tmp_path) -> tuple:
    """(the InstallError, the installer) of a run whose installed main.py was replaced."""
    installer_in(installers, site, tmp_path, start=False).run()
    again = installer_in(installers, site, tmp_path)
    (again.layout.comfy_dir / "main.py").write_text(main_py)
    with pytest.raises(InstallError) as error:
        again.run()
    assert error.value.step == "verify"
    return error, again


@pytest.mark.slow
def test_a_missing_module_fails_the_start_up_check_with_its_error_and_the_log(site, tmp_path, installers):
    error, again = verify_failure_with(MISSING_MODULE_MAIN, installers, site, tmp_path)
    assert error.value.cause == f"ComfyUI's start-up check (main.py --quick-test-for-ci) failed with exit code 1: {MISSING}"
    assert f"'{MISSING_MODULE}'" in error.value.fix and "pip install" in error.value.fix
    assert str(again.layout.log_file) in error.value.fix
    assert not again.layout.pid_file.exists()  # the server was never started


@pytest.mark.slow
def test_a_comfyui_that_exits_before_answering_quotes_its_first_error_not_the_tail(site, tmp_path, installers):
    error, again = verify_failure_with(CRASHES_WHEN_SERVING_MAIN, installers, site, tmp_path)
    assert error.value.cause == f"ComfyUI exited with code 3 before answering: {MISSING}"
    assert str(again.layout.log_file) in error.value.fix


# Services --------------------------------------------------------------------------------
def test_two_installs_get_two_services_recorded_in_their_state(site, tmp_path, installers):
    runner = FakeRunner()
    made = [installer_in(installers, site, tmp_path, folder=folder, runner=runner, service=True, start=False)
            for folder in ("comfyui", "elsewhere/comfyui")]
    for installer in made:
        installer.run()
    services = [installer.layout.read_state()["service"] for installer in made]
    assert services[0]["name"] != services[1]["name"]
    for installer, service in zip(made, services):
        assert service["name"] == installer.launch.names.unit and service["scope"] == "user"
        assert (tmp_path / "home/.config/systemd/user" / service["name"]).exists()
        assert service["name"] in installer.state("service").message


def test_the_old_shared_unit_of_this_install_is_replaced_by_its_own(site, tmp_path, installers):
    installer = installer_in(installers, site, tmp_path, service=True, start=False)
    old = tmp_path / "home/.config/systemd/user/comfy-hybrid-comfyui.service"
    old.parent.mkdir(parents=True)
    old.write_text(f"[Service]\nWorkingDirectory={installer.layout.comfy_dir}\n")
    installer.run()
    assert not old.exists() and (old.parent / installer.launch.names.unit).exists()
    assert f"removed the old shared entry that ran this install ({old}" in installer.state("service").message


def test_as_root_the_service_is_a_system_unit(site, tmp_path, installers):
    runner = FakeRunner()
    hooks = hooks_for(tmp_path, runner, as_root=True)
    installer = installer_in(installers, site, tmp_path, hooks=hooks, service=True, start=False)
    installer.run()
    name = installer.launch.names.unit
    assert (tmp_path / "etc-systemd-system" / name).exists()
    assert installer.layout.read_state()["service"]["start_command"] == ["systemctl", "restart", name]


def test_a_system_service_asked_without_root_fails_the_service_step(site, tmp_path, installers):
    installer = installer_in(installers, site, tmp_path, service=True, system_service=True, start=False)
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "service" and "sudo" in error.value.fix


@pytest.mark.slow
def test_a_crash_looping_service_fails_verify_within_a_few_polls_with_its_log(site, tmp_path, installers):
    journal = f"Traceback (most recent call last):\n  File \"main.py\", line 1\n{MISSING}\nFailed with result 'exit-code'.\n"
    restarting = Completed(0, "ActiveState=activating\nSubState=auto-restart\nNRestarts=1\nExecMainStatus=1\n"
                              "Result=exit-code\n")
    running = Completed(0, "ActiveState=active\nSubState=running\nNRestarts=0\nExecMainStatus=0\nResult=success\n")
    runner = FakeRunner(answers={"systemctl --user show -p": [running, restarting],
                                 "journalctl --user -u": [Completed(0, journal)]})
    installer = installer_in(installers, site, tmp_path, runner=runner, service=True, start_timeout=300.0)
    with pytest.raises(InstallError) as error:
        installer.run()
    unit = installer.launch.names.unit
    assert error.value.step == "verify" and runner.asked("systemctl --user show -p") == 2
    assert runner.asked(f"systemctl --user restart {unit}") == 1
    assert error.value.cause.startswith(f"the service {unit} keeps restarting ComfyUI")
    assert MISSING in error.value.cause and "journalctl --user -u" in error.value.fix


def test_a_rerun_with_no_service_removes_the_service_an_earlier_run_registered(site, tmp_path, installers):
    runner = FakeRunner()
    first = installer_in(installers, site, tmp_path, runner=runner, service=True, start=False)
    first.run()
    name = first.layout.read_state()["service"]["name"]
    unit = tmp_path / "home/.config/systemd/user" / name
    desktop = tmp_path / "home/.local/share/applications" / f"{name.removesuffix('.service')}.desktop"
    assert unit.exists() and any(p.exists() for p in desktop.parent.glob("*.desktop"))

    again = installer_in(installers, site, tmp_path, runner=runner, service=False, start=False)
    again.run()
    assert ["systemctl", "--user", "disable", "--now", name] in runner.commands  # stopped, not at boot any more
    assert not unit.exists() and not list(desktop.parent.glob("*.desktop"))
    assert again.layout.read_state()["service"] == {}
    assert f"removed the service an earlier run registered ({name}" in again.state("service").message

    third = installer_in(installers, site, tmp_path, runner=runner, service=False, start=False)
    third.run()  # nothing left to remove: says nothing about it
    assert "removed" not in third.state("service").message


def test_a_unit_written_without_a_user_session_is_recorded_and_removed_later(site, tmp_path, installers):
    first = installer_in(installers, site, tmp_path, runner=FakeRunner(fail="show-environment"), service=True,
                         start=False)
    first.run()
    unit = tmp_path / "home/.config/systemd/user" / first.launch.names.unit
    assert unit.exists() and str(unit) in first.layout.read_state()["service"]["files"]
    installer_in(installers, site, tmp_path, service=False, start=False).run()
    assert not unit.exists()
