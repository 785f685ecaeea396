"""Start scripts, service registration and desktop shortcuts, per platform.

* Linux: a systemd *user* unit (~/.config/systemd/user), enabled; no root needed. It starts
  with the user's session (`loginctl enable-linger` makes it start at boot).
* macOS: a launchd agent (~/Library/LaunchAgents), loaded with `launchctl bootstrap`.
* Windows: an NSSM service when `nssm` is on PATH (needs an elevated shell), otherwise a
  scheduled task at logon that runs the PowerShell start script.
Shortcuts open the ComfyUI page: a .desktop entry, a .webloc, or a .url file on the Desktop.
The render functions are pure (tests read their output); `register` runs the commands.
"""
import os
import plistlib
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Failure
from .layout import Layout, write_if_changed
from .runner import CommandRunner

UNIT_NAME = "comfy-hybrid-comfyui.service"
LAUNCHD_LABEL = "org.comfyhybrid.comfyui"
WINDOWS_NAME = "ComfyHybridComfyUI"


@dataclass(frozen=True)
class Launch:
    """How to run ComfyUI: the same command in every script, unit and plist."""

    layout: Layout
    host: str
    port: int
    cpu_only: bool  # ComfyUI assumes CUDA unless told --cpu

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def comfy_args(self) -> list:
        # --preview-method auto: samplers stream preview frames (ComfyUI's default is none),
        # which the job page shows live while a job runs.
        return (["--listen", self.host, "--port", str(self.port), "--preview-method", "auto"]
                + (["--cpu"] if self.cpu_only else []))

    @property
    def argv(self) -> list:
        return [str(self.layout.python), str(self.layout.comfy_dir / "main.py"), *self.comfy_args]


@dataclass
class Registration:
    manager: str = ""  # systemd | launchd | nssm | schtasks | "" (not registered)
    start_command: list = field(default_factory=list)
    files: list = field(default_factory=list)
    message: str = ""


def render_start_sh(launch: Launch) -> str:
    layout = launch.layout
    return ("#!/bin/sh\n"
            "# Starts ComfyUI as installed by Comfy Hybrid (deploy/INSTALLER.md).\n"
            "# Extra arguments are passed to ComfyUI, e.g. ./start-comfyui.sh --lowvram\n"
            f"cd {shlex.quote(str(layout.comfy_dir))} || exit 1\n"
            f"exec {shlex.quote(str(layout.python))} main.py {' '.join(map(shlex.quote, launch.comfy_args))} \"$@\"\n")


def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_start_ps1(launch: Launch) -> str:
    layout = launch.layout
    return ("# Starts ComfyUI as installed by Comfy Hybrid (deploy/INSTALLER.md).\n"
            "# Extra arguments are passed to ComfyUI, e.g. .\\start-comfyui.ps1 --lowvram\n"
            "$ErrorActionPreference = 'Stop'\n"
            f"Set-Location -LiteralPath {_ps_quote(str(layout.comfy_dir))}\n"
            f"& {_ps_quote(str(layout.python))} main.py {' '.join(map(_ps_quote, launch.comfy_args))} @args\n"
            "exit $LASTEXITCODE\n")


def _systemd_quote(text: str) -> str:
    # systemd expands %-specifiers everywhere and splits ExecStart on spaces outside quotes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def render_systemd_unit(launch: Launch) -> str:
    layout = launch.layout
    return ("[Unit]\n"
            "Description=ComfyUI (installed by Comfy Hybrid)\n"
            "After=network-online.target\n\n"
            "[Service]\n"
            "Type=simple\n"
            f"WorkingDirectory={str(layout.comfy_dir).replace('%', '%%')}\n"
            f"ExecStart={' '.join(map(_systemd_quote, launch.argv))}\n"
            "Environment=PYTHONUNBUFFERED=1\n"
            "Restart=on-failure\n"
            "RestartSec=5\n\n"
            "[Install]\n"
            "WantedBy=default.target\n")


def render_launchd_plist(launch: Launch) -> bytes:
    log = str(launch.layout.log_file)
    return plistlib.dumps({
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": launch.argv,
        "WorkingDirectory": str(launch.layout.comfy_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
    })


def render_desktop_entry(launch: Launch) -> str:
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            "Name=ComfyUI\n"
            "Comment=Open the local ComfyUI installed by Comfy Hybrid\n"
            f"Exec=xdg-open {launch.url}/\n"
            "Icon=applications-graphics\n"
            "Terminal=false\n"
            "Categories=Graphics;\n")


def render_url_shortcut(launch: Launch) -> str:
    return f"[InternetShortcut]\r\nURL={launch.url}/\r\n"


def render_webloc(launch: Launch) -> bytes:
    return plistlib.dumps({"URL": f"{launch.url}/"})


