"""Commands the installer runs: their own process group, nothing left behind when the
installer stops or is killed, and every command in the install's log. Real subprocesses."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.workers.installer.support import FakeRunner, hooks_for
from workers.installer.children import end_leftovers, recorded
from workers.installer.commandlog import logged
from workers.installer.errors import Cancelled, Failure
from workers.installer.layout import Layout, write_json_atomic
from workers.installer.pipeline import Installer, Options
from workers.installer.runner import run_streaming

ROOT = Path(__file__).resolve().parents[3]
POSIX = pytest.mark.skipif(os.name == "nt", reason="process groups and signals as on POSIX")
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

# A command that starts a grandchild which ignores SIGTERM; once it does, the grandchild
# prints both pids. Then both sleep.
PARENT_OF_A_STUBBORN_CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('pids', os.getppid(), os.getpid(), flush=True); time.sleep(120)"])
time.sleep(120)
"""
SLEEPER = "import time; print('sleeping', flush=True); time.sleep(120)"


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting for a parent that is not us."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def pids_from(lines: list) -> list:
    return next([int(p) for p in line.split()[1:]] for line in lines if line.startswith("pids "))


def sleeper_in(layout: Layout, mention_venv: bool = True) -> subprocess.Popen:
    """A process in a session of its own, like a command of a killed installer."""
    extra = [str(layout.venv_dir / "bin" / "python")] if mention_venv else []
    return subprocess.Popen([sys.executable, "-c", SLEEPER, *extra], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def record_child(layout: Layout, pid: int, owner: int) -> Path:
    path = layout.children_dir / f"{pid}.json"
    write_json_atomic(path, {"pid": pid, "owner": owner, "args": ["python", "-m", "pip"]})
    return path


@POSIX
def test_a_command_runs_in_a_session_and_process_group_of_its_own():
    lines = []
    done = run_streaming([sys.executable, "-c", "import os; print('ids', os.getpid(), os.getsid(0), os.getpgid(0))"],
                         on_line=lines.append)
    _, pid, session, group = lines[0].split()
    assert done.code == 0 and pid == session == group and int(session) != os.getsid(0)


@POSIX
@pytest.mark.parametrize("stop", ["cancel", "timeout", "a failing callback"])
@pytest.mark.slow
def test_a_command_stopped_early_ends_with_everything_it_started(stop):
    lines = []

    def on_line(line):
        lines.append(line)
        if stop == "a failing callback" and line.startswith("pids "):
            raise OSError("the progress database went away")

    def tick():
        if stop == "cancel" and any(line.startswith("pids ") for line in lines):
            raise Cancelled()
    expected = {"cancel": Cancelled, "timeout": Failure, "a failing callback": OSError}[stop]
    with pytest.raises(expected):
        run_streaming([sys.executable, "-c", PARENT_OF_A_STUBBORN_CHILD], on_line=on_line, tick=tick,
                      tick_every=0.05, timeout=3 if stop == "timeout" else None)
    command, stubborn = pids_from(lines)
    assert gone(command)
    wait_for(lambda: gone(stubborn), 10, message="the grandchild that ignores SIGTERM to be killed")


@LINUX
def test_a_kill_9_of_the_installer_ends_the_command_it_was_running(tmp_path):
    layout = Layout(tmp_path / "install", "linux")
    layout.root.mkdir()
    installer = ("import sys\n"
                 "from pathlib import Path\n"
                 "from workers.installer.children import recorded\n"
                 "from workers.installer.layout import Layout\n"
                 "from workers.installer.runner import run_streaming\n"
                 "layout = Layout(Path(sys.argv[1]), 'linux')\n"
                 "recorded(run_streaming, layout)([sys.executable, '-c', sys.argv[2], str(layout.python)],\n"
                 "                                on_line=lambda line: print(line, flush=True))\n")
    process = subprocess.Popen([sys.executable, "-c", installer, str(layout.root), SLEEPER], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "sleeping"
        [record] = layout.children_dir.glob("*.json")
        child = json.loads(record.read_text())
        assert child["owner"] == process.pid and not gone(child["pid"])
    finally:
        process.kill()
        process.wait()
    wait_for(lambda: gone(child["pid"]), 10, message="pip's stand-in to die with the installer")
    assert end_leftovers(layout) == [] and not record.exists()  # nothing left to end; the record is cleared


@POSIX
def test_the_next_run_ends_a_command_left_running_by_a_killed_installer(tmp_path):
    installer = Installer(Options(path=str(tmp_path / "install")), hooks_for(tmp_path, FakeRunner()))
    installer.layout.root.mkdir()
    leftover = sleeper_in(installer.layout)
    assert leftover.stdout.readline().strip() == "sleeping"
    record = record_child(installer.layout, leftover.pid, owner=dead_pid())
    with installer.folder_lock():
        assert leftover.wait(10) == -signal.SIGTERM and not record.exists()
    assert f"ended process {leftover.pid}" in installer.layout.install_log.read_text()


@POSIX
def test_a_recorded_pid_that_now_runs_another_program_is_not_killed(tmp_path):
    layout = Layout(tmp_path / "install", "linux")
    stranger = sleeper_in(layout, mention_venv=False)  # the pid was reused by something else
    try:
        assert stranger.stdout.readline().strip() == "sleeping"
        record = record_child(layout, stranger.pid, owner=dead_pid())
        assert end_leftovers(layout) == [] and stranger.poll() is None and not record.exists()
    finally:
        stranger.kill()
        stranger.wait()


@POSIX
def test_a_command_of_an_installer_still_running_is_not_a_leftover(tmp_path):
    layout = Layout(tmp_path / "install", "linux")
    command, owner = sleeper_in(layout), sleeper_in(layout, mention_venv=False)
    try:
        assert command.stdout.readline().strip() == "sleeping"
        record = record_child(layout, command.pid, owner=owner.pid)
        assert end_leftovers(layout) == [] and command.poll() is None and record.exists()
    finally:
        for process in (command, owner):
            process.kill()
            process.wait()


def test_every_command_is_logged_whole_with_a_header_and_its_exit_code(tmp_path):
    log = tmp_path / "install" / "logs" / "install.log"
    log.parent.parent.mkdir()
    shown = []
    script = "import sys\nfor n in range(60): print('line', n)\nprint('ERROR: the real reason')\nsys.exit(3)"
    done = logged(run_streaming, log)([sys.executable, "-c", script], on_line=shown.append)
    text = log.read_text()
    assert done.code == 3 and len(shown) == 61  # the caller still gets every line
    assert f"$ {sys.executable} -c " in text and "line 0\n" in text and "line 59\n" in text
    assert text.rstrip().endswith("exit code 3") and "ERROR: the real reason" in text


def test_a_runner_that_only_returns_its_output_is_logged_too(tmp_path):
    log = tmp_path / "logs" / "install.log"
    logged(FakeRunner(fail="pip"), log)(["python", "-m", "pip", "install", "x"])
    assert "ERROR: simulated failure" in log.read_text() and "exit code 1" in log.read_text()


def test_secrets_are_masked_in_the_log(tmp_path):
    log = tmp_path / "logs" / "install.log"
    printed = "print('Looking in indexes: https://alice:s3cret@mirror.example/simple?token=t0ken&x=1')"
    logged(run_streaming, log)([sys.executable, "-c", printed, "--index-url", "https://bob:hunter2@mirror.example/",
                                "--password", "pa55", "HF_TOKEN=hf_abc"])
    text = log.read_text()
    for secret in ("s3cret", "t0ken", "hunter2", "pa55", "hf_abc", "alice", "bob"):
        assert secret not in text
    assert "https://***@mirror.example/simple?token=***&x=1" in text and "HF_TOKEN=***" in text


def test_a_check_of_a_folder_not_made_yet_writes_nothing(tmp_path):
    layout = Layout(tmp_path / "not-yet", "linux")
    logged(recorded(run_streaming, layout), layout.install_log)([sys.executable, "-c", "print('hello')"])
    assert not layout.root.exists()
