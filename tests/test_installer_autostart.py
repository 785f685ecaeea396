"""Start scripts, the systemd unit, the launchd plist, the PowerShell script, Windows tasks and
shortcuts: their content, and the commands that register them."""
import plistlib
from pathlib import Path, PureWindowsPath

import pytest

from tests.installer_support import FakeRunner
from workers.installer import autostart
from workers.installer.autostart import Launch
from workers.installer.layout import Layout
from workers.installer.runner import Completed


def linux_launch(root="/home/ann/comfy ui", cpu=False) -> Launch:
    return Launch(Layout(Path(root), "linux"), "127.0.0.1", 8188, cpu_only=cpu)


def windows_launch(root=r"C:\Users\O'Brien\comfyui") -> Launch:
    return Launch(Layout(PureWindowsPath(root), "windows"), "127.0.0.1", 8188, cpu_only=False)


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


def test_the_launchd_plist_loads_at_login_and_keeps_comfyui_alive():
    launch = Launch(Layout(Path("/Users/ann/comfyui"), "darwin"), "127.0.0.1", 8190, cpu_only=False)
    plist = plistlib.loads(autostart.render_launchd_plist(launch))
    assert plist["Label"] == "org.comfyhybrid.comfyui"
    assert plist["ProgramArguments"] == ["/Users/ann/comfyui/venv/bin/python", "/Users/ann/comfyui/ComfyUI/main.py",
                                         "--listen", "127.0.0.1", "--port", "8190", "--preview-method", "auto"]
    assert plist["WorkingDirectory"] == "/Users/ann/comfyui/ComfyUI"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == "/Users/ann/comfyui/logs/comfyui.log"


def test_the_powershell_script_quotes_paths_and_passes_extra_arguments():
    script = autostart.render_start_ps1(windows_launch())
    assert "$ErrorActionPreference = 'Stop'" in script
    assert r"Set-Location -LiteralPath 'C:\Users\O''Brien\comfyui\ComfyUI'" in script
    assert (r"& 'C:\Users\O''Brien\comfyui\venv\Scripts\python.exe' main.py '--listen' '127.0.0.1' '--port' "
            "'8188' '--preview-method' 'auto' @args") in script
    assert script.rstrip().endswith("exit $LASTEXITCODE")


def test_the_shell_start_script_execs_comfyui_with_quoted_paths():
    script = autostart.render_start_sh(linux_launch())
    assert script.startswith("#!/bin/sh\n")
    assert "cd '/home/ann/comfy ui/ComfyUI' || exit 1" in script
    assert "exec '/home/ann/comfy ui/venv/bin/python' main.py --listen 127.0.0.1 --port 8188 --preview-method auto \"$@\"" in script


def test_the_windows_scheduled_task_runs_the_powershell_script_at_logon():
    command = autostart.schtasks_command(windows_launch())
    assert command[:6] == ["schtasks", "/Create", "/F", "/TN", "ComfyHybridComfyUI", "/SC"]
    assert "ONLOGON" in command
    assert command[-1] == ('powershell.exe -NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File '
                           r'"C:\Users\O' "'" r'Brien\comfyui\start-comfyui.ps1"')


def test_the_nssm_service_runs_python_in_the_comfyui_folder():
    install, *settings = autostart.nssm_commands(windows_launch())
    assert install[:4] == ["nssm", "install", "ComfyHybridComfyUI", r"C:\Users\O'Brien\comfyui\venv\Scripts\python.exe"]
    assert ["nssm", "set", "ComfyHybridComfyUI", "AppDirectory", r"C:\Users\O'Brien\comfyui\ComfyUI"] in settings


def test_registering_on_linux_writes_and_enables_the_user_unit_and_a_shortcut(tmp_path):
    home = tmp_path / "home"
    (home / "Desktop").mkdir(parents=True)
    runner = FakeRunner()
    launch = linux_launch(str(tmp_path / "install"))
    registration = autostart.register(launch, home, runner)
    unit = home / ".config/systemd/user/comfy-hybrid-comfyui.service"
    assert unit.read_text() == autostart.render_systemd_unit(launch)
    assert runner.commands == [["systemctl", "--user", "show-environment"], ["systemctl", "--user", "daemon-reload"],
                               ["systemctl", "--user", "enable", "comfy-hybrid-comfyui.service"]]
    assert registration.manager == "systemd"
    assert registration.start_command == ["systemctl", "--user", "restart", "comfy-hybrid-comfyui.service"]
    desktop = (home / "Desktop" / "comfy-hybrid-comfyui.desktop").read_text()
    assert "Exec=xdg-open http://127.0.0.1:8188/" in desktop and "Type=Application" in desktop


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
    plist = tmp_path / "home/Library/LaunchAgents/org.comfyhybrid.comfyui.plist"
    assert plistlib.loads(plist.read_bytes())["Label"] == "org.comfyhybrid.comfyui"
    assert runner.commands[1][:2] == ["launchctl", "bootstrap"] and runner.commands[1][-1] == str(plist)
    assert registration.start_command[:3] == ["launchctl", "kickstart", "-k"]
    assert plistlib.loads((tmp_path / "home/Desktop/ComfyUI.webloc").read_bytes()) == {"URL": "http://127.0.0.1:8188/"}


def test_registering_on_windows_without_nssm_creates_a_scheduled_task_and_a_url_shortcut(tmp_path, monkeypatch):
    monkeypatch.setattr(autostart.shutil, "which", lambda name: None)
    runner = FakeRunner()
    (tmp_path / "home" / "Desktop").mkdir(parents=True)
    launch = Launch(Layout(tmp_path / "install", "windows"), "127.0.0.1", 8188, cpu_only=False)
    registration = autostart.register(launch, tmp_path / "home", runner)
    assert runner.commands == [autostart.schtasks_command(launch)]
    assert registration.start_command == ["schtasks", "/Run", "/TN", "ComfyHybridComfyUI"]
    assert (tmp_path / "home/Desktop/ComfyUI.url").read_text() == "[InternetShortcut]\nURL=http://127.0.0.1:8188/\n"


def test_a_failing_service_command_says_to_use_no_service(tmp_path):
    from workers.installer.errors import Failure

    runner = FakeRunner(fail="enable")
    with pytest.raises(Failure) as failure:
        autostart.register(linux_launch(str(tmp_path / "i")), tmp_path / "home", runner)
    assert "systemctl --user enable" in failure.value.cause and "--no-service" in failure.value.fix