def schtasks_command(launch: Launch) -> list:
    script = str(launch.layout.start_script)
    action = f'powershell.exe -NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File "{script}"'
    return ["schtasks", "/Create", "/F", "/TN", WINDOWS_NAME, "/SC", "ONLOGON", "/RL", "LIMITED", "/TR", action]


def nssm_commands(launch: Launch) -> list:
    python, *arguments = launch.argv
    log = str(launch.layout.log_file)
    return [["nssm", "install", WINDOWS_NAME, python, *arguments],
            ["nssm", "set", WINDOWS_NAME, "AppDirectory", str(launch.layout.comfy_dir)],
            ["nssm", "set", WINDOWS_NAME, "AppStdout", log],
            ["nssm", "set", WINDOWS_NAME, "AppStderr", log],
            ["nssm", "set", WINDOWS_NAME, "Start", "SERVICE_AUTO_START"]]


def write_start_script(launch: Launch) -> Path:
    path = launch.layout.start_script
    if launch.layout.os_name == "windows":
        write_if_changed(path, render_start_ps1(launch))
    else:
        write_if_changed(path, render_start_sh(launch), mode=0o755)
    return path


def register(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    """Register the service and create the shortcut for this platform."""
    launch.layout.log_file.parent.mkdir(parents=True, exist_ok=True)
    os_name = launch.layout.os_name
    registration = {"linux": _register_systemd, "darwin": _register_launchd}.get(os_name, _register_windows)(
        launch, home, run)
    shortcut = _write_shortcut(launch, home)
    if shortcut:
        registration.files.append(str(shortcut))
    return registration


def _register_systemd(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    unit = home / ".config" / "systemd" / "user" / UNIT_NAME
    write_if_changed(unit, render_systemd_unit(launch))
    if run(["systemctl", "--user", "show-environment"], timeout=30).code != 0:
        return Registration(files=[str(unit)], message=f"wrote {unit}, but no systemd user session is available "
                            f"here: start ComfyUI with {launch.layout.start_script}")
    for command in (["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", UNIT_NAME]):
        _must(run(command, timeout=60), command)
    return Registration("systemd", ["systemctl", "--user", "restart", UNIT_NAME], [str(unit)],
                        f"enabled {UNIT_NAME} (to start at boot without logging in: loginctl enable-linger)")


def _register_launchd(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    plist = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    plist.parent.mkdir(parents=True, exist_ok=True)
    if not plist.exists() or plist.read_bytes() != render_launchd_plist(launch):
        plist.write_bytes(render_launchd_plist(launch))
    domain = f"gui/{os.getuid()}" if hasattr(os, "getuid") else "gui/0"
    run(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"], timeout=60)  # not loaded yet is fine
    command = ["launchctl", "bootstrap", domain, str(plist)]
    _must(run(command, timeout=60), command)
    return Registration("launchd", ["launchctl", "kickstart", "-k", f"{domain}/{LAUNCHD_LABEL}"], [str(plist)],
                        f"loaded launchd agent {LAUNCHD_LABEL}")


def _register_windows(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    if shutil.which("nssm"):
        run(["nssm", "stop", WINDOWS_NAME], timeout=60)
        run(["nssm", "remove", WINDOWS_NAME, "confirm"], timeout=60)  # re-create: settings may have changed
        for command in nssm_commands(launch):
            _must(run(command, timeout=60), command)
        return Registration("nssm", ["nssm", "start", WINDOWS_NAME], [], f"installed service {WINDOWS_NAME} (NSSM)")
    command = schtasks_command(launch)
    _must(run(command, timeout=60), command)
    return Registration("schtasks", ["schtasks", "/Run", "/TN", WINDOWS_NAME], [],
                        f"created scheduled task {WINDOWS_NAME} (runs at logon)")


def _write_shortcut(launch: Launch, home: Path):
    desktop = home / "Desktop"
    os_name = launch.layout.os_name
    if os_name == "linux":
        entry = home / ".local" / "share" / "applications" / "comfy-hybrid-comfyui.desktop"
        write_if_changed(entry, render_desktop_entry(launch), mode=0o755)
        if desktop.is_dir():
            write_if_changed(desktop / "comfy-hybrid-comfyui.desktop", render_desktop_entry(launch), mode=0o755)
        return entry
    if not desktop.is_dir():
        return None
    if os_name == "darwin":
        path = desktop / "ComfyUI.webloc"
        path.write_bytes(render_webloc(launch))
        return path
    path = desktop / "ComfyUI.url"
    write_if_changed(path, render_url_shortcut(launch))
    return path


def _must(done, command: list) -> None:
    if done.code != 0:
        raise Failure(f"`{' '.join(command)}` failed (exit code {done.code}): {done.output.strip()[-300:]}",
                      "run that command yourself to see why, or re-run the installer with --no-service "
                      "and start ComfyUI with the start script")
