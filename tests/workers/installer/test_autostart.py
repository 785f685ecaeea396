"""Start scripts, the systemd unit, the launchd plist, the PowerShell script, Windows tasks and
shortcuts: their content, and the commands that register them."""
import configparser
import hashlib
import plistlib
from pathlib import Path, PureWindowsPath

import pytest

from tests.workers.installer.support import FakeRunner
from workers.installer import autostart
from workers.installer.autostart import Launch, Scope
from workers.installer.errors import Failure
from workers.installer.layout import Layout
from workers.installer.runner import Completed


def linux_launch(root="/home/ann/comfy ui", cpu=False) -> Launch:
    return Launch(Layout(Path(root), "linux"), "127.0.0.1", 8188, cpu_only=cpu)


def windows_launch(root=r"C:\Users\O'Brien\comfyui") -> Launch:
    return Launch(Layout(PureWindowsPath(root), "windows"), "127.0.0.1", 8188, cpu_only=False)


def parsed_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text)
    return unit


def test_the_systemd_unit_runs_comfyui_from_its_venv_and_restarts_it():
    unit = autostart.render_systemd_unit(linux_launch())
    assert "[Service]\nType=simple\nWorkingDirectory=/home/ann/comfy ui/ComfyUI\n" in unit
    assert ('ExecStart="/home/ann/comfy ui/venv/bin/python" "/home/ann/comfy ui/ComfyUI/main.py" '
            '"--listen" "127.0.0.1" "--port" "8188" "--preview-method" "auto"\n') in unit
    assert "Restart=on-failure\n" in unit and "WantedBy=default.target" in unit
    assert "Environment=PYTHONUNBUFFERED=1" in unit


def test_the_systemd_unit_escapes_percent_signs_which_systemd_would_expand():
    unit = autostart.render_systemd_unit(linux_launch("/srv/100%/comfy"))
    assert "WorkingDirectory=/srv/100%%/comfy/ComfyUI" in unit and '"/srv/100%%/comfy/venv/bin/python"' in unit


def test_a_cpu_build_starts_comfyui_with_cpu():
    assert '"--cpu"' in autostart.render_systemd_unit(linux_launch(cpu=True))
    assert " --cpu " in autostart.render_start_sh(linux_launch(cpu=True))


def test_a_user_unit_has_no_network_target_which_the_user_manager_does_not_have():
    unit = parsed_unit(autostart.render_systemd_unit(linux_launch()))
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert "After" not in unit["Unit"] and "Wants" not in unit["Unit"] and "User" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == "default.target"
    assert unit["Service"]["Restart"] == "on-failure"


def test_a_system_unit_runs_as_the_folders_owner_after_the_network_at_boot():
    scope = Scope(True, Path("/etc/systemd/system"), user="ann")
    unit = parsed_unit(autostart.render_systemd_unit(linux_launch(), scope))
    assert unit["Service"]["User"] == "ann"
    assert unit["Unit"]["Wants"] == unit["Unit"]["After"] == "network-online.target"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Service"]["ExecStart"] == autostart.render_systemd_unit(linux_launch()).split("ExecStart=")[1] \
        .splitlines()[0]  # the same command as the user unit's


def test_service_names_are_the_folders_slug_and_a_hash_of_its_resolved_path():
    names = linux_launch("/home/ann/My Comfy UI!").names
    digest = hashlib.sha256(b"/home/ann/My Comfy UI!").hexdigest()[:6]
    assert names.install_id == f"my-comfy-ui-{digest}"
    assert names.unit == f"comfy-hybrid-comfyui-my-comfy-ui-{digest}.service"
    assert names.desktop == f"comfy-hybrid-comfyui-my-comfy-ui-{digest}.desktop"
    assert names.launchd_label == f"org.comfyhybrid.comfyui.my-comfy-ui-{digest}"
    assert names.windows == f"ComfyHybridComfyUI-my-comfy-ui-{digest}"


