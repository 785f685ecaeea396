"""The one global service name every install used before names became per install, retired.

Installs used to share `comfy-hybrid-comfyui.service`, `org.comfyhybrid.comfyui` and
`ComfyHybridComfyUI`, so the last install to register owned them. When that old entry runs
this install's ComfyUI it is stopped and removed (the install gets its own name now), with
the shortcuts written next to it; one that runs another folder is that install's and is left
alone. The old shortcuts only name a URL, so the old service entry decides for them: both
were always written by the same registration.
"""
import plistlib
from pathlib import Path

from .autostart import Launch, launchd_domain, user_scope
from .servicefiles import systemd_path
from .runner import CommandRunner

UNIT = "comfy-hybrid-comfyui.service"
DESKTOP = "comfy-hybrid-comfyui.desktop"
LAUNCHD_LABEL = "org.comfyhybrid.comfyui"
WINDOWS_NAME = "ComfyHybridComfyUI"


def retire(launch: Launch, home: Path, run: CommandRunner) -> list:
    """Remove the old global entry if it is this install's; returns what was removed."""
    os_name = launch.layout.os_name
    retire_os = {"linux": _retire_systemd, "darwin": _retire_launchd}.get(os_name, _retire_windows)
    return retire_os(launch, home, run)


def _retire_systemd(launch: Launch, home: Path, run: CommandRunner) -> list:
    unit = user_scope(home).unit_dir / UNIT
    if not _unit_runs(unit, launch):
        return []
    run(["systemctl", "--user", "disable", "--now", UNIT], timeout=60)  # no user session: the file still goes
    unit.unlink()
    run(["systemctl", "--user", "daemon-reload"], timeout=60)
    desktop = home / ".local" / "share" / "applications" / DESKTOP
    return [str(unit), *_unlink(desktop, home / "Desktop" / DESKTOP)]


def _unit_runs(unit: Path, launch: Launch) -> bool:
    try:
        text = unit.read_text(errors="replace")
    except OSError:
        return False
    return f"WorkingDirectory={systemd_path(launch.layout.comfy_dir)}\n" in text


def _retire_launchd(launch: Launch, home: Path, run: CommandRunner) -> list:
    plist = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    try:
        directory = plistlib.loads(plist.read_bytes()).get("WorkingDirectory")
    except (OSError, ValueError, plistlib.InvalidFileException):
        return []
    if directory != str(launch.layout.comfy_dir):
        return []
    run(["launchctl", "bootout", f"{launchd_domain()}/{LAUNCHD_LABEL}"], timeout=60)
    plist.unlink()
    return [str(plist), *_unlink(home / "Desktop" / "ComfyUI.webloc")]


def _retire_windows(launch: Launch, home: Path, run: CommandRunner) -> list:
    """NSSM keeps the folder as AppDirectory; the scheduled task runs this install's script."""
    removed = []
    if str(launch.layout.comfy_dir).lower() in _output(run, ["nssm", "get", WINDOWS_NAME, "AppDirectory"]):
        run(["nssm", "stop", WINDOWS_NAME], timeout=60)
        run(["nssm", "remove", WINDOWS_NAME, "confirm"], timeout=60)
        removed.append(f"service {WINDOWS_NAME}")
    task = _output(run, ["schtasks", "/Query", "/TN", WINDOWS_NAME, "/V", "/FO", "LIST"])
    if str(launch.layout.start_script).lower() in task:
        run(["schtasks", "/Delete", "/F", "/TN", WINDOWS_NAME], timeout=60)
        removed.append(f"scheduled task {WINDOWS_NAME}")
    return removed + (_unlink(home / "Desktop" / "ComfyUI.url") if removed else [])


def _output(run: CommandRunner, command: list) -> str:
    done = run(command, timeout=60)
    # nssm may answer in UTF-16: drop the NULs; Windows paths compare without case.
    return done.output.replace("\0", "").lower() if done.code == 0 else ""


def _unlink(*paths: Path) -> list:
    removed = []
    for path in paths:
        if path.is_file():
            path.unlink()
            removed.append(str(path))
    return removed
