"""Start ComfyUI and wait until it answers `GET /system_stats`; stop one we started."""
import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import Callable, Optional

import requests

from .autostart import Launch
from .errors import Failure
from .progress import Control, check_control

PROBE_TIMEOUT = 2.0
# ComfyUI runs custom nodes (third-party code): started from a Celery worker, it gets the
# worker's environment minus anything that looks like a secret or a connection string.
_SECRET_HINTS = ("SECRET", "TOKEN", "PASSWORD", "API_KEY", "DATABASE_URL", "BROKER_URL", "REDIS_URL",
                 "RESULT_BACKEND", "BASIC_AUTH")


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


def start_detached(launch: Launch) -> subprocess.Popen:
    """ComfyUI in its own session, so it outlives the installer (and a Celery worker restart)."""
    layout = launch.layout
    layout.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.log_file, "ab") as log:
        options = {"creationflags": 0x00000008 | 0x00000200} if os.name == "nt" else {"start_new_session": True}
        process = subprocess.Popen(launch.argv, cwd=layout.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=comfy_environment(), **options)
    layout.pid_file.parent.mkdir(parents=True, exist_ok=True)
    layout.pid_file.write_text(str(process.pid))
    return process


def comfy_environment() -> dict:
    env = {key: value for key, value in os.environ.items() if not any(h in key.upper() for h in _SECRET_HINTS)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_until_up(launch: Launch, *, timeout: float, control: Control, tick: Callable[[float], None],
                  process: Optional[subprocess.Popen] = None, sleep=time.sleep) -> dict:
    started = time.monotonic()
    while True:
        stats = system_stats(launch.url)
        if stats:
            return stats
        if process is not None and process.poll() is not None:
            raise Failure(f"ComfyUI exited with code {process.returncode} before answering: {_log_tail(launch)}",
                          f"read {launch.layout.log_file}; fix what it says (often a GPU driver or a missing "
                          "package), then run the installer again")
        waited = time.monotonic() - started
        if waited > timeout:
            raise Failure(f"ComfyUI did not answer {launch.url}/system_stats within {timeout:.0f} s",
                          f"read {launch.layout.log_file}; start it by hand with {launch.layout.start_script} "
                          "to see what it prints")
        check_control(control)
        tick(waited)
        sleep(0.5)


def stop(launch: Launch, timeout: float = 10.0) -> bool:
    """Stop the ComfyUI this installer started (by its recorded pid). True if one was running."""
    try:
        pid = int(launch.layout.pid_file.read_text())
    except (OSError, ValueError):
        return False
    launch.layout.pid_file.unlink(missing_ok=True)
    if not _runs_this_comfyui(pid, launch):
        return False  # gone, and the pid may belong to another program by now
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    _wait_gone(pid, timeout)
    return True


def _runs_this_comfyui(pid: int, launch: Launch) -> bool:
    """Is `pid` still the ComfyUI of this folder? Pids are reused, so check its command line
    where the OS lets us cheaply (Linux /proc, `ps` elsewhere); Windows: trust the pid file."""
    main = str(launch.layout.comfy_dir / "main.py")
    proc = f"/proc/{pid}/cmdline"
    if os.path.exists("/proc/self/cmdline"):
        try:
            with open(proc, "rb") as handle:
                return main in handle.read().decode(errors="replace").replace("\0", " ")
        except OSError:
            return False
    if os.name == "nt":
        return True
    done = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=10)
    return main in done.stdout


def _wait_gone(pid: int, timeout: float) -> None:
    if os.name == "nt":
        return  # os.kill is TerminateProcess there: already gone, and kill(pid, 0) would kill
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return  # our own child: reaped
        except ChildProcessError:
            pass  # not our child (started by an earlier run): just watch it
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _log_tail(launch: Launch, lines: int = 8) -> str:
    try:
        text = launch.layout.log_file.read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no output"
