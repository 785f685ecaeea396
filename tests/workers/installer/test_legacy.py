"""The one global service name of older installs: retired when it ran this install, left alone
when it runs another folder."""
import plistlib
from pathlib import Path

from tests.workers.installer.support import FakeRunner
from workers.installer import legacy
from workers.installer.autostart import Launch
from workers.installer.layout import Layout
from workers.installer.runner import Completed


def old_unit(comfy_dir: Path) -> str:
    """The unit older installers wrote, as they wrote it."""
    return ("[Unit]\nDescription=ComfyUI (installed by Comfy Hybrid)\nAfter=network-online.target\n\n"
            f"[Service]\nType=simple\nWorkingDirectory={comfy_dir}\n"
            f'ExecStart="{comfy_dir.parent}/venv/bin/python" "{comfy_dir}/main.py" "--listen" "127.0.0.1" '
            '"--port" "8188"\nRestart=on-failure\nRestartSec=5\n\n[Install]\nWantedBy=default.target\n')


def with_old_linux_entries(home: Path, comfy_dir: Path) -> list:
    unit = home / ".config/systemd/user/comfy-hybrid-comfyui.service"
    shortcuts = [home / ".local/share/applications/comfy-hybrid-comfyui.desktop",
                 home / "Desktop/comfy-hybrid-comfyui.desktop"]
    for path, text in [(unit, old_unit(comfy_dir))] + [(s, "[Desktop Entry]\nType=Application\n") for s in shortcuts]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [unit, *shortcuts]


def test_the_old_unit_of_this_install_is_stopped_and_removed_with_its_shortcuts(tmp_path):
    launch = Launch(Layout(tmp_path / "install", "linux"), "127.0.0.1", 8188, cpu_only=True)
    old = with_old_linux_entries(tmp_path / "home", launch.layout.comfy_dir)
    runner = FakeRunner()
    removed = legacy.retire(launch, tmp_path / "home", runner)
    assert removed == [str(path) for path in old] and not any(path.exists() for path in old)
    assert runner.commands == [["systemctl", "--user", "disable", "--now", "comfy-hybrid-comfyui.service"],
                               ["systemctl", "--user", "daemon-reload"]]


def test_an_old_unit_that_runs_another_folder_is_left_alone(tmp_path):
    launch = Launch(Layout(tmp_path / "second", "linux"), "127.0.0.1", 8188, cpu_only=True)
    old = with_old_linux_entries(tmp_path / "home", tmp_path / "first" / "ComfyUI")
    runner = FakeRunner()
    assert legacy.retire(launch, tmp_path / "home", runner) == []
    assert all(path.exists() for path in old) and runner.commands == []


def test_a_folder_that_only_starts_like_this_one_is_another_folder(tmp_path):
    launch = Launch(Layout(tmp_path / "comfy", "linux"), "127.0.0.1", 8188, cpu_only=True)
    with_old_linux_entries(tmp_path / "home", tmp_path / "comfy" / "ComfyUI2")
    assert legacy.retire(launch, tmp_path / "home", FakeRunner()) == []


def test_the_old_launchd_agent_of_this_install_is_booted_out_and_removed(tmp_path):
    launch = Launch(Layout(tmp_path / "install", "darwin"), "127.0.0.1", 8188, cpu_only=False)
    plist = tmp_path / "home/Library/LaunchAgents/org.comfyhybrid.comfyui.plist"
    webloc = tmp_path / "home/Desktop/ComfyUI.webloc"
    for path, data in [(plist, {"Label": "org.comfyhybrid.comfyui", "WorkingDirectory": str(launch.layout.comfy_dir)}),
                       (webloc, {"URL": "http://127.0.0.1:8188/"})]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(plistlib.dumps(data))
    runner = FakeRunner()
    assert legacy.retire(launch, tmp_path / "home", runner) == [str(plist), str(webloc)]
    assert runner.commands[0][:2] == ["launchctl", "bootout"]
    assert runner.commands[0][2].endswith("/org.comfyhybrid.comfyui")
    assert not plist.exists() and not webloc.exists()


def test_the_old_nssm_service_of_this_install_is_removed(tmp_path):
    launch = Launch(Layout(tmp_path / "install", "windows"), "127.0.0.1", 8188, cpu_only=False)
    utf16 = "\0".join(str(launch.layout.comfy_dir).upper()) + "\0\r\0\n\0"  # nssm's UTF-16, any case
    runner = FakeRunner(answers={"nssm get ComfyHybridComfyUI AppDirectory": [Completed(0, utf16)],
                                 "schtasks /Query": [Completed(1, "ERROR: The system cannot find the file")]})
    assert legacy.retire(launch, tmp_path / "home", runner) == ["service ComfyHybridComfyUI"]
    assert ["nssm", "remove", "ComfyHybridComfyUI", "confirm"] in runner.commands
    assert not any(c[:2] == ["schtasks", "/Delete"] for c in runner.commands)


def test_an_old_scheduled_task_that_runs_another_folders_script_is_left_alone(tmp_path):
    launch = Launch(Layout(tmp_path / "install", "windows"), "127.0.0.1", 8188, cpu_only=False)
    task = f"Task To Run: powershell.exe -File \"{tmp_path / 'other' / 'start-comfyui.ps1'}\"\r\n"
    runner = FakeRunner(answers={"nssm get": [Completed(1, "")], "schtasks /Query": [Completed(0, task)]})
    assert legacy.retire(launch, tmp_path / "home", runner) == []
    assert not any(c[:2] == ["schtasks", "/Delete"] for c in runner.commands)
