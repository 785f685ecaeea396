"""Running long commands (venv, pip, service managers) with live output and a way to stop.

Output lines are handed to `on_line` as they come, and `tick` is called at least every
`tick_every` seconds even when the command is silent (pip can be quiet for minutes while it
unpacks a 3 GB wheel): both run in the caller's thread, so they may write progress to a
database and may raise Cancelled, which terminates the command.

Every command starts in its own process group (a new session on POSIX, a new process group
on Windows), so stopping it early ends pip *and* what pip started (a build backend, a
compiler), not only the process we hold. On Linux the child also gets the parent-death
signal: a `kill -9` of the installer ends the pip it was running, instead of leaving it
writing into a venv whose folder lock was just released. The kernel sends that signal when
the *thread* that started the child ends; `run_streaming` waits for its child in that thread,
so it never outlives the call. Elsewhere, the next run ends such a leftover (children.py).
"""
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import Failure

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_SECONDS = 10  # between SIGTERM and SIGKILL when stopping a command early


@dataclass
class Completed:
    code: int
    output: str  # the last lines, for error messages


CommandRunner = Callable[..., Completed]


def run_streaming(args: list, *, cwd=None, env: Optional[dict] = None, timeout: Optional[float] = None,
                  on_line: Optional[Callable[[str], None]] = None, tick: Optional[Callable[[], None]] = None,
                  tick_every: float = 2.0, on_start: Optional[Callable[[int], None]] = None) -> Completed:
    """Run `args` to the end; `on_start(pid)` is told the child's pid (its group id too)."""
    try:
        process = subprocess.Popen([str(a) for a in args], cwd=cwd, env={**os.environ, **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True, errors="replace", bufsize=1, **own_group())
    except FileNotFoundError:
        return Completed(127, f"{args[0]}: command not found")
    lines, tail = queue.Queue(), deque(maxlen=40)
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    finished = False
    try:
        if on_start:
            on_start(process.pid)
        _follow(process, lines, tail, timeout, on_line, tick, tick_every)
        finished = True
    finally:
        if not finished:  # stopped early: cancelled, timed out, or a callback failed
            end_group(process)
    return Completed(process.returncode, "".join(tail))


def own_group() -> dict:
    """Popen options that put the child in a process group of its own (see the module doc)."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    options = {"start_new_session": True}
    if sys.platform.startswith("linux") and _prctl() is not None:
        options["preexec_fn"] = _die_with(os.getpid())
    return options


_PRCTL = []


def _prctl():
    """libc's prctl, looked up once in the parent: the child must not load libraries between
    fork and exec (another thread may hold the loader's lock)."""
    if not _PRCTL:
        try:
            _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):
            _PRCTL.append(None)
    return _PRCTL[0]


def _die_with(parent: int) -> Callable[[], None]:
    prctl = _prctl()

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def end_group(process: subprocess.Popen) -> None:
    """Stop the child and everything in its group: SIGTERM, a grace period, then SIGKILL.
    The child is reaped only after the last signal, so its pid (the group id) cannot be
    reused by an unrelated process while we still signal it."""
    if os.name == "nt":
        return _end_tree_windows(process)
    _signal_group(process.pid, signal.SIGTERM)
    _wait_exited(process.pid, GRACE_SECONDS)
    _signal_group(process.pid, signal.SIGKILL)  # stragglers that ignored SIGTERM (or outlived pip)
    process.wait(5)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group is gone already


def _wait_exited(pid: int, seconds: float) -> None:
    """Wait for the child to exit without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def _end_tree_windows(process: subprocess.Popen) -> None:
    # taskkill /T ends the child's whole tree; TerminateProcess alone would orphan pip's children.
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, timeout=30)
    if process.poll() is None:
        process.kill()
    process.wait(5)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _follow(process, lines, tail, timeout, on_line, tick, tick_every) -> None:
    deadline = time.monotonic() + timeout if timeout else None
    last_tick = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=0.25)
        except queue.Empty:
            line = ""
        if line is None:
            process.wait()
            return
        if line:
            tail.append(line)
            if on_line:
                on_line(line.rstrip())
        if tick and time.monotonic() - last_tick >= tick_every:
            tick()
            last_tick = time.monotonic()
        if deadline and time.monotonic() > deadline:
            raise Failure(f"`{' '.join(map(str, process.args[:4]))} ...` took longer than {timeout:.0f} s",
                          "check the network and run the installer again")
