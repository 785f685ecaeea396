"""Running long commands (venv, pip, service managers) with live output and a way to stop.

Output lines are handed to `on_line` as they come, and `tick` is called at least every
`tick_every` seconds even when the command is silent (pip can be quiet for minutes while it
unpacks a 3 GB wheel): both run in the caller's thread, so they may write progress to a
database and may raise Cancelled, which terminates the command.
"""
import os
import queue
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import Failure


@dataclass
class Completed:
    code: int
    output: str  # the last lines, for error messages


CommandRunner = Callable[..., Completed]


def run_streaming(args: list, *, cwd=None, env: Optional[dict] = None, timeout: Optional[float] = None,
                  on_line: Optional[Callable[[str], None]] = None, tick: Optional[Callable[[], None]] = None,
                  tick_every: float = 2.0) -> Completed:
    try:
        process = subprocess.Popen([str(a) for a in args], cwd=cwd, env={**os.environ, **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True, errors="replace", bufsize=1)
    except FileNotFoundError:
        return Completed(127, f"{args[0]}: command not found")
    lines, tail = queue.Queue(), deque(maxlen=40)
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        _follow(process, lines, tail, timeout, on_line, tick, tick_every)
    finally:
        if process.poll() is None:  # stopped early: cancelled, timed out, or a callback failed
            _terminate(process)
    return Completed(process.returncode, "".join(tail))


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


def _terminate(process) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
