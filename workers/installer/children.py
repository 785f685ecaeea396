"""Which command the installer is running, on disk, so a later run can end it.

`recorded(run, layout)` writes `.comfy-hybrid/children/<pid>.json` while a command runs (its
pid, which is also its process group, and the installer's own pid) and deletes it when the
command ends. A record that is still there at the start of a run means an installer was
killed mid-command (kill -9, power off, a worker's OOM kill). On Linux the parent-death
signal (runner.py) has already ended that child; elsewhere it may still be running pip into
the venv, so `end_leftovers` ends it — but only once the folder lock is held, only when the
installer that started it is gone, and only processes whose command line names this
install's venv: pids are reused, and a reused pid must never be killed.
"""
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .layout import Layout, write_json_atomic
from .runner import CommandRunner, Completed


def recorded(run: CommandRunner, layout: Layout) -> CommandRunner:
    """`run`, with each running command recorded in the install's state."""
    def run_recorded(args, **options) -> Completed:
        started = []

        def on_start(pid: int) -> None:
            if not layout.root.is_dir():
                return  # a check of a folder not made yet writes nothing (and leaves nothing to end)
            started.append(pid)
            write_json_atomic(_record(layout, pid), {"pid": pid, "owner": os.getpid(), "args": [str(a) for a in
                                                                                                 args[:3]]})
        try:
            return run(args, on_start=on_start, **options)
        finally:
            for pid in started:
                _record(layout, pid).unlink(missing_ok=True)
    return run_recorded


def end_leftovers(layout: Layout) -> list:
    """End what a killed installer left running in this install; returns the pids ended."""
    ended = []
    for path in sorted(layout.children_dir.glob("*.json")) if layout.children_dir.exists() else []:
        record = _read(path)
        if record.get("owner") and _alive(record["owner"]) and record["owner"] != os.getpid():
            continue  # its installer still runs (a check next to this run): not a leftover
        ended += _end_group(int(record.get("pid") or 0), str(layout.venv_dir))
        path.unlink(missing_ok=True)
    return ended


def _record(layout: Layout, pid: int) -> Path:
    return layout.children_dir / f"{pid}.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _end_group(group: int, venv: str) -> list:
    """End the members of process group `group` whose command line names `venv`."""
    members = [pid for pid, command in _group_members(group) if venv in command] if group > 0 else []
    _kill_all(members, signal.SIGTERM)
    if not _wait_gone(members, 10):
        _kill_all(members, getattr(signal, "SIGKILL", signal.SIGTERM))
        _wait_gone(members, 5)
    return members


def _group_members(group: int) -> list:
    """(pid, command line) of the processes in a group: /proc on Linux, `ps` on other POSIX
    systems; on Windows (no groups) the process itself, its command line from CIM."""
    if os.path.isdir("/proc/self"):
        return [(pid, _proc_command(pid)) for pid in _proc_pids() if _proc_group(pid) == group]
    if os.name == "nt":
        return [(group, _windows_command(group))]
    done = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "pgid=", "-o", "command="], capture_output=True,
                          text=True, timeout=30)
    rows = [line.split(None, 2) for line in done.stdout.splitlines()]
    return [(int(row[0]), row[2]) for row in rows if len(row) == 3 and row[1] == str(group)]


def _proc_pids() -> list:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _proc_group(pid: int) -> int:
    """Field 5 of /proc/<pid>/stat (after the command name, which may hold spaces and ')')."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return -1
    return int(fields[2]) if fields[0] != b"Z" else -1  # a zombie is already gone


def _proc_command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _windows_command(pid: int) -> str:
    query = f"(Get-CimInstance Win32_Process -Filter 'ProcessId={pid}').CommandLine"
    done = subprocess.run(["powershell", "-NoProfile", "-Command", query], capture_output=True, text=True,
                          timeout=60)
    return done.stdout.strip()


def _kill_all(pids: list, signum: int) -> None:
    for pid in pids:
        if os.name == "nt":  # os.kill there is TerminateProcess of that one process
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, timeout=30)
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_gone(pids: list, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    if os.path.isdir("/proc/self"):
        return _proc_group(pid) != -1  # a zombie counts as gone: only its parent can reap it
    if os.name == "nt":
        return bool(_windows_command(pid))  # os.kill(pid, 0) would terminate it there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