def test_a_folder_reached_through_a_link_has_the_same_names(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert linux_launch(str(tmp_path / "link")).names.unit == linux_launch(str(tmp_path / "real")).names.unit


def test_the_launchd_plist_loads_at_login_and_keeps_comfyui_alive():
    launch = Launch(Layout(Path("/Users/ann/comfyui"), "darwin"), "127.0.0.1", 8190, cpu_only=False)
    plist = plistlib.loads(autostart.render_launchd_plist(launch))
    assert plist["Label"] == launch.names.launchd_label
    assert plist["ProgramArguments"] == ["/Users/ann/comfyui/venv/bin/python", "/Users/ann/comfyui/ComfyUI/main.py",
                                         "--listen", "127.0.0.1", "--port", "8190", "--preview-method", "auto"]
    assert plist["WorkingDirectory"] == "/Users/ann/comfyui/ComfyUI"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == "/Users/ann/comfyui/logs/comfyui.log"


def test_the_powershell_script_quotes_paths_and_passes_extra_arguments():
    script = autostart.render_start_ps1(windows_launch())
    assert "$ErrorActionPreference = 'Stop'" in script
    assert r"Set-Location -LiteralPath 'C:\Users\O''Brien\comfyui\ComfyUI'" in script
    assert (r"& 'C:\Users\O''Brien\comfyui\venv\Scripts\python.exe' 'C:\Users\O''Brien\comfyui\ComfyUI\main.py' "
            "'--listen' '127.0.0.1' '--port' '8188' '--preview-method' 'auto' @args") in script
    assert script.rstrip().endswith("exit $LASTEXITCODE")


def test_the_shell_start_script_execs_comfyui_with_quoted_paths():
    script = autostart.render_start_sh(linux_launch())
    assert script.startswith("#!/bin/sh\n")
    assert "cd '/home/ann/comfy ui/ComfyUI' || exit 1" in script
    assert ("exec '/home/ann/comfy ui/venv/bin/python' '/home/ann/comfy ui/ComfyUI/main.py' --listen 127.0.0.1 "
            "--port 8188 --preview-method auto \"$@\"") in script


def test_the_windows_scheduled_task_runs_the_powershell_script_at_logon():
    launch = windows_launch()
    command = autostart.schtasks_command(launch)
    assert command[:6] == ["schtasks", "/Create", "/F", "/TN", launch.names.windows, "/SC"]
    assert launch.names.windows.startswith("ComfyHybridComfyUI-comfyui-")
    assert "ONLOGON" in command
    assert command[-1] == ('powershell.exe -NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File '
                           r'"C:\Users\O' "'" r'Brien\comfyui\start-comfyui.ps1"')


def test_the_nssm_service_runs_python_in_the_comfyui_folder():
    launch = windows_launch()
    install, *settings = autostart.nssm_commands(launch)
    name = launch.names.windows
    assert install[:5] == ["nssm", "install", name, r"C:\Users\O'Brien\comfyui\venv\Scripts\python.exe",
                           r"C:\Users\O'Brien\comfyui\ComfyUI\main.py"]
    assert ["nssm", "set", name, "AppDirectory", r"C:\Users\O'Brien\comfyui\ComfyUI"] in settings


def test_registering_on_linux_writes_and_enables_the_user_unit_and_a_shortcut(tmp_path):
    home = tmp_path / "home"
    (home / "Desktop").mkdir(parents=True)
    runner = FakeRunner()
    launch = linux_launch(str(tmp_path / "install"))
    registration = autostart.register(launch, home, runner)
    name = launch.names.unit
    unit = home / ".config/systemd/user" / name
    assert unit.read_text() == autostart.render_systemd_unit(launch)
    assert runner.commands == [["systemctl", "--user", "show-environment"], ["systemctl", "--user", "daemon-reload"],
                               ["systemctl", "--user", "enable", name]]
    assert registration.record() == {"manager": "systemd", "start_command": ["systemctl", "--user", "restart", name],
                                     "name": name, "scope": "user",
                                     "ensure_command": ["systemctl", "--user", "start", name],
                                     "files": [str(unit), str(home / ".local/share/applications" / launch.names.desktop),
                                               str(home / "Desktop" / launch.names.desktop)]}
    desktop = (home / "Desktop" / launch.names.desktop).read_text()
    assert "Exec=xdg-open http://127.0.0.1:8188/" in desktop and "Type=Application" in desktop
    assert f"Name=ComfyUI ({launch.names.install_id})" in desktop


def test_two_installs_get_two_services_and_two_shortcuts(tmp_path):
    home = tmp_path / "home"
    (home / "Desktop").mkdir(parents=True)
    first, second = linux_launch(str(tmp_path / "comfyui")), linux_launch(str(tmp_path / "other" / "comfyui"))
    registrations = [autostart.register(launch, home, FakeRunner()) for launch in (first, second)]
    assert registrations[0].name != registrations[1].name
    units = sorted(p.name for p in (home / ".config/systemd/user").iterdir())
    assert units == sorted([first.names.unit, second.names.unit])
    for launch in (first, second):
        unit = parsed_unit((home / ".config/systemd/user" / launch.names.unit).read_text())
        assert unit["Service"]["WorkingDirectory"] == str(launch.layout.comfy_dir)
    for folder in (home / ".local/share/applications", home / "Desktop"):
        assert sorted(p.name for p in folder.iterdir()) == sorted([first.names.desktop, second.names.desktop])


def test_a_system_unit_is_written_to_the_system_folder_and_managed_without_user(tmp_path):
    runner, root = FakeRunner(), tmp_path / "install"
    root.mkdir()
    launch = linux_launch(str(root))
    scope = autostart.system_scope(tmp_path / "system", root, as_root=True)
    registration = autostart.register(launch, tmp_path / "home", runner, scope)
    name = launch.names.unit
    unit = parsed_unit((tmp_path / "system" / name).read_text())
    assert unit["Service"]["User"] == autostart.owner_of(root) and unit["Install"]["WantedBy"] == "multi-user.target"
    assert runner.commands == [["systemctl", "show-environment"], ["systemctl", "daemon-reload"],
                               ["systemctl", "enable", name]]
    record = registration.record()
    assert {k: record[k] for k in ("manager", "start_command", "name", "scope")} == {
        "manager": "systemd", "start_command": ["systemctl", "restart", name], "name": name, "scope": "system"}
    assert record["files"][0] == str(tmp_path / "system" / name)  # the unit, then the shortcuts
    assert not (tmp_path / "home/.config/systemd").exists()


def test_a_system_service_without_root_says_to_use_sudo_or_a_user_service(tmp_path):
    with pytest.raises(Failure) as failure:
        autostart.system_scope(tmp_path / "system", tmp_path, as_root=False)
    assert "needs root" in failure.value.cause and "sudo" in failure.value.fix
    assert "without --system-service" in failure.value.fix


def test_without_systemd_running_a_system_unit_is_written_and_the_start_script_named(tmp_path):
    def no_systemd(args, **kwargs):
        return Completed(1, "System has not been booted with systemd as init system (PID 1). Can't operate.")
    launch = linux_launch(str(tmp_path))
    registration = autostart.register(launch, tmp_path / "home", no_systemd,
                                      Scope(True, tmp_path / "system", user="ann"))
    assert registration.manager == "" and "systemd is not running here" in registration.message
    assert "start-comfyui.sh" in registration.message and (tmp_path / "system" / launch.names.unit).exists()


def test_without_a_systemd_user_session_it_says_how_to_start_comfyui_instead(tmp_path):
    def no_systemd(args, **kwargs):
        return Completed(1, "Failed to connect to bus")
    registration = autostart.register(linux_launch(str(tmp_path / "i")), tmp_path / "home", no_systemd)
    assert registration.manager == "" and "start-comfyui.sh" in registration.message


def test_registering_on_macos_bootstraps_the_agent(tmp_path):
    runner = FakeRunner()
    launch = Launch(Layout(tmp_path / "install", "darwin"), "127.0.0.1", 8188, cpu_only=False)
    (tmp_path / "home" / "Desktop").mkdir(parents=True)
    registration = autostart.register(launch, tmp_path / "home", runner)
    label = launch.names.launchd_label
    plist = tmp_path / f"home/Library/LaunchAgents/{label}.plist"
    assert plistlib.loads(plist.read_bytes())["Label"] == label
    assert runner.commands[1][:2] == ["launchctl", "bootstrap"] and runner.commands[1][-1] == str(plist)
    assert registration.start_command[:3] == ["launchctl", "kickstart", "-k"]
    assert registration.start_command[-1].endswith(f"/{label}") and registration.name == label
    webloc = tmp_path / "home/Desktop" / f"{launch.names.title}.webloc"
    assert plistlib.loads(webloc.read_bytes()) == {"URL": "http://127.0.0.1:8188/"}


def test_registering_on_windows_without_nssm_creates_a_scheduled_task_and_a_url_shortcut(tmp_path, monkeypatch):
    monkeypatch.setattr(autostart.shutil, "which", lambda name: None)
    runner = FakeRunner()
    (tmp_path / "home" / "Desktop").mkdir(parents=True)
    launch = Launch(Layout(tmp_path / "install", "windows"), "127.0.0.1", 8188, cpu_only=False)
    registration = autostart.register(launch, tmp_path / "home", runner)
    assert runner.commands == [autostart.schtasks_command(launch)]
    assert registration.start_command == ["schtasks", "/Run", "/TN", launch.names.windows]
    shortcut = tmp_path / "home/Desktop" / f"{launch.names.title}.url"
    assert shortcut.read_text() == "[InternetShortcut]\nURL=http://127.0.0.1:8188/\n"


def test_a_failing_service_command_says_to_use_no_service(tmp_path):
    runner = FakeRunner(fail="enable")
    with pytest.raises(Failure) as failure:
        autostart.register(linux_launch(str(tmp_path / "i")), tmp_path / "home", runner)
    assert "systemctl --user enable" in failure.value.cause and "--no-service" in failure.value.fix
