"""Is the service that starts ComfyUI staying up? Asked while verify waits for an answer.

A ComfyUI that crashes at start under a service is restarted by it (systemd Restart=,
launchd KeepAlive) and so never "exits": without asking the service, verify would wait
its whole start_timeout (300 s) and then say only "did not answer". A watcher is called
between probes and raises a Failure, with the service's own last log lines, as soon as the
service has restarted ComfyUI or has given up.

* systemd: `systemctl show` (NRestarts counts automatic restarts only and is reset by a
  manual restart, systemd PR #6495, so after our `restart` any count is a crash).
* launchd: `launchctl print` (`runs` counts every spawn, our kickstart included).
* Windows (NSSM, scheduled task): no cheap state to read, so verify keeps its timeout there.
"""
import re
from dataclasses import dataclass
from typing import Callable, Optional

from . import comfylog
from .autostart import Launch, launchd_domain
from .errors import Failure
from .runner import CommandRunner

SYSTEMD_PROPERTIES = "ActiveState,SubState,NRestarts,ExecMainStatus,Result"
JOURNAL_LINES = 20


def watcher(service: dict, launch: Launch, run: CommandRunner) -> Optional[Callable[[], None]]:
    """The watcher for the registered service (taken before it is started), or None."""
    if not service.get("name"):
        return None  # registered before services had names, or not registered
    if service.get("manager") == "systemd":
        return SystemdWatch(service["name"], [] if service.get("scope") == "system" else ["--user"], launch, run)
    if service.get("manager") == "launchd":
        return LaunchdWatch.before_start(f"{launchd_domain()}/{service['name']}", launch, run)
    return None


def parse_properties(output: str) -> dict:
    """`Key=Value` lines, as `systemctl show -p ...` prints them."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def systemd_trouble(state: dict) -> str:
    """What is wrong with a unit we just (re)started, "" while it is starting or running."""
    restarts = int(state.get("NRestarts") or 0)
    if state.get("SubState") == "auto-restart" or restarts:
        return f"keeps restarting ComfyUI (restarted {restarts} time(s))"
    if state.get("ActiveState") == "failed":
        return "has failed"
    if state.get("ActiveState") == "inactive":
        return "stopped"
    return ""


@dataclass
class SystemdWatch:
    unit: str
    flags: list  # ["--user"] for a user unit
    launch: Launch
    run: CommandRunner
    polls: int = 0

    def __call__(self) -> None:
        self.polls += 1
        done = self.run(["systemctl", *self.flags, "show", "-p", SYSTEMD_PROPERTIES, self.unit], timeout=30)
        state = parse_properties(done.output) if done.code == 0 else {}
        trouble = systemd_trouble(state)
        if trouble:
            raise self._failure(trouble, state)

    def _failure(self, trouble: str, state: dict) -> Failure:
        journal = ["journalctl", *self.flags, "-u", self.unit, "-n", str(JOURNAL_LINES), "--no-pager", "-o", "cat"]
        lines = self.run(journal, timeout=30).output
        error = comfylog.first_error(lines)
        quoted = f"{error}; its last log lines: {comfylog.tail(lines)}" if error else comfylog.tail(lines)
        status = f"last exit status {state.get('ExecMainStatus', '?')}, result {state.get('Result', '?')}"
        whole = " ".join(journal[:4]) + " -n 200 --no-pager"
        return Failure(f"the service {self.unit} {trouble} ({status}): {quoted}",
                       comfylog.fix_for(error, str(self.launch.layout.python), f"its whole log: `{whole}`"))


def parse_launchd(output: str) -> dict:
    """The job's own `key = value` lines of `launchctl print` (one tab deep; nested blocks are deeper)."""
    return dict(re.findall(r"^\t([a-z][a-z ]*[a-z]) = (.*)$", output, flags=re.MULTILINE))


@dataclass
class LaunchdWatch:
    target: str  # gui/<uid>/<label>
    launch: Launch
    run: CommandRunner
    runs_before: int
    log_from: int
    polls: int = 0

    @classmethod
    def before_start(cls, target: str, launch: Launch, run: CommandRunner) -> "LaunchdWatch":
        state = parse_launchd(run(["launchctl", "print", target], timeout=30).output)
        return cls(target, launch, run, _int(state.get("runs")), comfylog.size(launch.log_file))

    def __call__(self) -> None:
        self.polls += 1
        state = parse_launchd(self.run(["launchctl", "print", self.target], timeout=30).output)
        trouble = launchd_trouble(state, self.runs_before)
        if trouble:
            log = self.launch.log_file
            error = comfylog.quote_error(comfylog.read_since(log, self.log_from))
            raise Failure(f"the launchd agent {self.target} {trouble}: {error}",
                          comfylog.fix_for(error, str(self.launch.layout.python), f"read {log}"))


def launchd_trouble(state: dict, runs_before: int) -> str:
    """Our kickstart spawns ComfyUI once; another spawn, or a stop with an error code, is a crash."""
    if _int(state.get("runs")) > runs_before + 1:
        return f"keeps restarting ComfyUI (started {_int(state.get('runs')) - runs_before} times)"
    code = state.get("last exit code", "")
    if state and state.get("state") != "running" and code.lstrip("-").isdigit() and int(code) != 0:
        return f"stopped ComfyUI (last exit code {code})"
    return ""


def _int(text: Optional[str]) -> int:
    return int(text) if text and text.isdigit() else 0
