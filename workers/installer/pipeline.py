"""The installer: eight steps run in order, each reported through one callback.

Pure Python (no Django): the CLI, the Celery task and the bootstrap scripts all drive this
class and differ only in the `Hooks` they pass (where progress goes, where pause/cancel
come from, how to register the backend). Commands, the free-space lookup, the GPU probe
and the HTTP session are hooks too, so tests run every step for real without installing
PyTorch.
"""
import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional

import requests

from . import steps
from .autostart import SYSTEM_UNIT_DIR, Launch, running_as_root
from .children import end_leftovers, recorded
from .commandlog import logged, note
from .detect.probe import SystemInfo, current_os, probe_system
from .download import Downloader, Policy
from .errors import Cancelled, Failure, InstallError, Paused
from .gpus import Worker, project_python
from .layout import Layout, install_lock
from .progress import (CANCELLED, DONE, FAILED, FINISHED, PAUSED, RUNNING, Control, FileBar, StepReporter,
                       StepState, check_control, no_control)
from .runner import CommandRunner, run_streaming

STEPS = (
    ("check", "Check the system"),
    ("download", "Download ComfyUI"),
    ("extract", "Unpack ComfyUI"),
    ("models", "Download the models"),
    ("environment", "Install PyTorch and requirements"),
    ("service", "Start script and service"),
    ("verify", "Start ComfyUI and verify"),
    ("register", "Register the local backend"),
)
# Share of the whole install each step usually takes, for one overall percentage.
WEIGHTS = {"check": 1, "download": 2, "extract": 1, "models": 60, "environment": 30, "service": 1,
           "verify": 4, "register": 1}


def default_path() -> Path:
    return Path.home() / "comfyui"


@dataclass
class Options:
    """What the user chose; JSON-serialisable (it is stored on the install's database row)."""

    path: str = ""
    manifest: str = ""
    skip_models: bool = False
    with_optional: bool = False
    service: bool = True
    system_service: bool = False  # Linux: a system unit (needs root; as root it is the default)
    start: bool = True
    host: str = "127.0.0.1"
    port: int = 8188
    torch: str = ""  # override the detected PyTorch build (cu128, rocm7.2, cpu...)
    python: str = ""  # interpreter for ComfyUI's venv (default: the one running the installer)
    start_timeout: float = 300.0  # the first start compiles and loads a lot
    verify_all: bool = False  # re-hash every model in place, trusting no recorded fingerprint
    gpus: str = ""  # one ComfyUI per GPU: "all" or "0,2" (gpus.py); "" one ComfyUI for the whole machine

    @classmethod
    def from_dict(cls, data: dict) -> "Options":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def install_dir(self) -> Path:
        return Path(os.path.expanduser(self.path)).resolve() if self.path else default_path()


def free_bytes(path: Path) -> int:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass
class Hooks:
    report: Callable[[StepState, list], None] = lambda state, states: None
    control: Control = no_control
    run: CommandRunner = run_streaming
    probe: Callable[[], SystemInfo] = probe_system
    free_space: Callable[[Path], int] = free_bytes
    session: Optional[requests.Session] = None
    policy: Policy = field(default_factory=Policy)
    register: Optional[Callable[[dict], str]] = None  # makes the backend known; returns a message
    # One ComfyUI per GPU: (backends to register [{name, url, gpu, vram_total}], names of the
    # backends of GPUs no longer served) -> a message.
    register_gpus: Optional[Callable[[list, list], str]] = None
    on_plan: Optional[Callable[[dict], None]] = None
    confirm: Optional[Callable[[dict], bool]] = None  # asked after the check; False cancels
    home: Path = field(default_factory=Path.home)  # where services and shortcuts are written
    as_root: bool = field(default_factory=running_as_root)  # then the systemd unit is a system one
    system_units: Path = SYSTEM_UNIT_DIR
    os_name: str = ""
    sleep: Callable[[float], None] = time.sleep


