"""Which ComfyUI answers on a port, and which port this install takes.

An answer on the port proves nothing by itself: a second install once reported success
because the first install's ComfyUI answered on 8188. ComfyUI's /system_stats carries
`system.argv` (its sys.argv, server.py), and every launch the installer writes runs main.py
by its absolute path (Launch.argv, the start scripts, units and plists), so argv[0] names
the install. A relative argv[0] (someone ran `python main.py` by hand) proves nothing.
"""
import ntpath
import os
import posixpath
import socket
from pathlib import Path
from typing import Optional

import requests

from .autostart import OWN_FLAGS, Launch
from .errors import Failure
from .layout import Layout

PROBE_TIMEOUT = 2.0
PORT_TRIES = 20  # 8188 ... 8207: more installs than anyone runs on one machine


def system_stats(url: str, timeout: float = PROBE_TIMEOUT) -> Optional[dict]:
    """ComfyUI's answer, or None when nothing (or something else) answers."""
    try:
        response = requests.get(f"{url}/system_stats", timeout=timeout)
        data = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    return data if isinstance(data, dict) and "system" in data else None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def argv_of(stats: Optional[dict]) -> list:
    argv = ((stats or {}).get("system") or {}).get("argv")
    return [str(a) for a in argv] if isinstance(argv, list) else []


def runs_this_install(stats: Optional[dict], layout: Layout) -> bool:
    argv = argv_of(stats)
    return bool(argv) and _same_file(argv[0], layout.comfy_dir / "main.py", layout.os_name)


def is_this_launch(stats: Optional[dict], launch: Launch) -> bool:
    """This install's ComfyUI, started with these settings: nothing to (re)start."""
    return runs_this_install(stats, launch.layout) and has_settings(stats, launch)


def has_settings(stats: Optional[dict], launch: Launch) -> bool:
    """Started with these arguments. Extra ones after them (./start-comfyui.sh --lowvram) are
    the user's and fine, unless they set what the installer sets (an old --cpu)."""
    argv, ours = argv_of(stats)[1:], [str(a) for a in launch.comfy_args]
    return argv[:len(ours)] == ours and not set(argv[len(ours):]) & set(OWN_FLAGS)


def _same_file(started: str, main: Path, os_name: str) -> bool:
    paths = ntpath if os_name == "windows" else posixpath
    if not paths.isabs(started):
        return False
    if paths is not os.path:  # another OS's paths (tests): compare them as written
        return paths.normcase(started) == paths.normcase(str(main))
    return paths.normcase(str(_resolved(Path(started)))) == paths.normcase(str(_resolved(main)))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def holder(host: str, port: int, layout: Layout) -> str:
    """Who holds the port: "" when it is free or this install's ComfyUI answers there,
    else a few words for a message ("the ComfyUI of /srv/a/ComfyUI/main.py")."""
    if not port_in_use(host, port):
        return ""
    stats = system_stats(f"http://{host}:{port}")
    if stats is None:
        return "a program that is not ComfyUI"
    if runs_this_install(stats, layout):
        return ""
    started = (argv_of(stats) or [""])[0]
    return f"the ComfyUI of {started}" if os.path.isabs(started) else "another ComfyUI (not this install's)"


def choose_port(host: str, asked: int, layout: Layout, remembered: Optional[int] = None, avoid=()) -> tuple:
    """(port, notes): `remembered` (an earlier run's choice) if it is still ours to take, else
    the first of asked, asked+1, ... that is free or already this install's. `notes` say which
    ports were passed over and why. `avoid`: ports given to this install's other GPUs, whose
    ComfyUI may answer there already (and so looks free to take)."""
    candidates = dict.fromkeys(([remembered] if remembered else []) + list(range(asked, asked + PORT_TRIES)))
    notes = []
    for port in (port for port in candidates if port not in avoid):
        taken_by = holder(host, port, layout)
        if not taken_by:
            return port, notes
        notes.append(f"port {port} is used by {taken_by}")
    raise Failure(f"ports {asked} to {asked + PORT_TRIES - 1} on {host} are all in use ({notes[0]})",
                  "stop the programs that hold them, or pass --port with a free port")
