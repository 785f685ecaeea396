"""Start ComfyUI and wait until it answers `GET /system_stats`; stop one we started.

Before the server starts, ComfyUI's own start-up check runs (`main.py --quick-test-for-ci`,
main.py: it imports everything, loads the custom nodes, then exits 0), so a missing package
fails at once with its own error instead of as a server that never answers.
"""
import contextlib
import os
import signal
import subprocess
import time
from typing import Callable, Optional

from . import comfylog
from .autostart import Launch
from .errors import Failure
from .identity import is_this_launch, system_stats
from .progress import Control, check_control

QUICK_TEST = "--quick-test-for-ci"
POLL_EVERY = 0.5
# ComfyUI runs custom nodes (third-party code): started from a Celery worker, it gets the
# worker's environment minus anything that looks like a secret or a connection string.
_SECRET_HINTS = ("SECRET", "TOKEN", "PASSWORD", "API_KEY", "DATABASE_URL", "BROKER_URL", "REDIS_URL",
                 "RESULT_BACKEND", "BASIC_AUTH")


def start_detached(launch: Launch) -> subprocess.Popen:
    """ComfyUI in its own session, so it outlives the installer (and a Celery worker restart)."""
    process = _spawn(launch, launch.argv)
    launch.pid_file.parent.mkdir(parents=True, exist_ok=True)
    launch.pid_file.write_text(str(process.pid))
    return process


def _spawn(launch: Launch, argv: list) -> subprocess.Popen:
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(launch.log_file, "ab") as log:
        options = {"creationflags": 0x00000008 | 0x00000200} if os.name == "nt" else {"start_new_session": True}
        return subprocess.Popen(argv, cwd=launch.workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=comfy_environment(launch.env), **options)


def comfy_environment(pin: tuple = ()) -> dict:
    """`pin`: the Launch's visible-devices variables, which win over any the worker has."""
    env = {key: value for key, value in os.environ.items() if not any(h in key.upper() for h in _SECRET_HINTS)}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **dict(pin)}


def startup_check(launch: Launch, *, timeout: float, control: Control, tick: Callable[[float], None],
                  sleep=time.sleep) -> str:
    """Run ComfyUI's start-up check with the server's own arguments. Returns the first error it
    printed and survived ("" if none: a custom node that failed to import); raises when it fails."""
    log = launch.log_file
    offset = comfylog.size(log)
    process = _spawn(launch, [*launch.argv, QUICK_TEST])
    try:
        code = _poll(process.poll, timeout=timeout, control=control, tick=tick, sleep=sleep)
    finally:
        _kill_if_running(process)
    output = comfylog.read_since(log, offset)
    if code is None:
        raise Failure(f"ComfyUI's start-up check (main.py {QUICK_TEST}) did not finish within {timeout:.0f} s",
                      f"read {log}; run `{' '.join(process.args)}` yourself to see where it hangs")
    if code != 0:
        error = comfylog.quote_error(output)
        raise Failure(f"ComfyUI's start-up check (main.py {QUICK_TEST}) failed with exit code {code}: {error}",
                      comfylog.fix_for(error, str(launch.layout.python), f"the whole output is in {log}"))
    return comfylog.first_error(output)


def wait_until_up(launch: Launch, *, timeout: float, control: Control, tick: Callable[[float], None],
                  process: Optional[subprocess.Popen] = None, log_from: int = 0,
                  watch: Optional[Callable[[], None]] = None, sleep=time.sleep) -> dict:
    """Wait for this install's ComfyUI, with these settings, to answer. `watch` is called
    between probes and raises when the service that starts it is failing (supervise.py)."""
    def answered() -> Optional[dict]:
        stats = system_stats(launch.url)
        if is_this_launch(stats, launch):
            return stats
        if process is not None and process.poll() is not None:
            raise _exited(launch, process.returncode, log_from)
        if watch is not None:
            watch()
        return None
    stats = _poll(answered, timeout=timeout, control=control, tick=tick, sleep=sleep)
    if stats is None:
        raise Failure(f"this install's ComfyUI did not answer {launch.url}/system_stats within {timeout:.0f} s",
                      f"read {launch.log_file}; start it by hand with {launch.start_script} "
                      "to see what it prints")
    return stats


def _exited(launch: Launch, code: int, log_from: int) -> Failure:
    log = launch.log_file
    error = comfylog.quote_error(comfylog.read_since(log, log_from))
    return Failure(f"ComfyUI exited with code {code} before answering: {error}",
                   comfylog.fix_for(error, str(launch.layout.python), f"read {log}"))


def _poll(until: Callable[[], object], *, timeout: float, control: Control, tick: Callable[[float], None],
          sleep) -> object:
    """Call `until` every POLL_EVERY seconds until it returns something other than None (that is
    returned) or `timeout` passes (None). Pause and cancel are honoured between calls."""
    started = time.monotonic()
    while True:
        found = until()
        if found is not None:
            return found
        waited = time.monotonic() - started
        if waited > timeout:
            return None
        check_control(control)
        tick(waited)
        sleep(POLL_EVERY)


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:  # timed out, paused or cancelled: the next run checks again
        process.kill()
        process.wait(10)


def stop(launch: Launch, timeout: float = 10.0) -> bool:
    """Stop the ComfyUI this installer started (by its recorded pid). True if one was running."""
    try:
        pid = int(launch.pid_file.read_text())
    except (OSError, ValueError):
        return False
    launch.pid_file.unlink(missing_ok=True)
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
