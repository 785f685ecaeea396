"""What each platform's service and shortcut files say: pure renderings of a Launch (a
ComfyUI's, or a GPU worker's: both carry argv, workdir, env, names), read by tests and written
by autostart.py, which registers them.
"""
from __future__ import annotations

import plistlib
import shlex
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # autostart imports this module; the types are for readers only
    from .autostart import Launch, Scope


def render_start_sh(launch: Launch) -> str:
    """`launch`: a ComfyUI's Launch or a GPU worker's (gpus.Worker); both carry argv, workdir, env."""
    return ("#!/bin/sh\n"
            + "".join(f"# {line}\n" for line in launch.script_header)
            + f"cd {shlex.quote(str(launch.workdir))} || exit 1\n"
            + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in launch.env)
            + f"exec {' '.join(map(shlex.quote, launch.argv))} \"$@\"\n")


def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_start_ps1(launch: Launch) -> str:
    return ("".join(f"# {line}\n" for line in launch.script_header)
            + "$ErrorActionPreference = 'Stop'\n"
            f"Set-Location -LiteralPath {_ps_quote(str(launch.workdir))}\n"
            + "".join(f"$env:{name} = {_ps_quote(value)}\n" for name, value in launch.env)
            + f"& {' '.join(map(_ps_quote, launch.argv))} @args\n"
            "exit $LASTEXITCODE\n")


def _systemd_quote(text: str) -> str:
    # systemd expands %-specifiers everywhere and splits ExecStart on spaces outside quotes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def render_systemd_unit(launch: Launch, scope: Optional[Scope] = None) -> str:
    """A user unit unless `scope` says system."""
    system = bool(scope and scope.system)
    return ("[Unit]\n"
            f"Description={launch.description}\n"
            + ("Wants=network-online.target\nAfter=network-online.target\n" if system else "")
            + "\n[Service]\n"
            "Type=simple\n"
            + (f"User={scope.user}\n" if system else "")
            + f"WorkingDirectory={systemd_path(launch.workdir)}\n"
            f"ExecStart={' '.join(map(_systemd_quote, launch.argv))}\n"
            "Environment=PYTHONUNBUFFERED=1\n"
            + "".join(f"Environment={_systemd_quote(f'{name}={value}')}\n" for name, value in launch.env)
            + 
            "Restart=on-failure\n"
            "RestartSec=5\n\n"
            "[Install]\n"
            f"WantedBy={'multi-user.target' if system else 'default.target'}\n")


def systemd_path(path) -> str:
    return str(path).replace("%", "%%")


def render_launchd_plist(launch: Launch) -> bytes:
    log = str(launch.log_file)
    return plistlib.dumps({
        "Label": launch.names.launchd_label,
        "ProgramArguments": launch.argv,
        "WorkingDirectory": str(launch.workdir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1", **dict(launch.env)},
    })


def render_desktop_entry(launch: Launch) -> str:
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={launch.names.title}\n"
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
    script = str(launch.start_script)
    action = f'powershell.exe -NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File "{script}"'
    return ["schtasks", "/Create", "/F", "/TN", launch.names.windows, "/SC", "ONLOGON", "/RL", "LIMITED", "/TR", action]


def nssm_commands(launch: Launch) -> list:
    python, *arguments = launch.argv
    name, log = launch.names.windows, str(launch.log_file)
    pinned = [["nssm", "set", name, "AppEnvironmentExtra", *(f"{key}={value}" for key, value in launch.env)]]
    return [["nssm", "install", name, python, *arguments],
            ["nssm", "set", name, "AppDirectory", str(launch.workdir)],
            ["nssm", "set", name, "AppStdout", log],
            ["nssm", "set", name, "AppStderr", log],
            *(pinned if launch.env else []),
            ["nssm", "set", name, "Start", "SERVICE_AUTO_START"]]
