"""Where things go inside an install folder, the installer's own state, and its lock.

    <path>/ComfyUI/            the release, models under ComfyUI/models/...
    <path>/venv/               ComfyUI's Python environment
    <path>/downloads/          the release archive while it downloads (deleted once extracted)
    <path>/logs/comfyui.log    output of a ComfyUI started by the installer
    <path>/logs/install.log    every command the installer ran (venv, pip, checks, services) and its output
    <path>/start-comfyui.sh|.ps1
    <path>/.comfy-hybrid/      state.json (verified files, service), lock, children/ (commands running)
"""
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import Failure

RELEASE_MARKER = ".comfy-hybrid-release.json"


@dataclass(frozen=True)
class Layout:
    root: Path
    os_name: str

    @property
    def comfy_dir(self) -> Path:
        return self.root / "ComfyUI"

    @property
    def venv_dir(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        if self.os_name == "windows":
            return self.venv_dir / "Scripts" / "python.exe"
        return self.venv_dir / "bin" / "python"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "comfyui.log"

    @property
    def install_log(self) -> Path:
        return self.root / "logs" / "install.log"

    @property
    def children_dir(self) -> Path:
        return self.root / ".comfy-hybrid" / "children"

    @property
    def pid_file(self) -> Path:
        return self.root / ".comfy-hybrid" / "comfyui.pid"

    @property
    def state_file(self) -> Path:
        return self.root / ".comfy-hybrid" / "state.json"

    @property
    def start_script(self) -> Path:
        return self.root / ("start-comfyui.ps1" if self.os_name == "windows" else "start-comfyui.sh")

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def update_state(self, **changes) -> dict:
        state = {**self.read_state(), **changes}
        write_json_atomic(self.state_file, state)
        return state


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(temporary, path)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write only when the content differs (re-runs stay fast and keep mtimes); True if written."""
    if path.exists() and path.read_bytes() == text.encode("utf-8"):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(text.encode("utf-8"))
    os.chmod(temporary, mode)
    os.replace(temporary, path)
    return True


def lock_path(layout: Layout) -> Path:
    return layout.root / ".comfy-hybrid" / "lock"


@contextlib.contextmanager
def install_lock(layout: Layout):
    """One installer per folder at a time (a CLI run and a web run must not share a .part).
    The OS releases the lock when its process dies, however it dies: a free lock is proof
    that no installer is working here (`lock_held`)."""
    path = lock_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _try_lock(handle):
            raise Failure(f"another installer is already working in {layout.root}",
                          "wait for it to finish (or pause it), then run again")
        try:
            yield
        finally:
            _unlock(handle)


def lock_held(layout: Layout) -> Optional[bool]:
    """Is an installer working in this folder right now? None when this machine has no such
    folder (the install runs elsewhere: no evidence either way)."""
    path = lock_path(layout)
    if not path.exists():
        return None
    try:
        with open(path, "a+") as handle:
            if not _try_lock(handle):
                return True
            _unlock(handle)
    except OSError:
        return None
    return False


def _try_lock(handle) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)  # msvcrt locks bytes from the current position; unlock uses the same byte
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
