"""Watching the service that starts ComfyUI while verify waits: a restarting or failed unit
fails at once with its own log lines; a starting or running one is left to start."""
from pathlib import Path

import pytest

from tests.workers.installer.support import FakeRunner
from workers.installer import supervise
from workers.installer.autostart import Launch
from workers.installer.errors import Failure
from workers.installer.layout import Layout
from workers.installer.runner import Completed

UNIT = "comfy-hybrid-comfyui-comfyui-3f9a1c.service"
JOURNAL = ("Starting server\n"
           "Traceback (most recent call last):\n"
           '  File "/home/ann/comfyui/ComfyUI/main.py", line 12, in <module>\n'
           "    import requests\n"
           "ModuleNotFoundError: No module named 'requests'\n"
           "comfy-hybrid-comfyui-comfyui-3f9a1c.service: Main process exited, code=exited, status=1/FAILURE\n"
           "comfy-hybrid-comfyui-comfyui-3f9a1c.service: Failed with result 'exit-code'.\n")


def unit_state(active="active", sub="running", restarts=0, status=0, result="success") -> Completed:
    return Completed(0, f"ActiveState={active}\nSubState={sub}\nNRestarts={restarts}\nExecMainStatus={status}\n"
                        f"Result={result}\n")


def launch_in(root="/home/ann/comfyui", os_name="linux") -> Launch:
    return Launch(Layout(Path(root), os_name), "127.0.0.1", 8188, cpu_only=True)


def systemd_watch(runner, scope="user"):
    service = {"manager": "systemd", "name": UNIT, "scope": scope, "start_command": []}
    return supervise.watcher(service, launch_in(), runner)


@pytest.mark.parametrize("state", [
    {"ActiveState": "activating", "SubState": "start", "NRestarts": "0"},
    {"ActiveState": "active", "SubState": "running", "NRestarts": "0"},
    {},  # systemctl could not answer: nothing is known, verify keeps waiting
])
def test_a_starting_or_running_unit_is_no_trouble(state):
    assert supervise.systemd_trouble(state) == ""


@pytest.mark.parametrize("state, trouble", [
    ({"ActiveState": "activating", "SubState": "auto-restart", "NRestarts": "0"}, "keeps restarting"),
    ({"ActiveState": "active", "SubState": "running", "NRestarts": "2"}, "restarted 2 time(s)"),
    ({"ActiveState": "failed", "SubState": "failed", "NRestarts": "0"}, "has failed"),
    ({"ActiveState": "inactive", "SubState": "dead", "NRestarts": "0"}, "stopped"),
])
def test_a_restarted_failed_or_stopped_unit_is_trouble(state, trouble):
    assert trouble in supervise.systemd_trouble(state)


def test_a_restarting_unit_fails_at_the_poll_that_sees_it_quoting_its_journal():
    runner = FakeRunner(answers={"systemctl --user show": [unit_state(), unit_state(),
                                                           unit_state("activating", "auto-restart", 1, 1, "exit-code")],
                                 "journalctl --user -u": [Completed(0, JOURNAL)]})
    watch = systemd_watch(runner)
    watch()
    watch()
    with pytest.raises(Failure) as failure:
        watch()
    assert watch.polls == 3
    cause = failure.value.cause
    assert cause.startswith(f"the service {UNIT} keeps restarting ComfyUI (restarted 1 time(s))")
    assert "last exit status 1, result exit-code" in cause
    assert "ModuleNotFoundError: No module named 'requests'" in cause and "Failed with result" in cause
    assert ["systemctl", "--user", "show", "-p", "ActiveState,SubState,NRestarts,ExecMainStatus,Result", UNIT] \
        in runner.commands
    assert ["journalctl", "--user", "-u", UNIT, "-n", "20", "--no-pager", "-o", "cat"] in runner.commands
    assert "pip install" in failure.value.fix and f"journalctl --user -u {UNIT} -n 200" in failure.value.fix


def test_a_system_unit_is_asked_about_without_user():
    runner = FakeRunner(answers={"systemctl show": [unit_state("failed", "failed", 0, 1, "exit-code")],
                                 "journalctl -u": [Completed(0, "Error: CUDA driver version is insufficient\n")]})
    with pytest.raises(Failure) as failure:
        systemd_watch(runner, scope="system")()
    assert "has failed" in failure.value.cause and "CUDA driver version is insufficient" in failure.value.cause
    assert [c[:2] for c in runner.commands] == [["systemctl", "show"], ["journalctl", "-u"]]


def test_windows_services_and_unnamed_ones_are_not_watched():
    runner = FakeRunner()
    for service in ({"manager": "nssm", "name": "ComfyHybridComfyUI-x"}, {"manager": "schtasks", "name": "x"},
                    {"manager": "systemd", "start_command": ["systemctl", "--user", "restart", "old.service"]}):
        assert supervise.watcher(service, launch_in(), runner) is None
    assert runner.commands == []


LAUNCHCTL_PRINT = """gui/501/org.comfyhybrid.comfyui.comfyui-3f9a1c = {{
\tactive count = 0
\tpath = /Users/ann/Library/LaunchAgents/org.comfyhybrid.comfyui.comfyui-3f9a1c.plist
\tstate = {state}
\tprogram = /Users/ann/comfyui/venv/bin/python
\tenvironment = {{
\t\tPYTHONUNBUFFERED => 1
\t}}
\truns = {runs}
\tlast exit code = {code}
\tspawn type = daemon (3)
}}
"""


def launchctl(state="running", runs=1, code="(never exited)") -> Completed:
    return Completed(0, LAUNCHCTL_PRINT.format(state=state, runs=runs, code=code))


def test_launchctl_print_is_read_one_level_deep():
    state = supervise.parse_launchd(launchctl("not running", 3, "1").output)
    assert state["state"] == "not running" and state["runs"] == "3" and state["last exit code"] == "1"
    assert "PYTHONUNBUFFERED" not in str(state)


def test_a_launchd_agent_that_exits_with_an_error_fails_with_its_log(tmp_path):
    launch = launch_in(str(tmp_path), "darwin")
    launch.layout.log_file.parent.mkdir(parents=True)
    launch.layout.log_file.write_text("an earlier start's line\n")
    runner = FakeRunner(answers={"launchctl print": [launchctl("running", 4), launchctl("running", 5),
                                                     launchctl("not running", 5, "1")]})
    watch = supervise.watcher({"manager": "launchd", "name": "org.comfyhybrid.comfyui.x"}, launch, runner)
    with launch.layout.log_file.open("a") as log:
        log.write("Traceback (most recent call last):\n  File \"main.py\", line 1\nImportError: libcudart.so.12\n")
    watch()  # the kickstart's own spawn: runs 4 -> 5
    with pytest.raises(Failure) as failure:
        watch()
    assert watch.polls == 2
    assert "stopped ComfyUI (last exit code 1): ImportError: libcudart.so.12" in failure.value.cause
    assert "earlier start" not in failure.value.cause and str(launch.layout.log_file) in failure.value.fix


def test_a_launchd_agent_spawned_again_after_our_kickstart_keeps_restarting(tmp_path):
    runner = FakeRunner(answers={"launchctl print": [launchctl("running", 2), launchctl("running", 4)]})
    watch = supervise.watcher({"manager": "launchd", "name": "x"}, launch_in(str(tmp_path), "darwin"), runner)
    with pytest.raises(Failure) as failure:
        watch()
    assert "keeps restarting ComfyUI (started 2 times)" in failure.value.cause