class Installer:
    def __init__(self, options: Options, hooks: Optional[Hooks] = None):
        self.options = options
        self.hooks = hooks or Hooks()
        self.layout = Layout(options.install_dir, self.hooks.os_name or current_os())
        # Every command any step runs is logged in full and recorded while it runs (children.py).
        self.hooks = replace(self.hooks, run=logged(recorded(self.hooks.run, self.layout), self.layout.install_log))
        self.states = [StepState(name, title) for name, title in STEPS]
        self.manifest = self.system = self.build = self.plan = self.stats = None
        self.env_health = None  # what the check step found in ComfyUI's venv (environment.Health)
        self.verified = self.layout.read_state().get("verified", {})
        self.port, self.port_note = options.port, ""  # the check step may move to the next free port, and why
        self.pins, self.gpu_ports = [], {}  # one ComfyUI per GPU (gpus.py): the first pin is the install's own
        self.gpu_stats = {}  # GPU number -> what its ComfyUI answered in the verify step
        self.startup_checked = False  # ComfyUI's start-up check runs once a run, for every GPU's ComfyUI
        self._locked = False

    def run(self) -> dict:
        """Run every step; raises InstallError, Paused or Cancelled. Returns the plan."""
        with self.folder_lock():
            for name, _ in STEPS:
                self._run_step(name)
        return self.plan

    @contextlib.contextmanager
    def folder_lock(self):
        """Hold the folder's lock (raises InstallError when another installer holds it). The
        Django front takes it before it claims the run, so a claimed run's lock is always held
        and a free one proves the run's process is dead. Re-entrant within this Installer."""
        if self._locked:
            yield
            return
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(install_lock(self.layout))
            except Failure as failure:
                raise InstallError("check", failure.cause, failure.fix)
            self._locked = True
            _end_leftovers(self.layout)
            try:
                yield
            finally:
                self._locked = False

    def check(self) -> dict:
        """Only the check step: the plan of what an install would do here (nothing is written)."""
        self._run_step("check")
        return self.plan

    def state(self, name: str) -> StepState:
        return next(state for state in self.states if state.name == name)

    def _run_step(self, name: str) -> None:
        reporter = StepReporter(self.state(name), lambda state: self.hooks.report(state, self.states))
        try:
            check_control(self.hooks.control)  # a pause asked between steps
            reporter.start()
            getattr(steps, f"step_{name}")(self, reporter)
        except Paused:
            reporter.finish(PAUSED, "paused; what was downloaded is kept and resume continues from there")
            raise
        except Cancelled:
            reporter.finish(CANCELLED, "cancelled; nothing half-done was put in place")
            raise
        except Failure as failure:
            reporter.finish(FAILED, f"{failure.cause}. What to do: {failure.fix}")
            raise InstallError(name, failure.cause, failure.fix)
        except OSError as error:
            cause = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
            fix = f"check the free space and permissions of {self.layout.root}, then run again"
            reporter.finish(FAILED, f"{cause}. What to do: {fix}")
            raise InstallError(name, cause, fix)
        if reporter.state.status == RUNNING:
            reporter.finish(DONE)

    # What the steps share ------------------------------------------------------------------
    @property
    def models(self) -> list:
        return self.manifest.selected_models(skip_models=self.options.skip_models,
                                             with_optional=self.options.with_optional)

    @property
    def requirements(self) -> Path:
        return self.layout.comfy_dir / self.manifest.comfyui.requirements

    @property
    def launch(self) -> Launch:
        """The install's own ComfyUI: the whole machine's, or the first chosen GPU's."""
        pin = self.pins[0].env if self.pins else ()
        return Launch(self.layout, self.options.host, self.port, cpu_only=self.build.flavor == "cpu", env=pin)

    @property
    def gpu_launches(self) -> list:
        """(pin, Launch) of every other chosen GPU's ComfyUI."""
        return [(pin, Launch(self.layout, self.options.host, self.gpu_ports[pin.index], cpu_only=False,
                             instance=pin.instance, env=pin.env, shortcuts=False)) for pin in self.pins[1:]]

    def worker(self, pin, launch: Launch) -> Worker:
        return Worker(self.layout, pin.instance, launch.url, pin.backend(first=False),
                      project_python(self.layout.os_name))

    def outcome(self) -> str:
        """One sentence for the end of a successful run."""
        where = f"ComfyUI is installed in {self.layout.root}"
        if self.stats is None:
            return f"{where}; it was not started (start it with {self.layout.start_script})."
        moved = f" ({self.port_note})" if self.port_note else ""
        moved += f" (GPU {self.pins[0].index})" if self.pins else ""
        others = "".join(f"; GPU {pin.index}'s ComfyUI at {launch.url} is the backend {pin.backend(first=False)}"
                         for pin, launch in self.gpu_launches)
        return f"{where} and answers at {self.launch.url}{moved}{others}."

    def environment(self, reporter):
        return steps.environment_for(self, reporter)

    def downloader(self, reporter, label: str, offset: int = 0, total: Optional[int] = None) -> Downloader:
        """A Downloader whose progress lands on this step (offset/total: several files, one bar)."""
        return Downloader(session=self.hooks.session, policy=self.hooks.policy, control=self.hooks.control,
                          progress=FileBar(reporter, offset, total), sleep=self.hooks.sleep)


def _end_leftovers(layout: Layout) -> None:
    """A command still running from an installer that was killed (children.py)."""
    for pid in end_leftovers(layout):
        note(layout.install_log, f"ended process {pid}, left running in {layout.venv_dir} by an installer "
                                 "that was stopped")


def overall_progress(states: list) -> int:
    """One percentage for the whole install, weighting each step by its usual share."""
    total = sum(WEIGHTS.values())
    done = sum(WEIGHTS[s.name] * (100 if s.status in FINISHED else s.progress) for s in states)
    return int(done / total)
