"""The installer's only Django-aware module: runs the pure installer for an InstallRun row.

Progress goes to the row (throttled), pause/cancel come from the row (polled, throttled),
and the verified ComfyUI is registered as the "local" backend (with one ComfyUI per GPU, each
other GPU's as `local-gpu<N>`). Used by the Celery task
(workers/installer/server/tasks.py) and by `manage.py install_comfyui`. All database writes happen in
the calling thread, between chunks.
"""
import logging
import time
from typing import Callable, Optional

from . import selectors, services
from .models import InstallStatus

from ..errors import Cancelled, InstallError, Paused, Superseded
from ..pipeline import Hooks, Installer, Options, overall_progress
from ..progress import CANCEL, PAUSE, RUN

log = logging.getLogger(__name__)

WRITE_INTERVAL = 0.5  # seconds between progress writes (status changes are written at once)
CONTROL_INTERVAL = 0.5  # seconds between reads of the pause/cancel flag

PAUSED_MESSAGE = "Paused. Partial downloads are kept; Resume continues from the byte where it stopped."
CANCELLED_MESSAGE = "Cancelled. Nothing half-done was put in place; partial downloads are kept for a later install."


class DbControl:
    """The control callable, backed by the row's `control` column."""

    def __init__(self, run_id: int, generation: int, interval: Optional[float] = None, clock=time.monotonic):
        self.run_id, self.generation = run_id, generation
        self.interval = CONTROL_INTERVAL if interval is None else interval
        self.clock = clock
        self._value, self._read_at = RUN, None

    def __call__(self) -> str:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.interval:
            wanted = selectors.run_control(run_id=self.run_id, generation=self.generation)
            self._value = {"pause": PAUSE, "cancel": CANCEL}.get(wanted, RUN)
            self._read_at = now
        return self._value


class DbProgress:
    """The report callable: step states to the row, at most every `interval` seconds."""

    def __init__(self, run_id: int, generation: int, interval: Optional[float] = None, clock=time.monotonic):
        self.run_id, self.generation = run_id, generation
        self.interval = WRITE_INTERVAL if interval is None else interval
        self.clock = clock
        self._written_at, self._statuses = None, {}
        self.superseded = False

    def __call__(self, state, states) -> None:
        changed = self._statuses.get(state.name) != state.status
        now = self.clock()
        recent = self._written_at is not None and now - self._written_at < self.interval
        if self.superseded or (recent and not changed):
            return
        self._statuses[state.name] = state.status
        self._written_at = now
        fields = progress_fields(state, states)
        if not services.install_progress(run_id=self.run_id, generation=self.generation, **fields):
            self.superseded = True
            raise Superseded()

    def plan(self, plan: dict) -> None:
        services.install_progress(run_id=self.run_id, generation=self.generation, plan=plan,
                                  install_path=plan["path"])


def progress_fields(state, states) -> dict:
    return {"step": state.name, "steps": [s.as_dict() for s in states], "progress": overall_progress(states),
            "bytes_done": state.bytes_done, "bytes_total": state.bytes_total, "speed": state.speed,
            "eta": state.eta, "message": state.message[:2000]}


def register_backend(info: dict) -> str:
    return services.local_backend_register(url=info["url"], gpu=info.get("gpu", ""),
                                           vram_total=info.get("vram_total"))


def register_gpu_backends(backends: list, retired: list) -> str:
    return services.gpu_backends_register(backends=backends, retired=retired)


def execute(*, run_id: int, generation: int, report: Optional[Callable] = None,
            extra_control: Optional[Callable] = None, **hook_overrides) -> str:
    """Run the install of this run/generation to its end, a pause or a cancel. Returns the
    outcome ("succeeded", "paused", ..., or "not claimed" for a stale/duplicate message).
    `report`/`extra_control` add a second progress sink and control (the CLI's terminal)."""
    run = selectors.run_find(run_id=run_id)
    if run is None or run.generation != generation:
        return "not claimed"
    progress = DbProgress(run_id, generation)
    hooks = Hooks(report=_tee(progress, report), control=_either(DbControl(run_id, generation), extra_control),
                  register=register_backend, register_gpus=register_gpu_backends, on_plan=progress.plan,
                  **hook_overrides)
    installer = Installer(Options.from_dict(run.options), hooks)
    try:
        # The folder lock first, then the claim: a running row's folder lock is always held,
        # so a free one tells the CLI and the page at once that its process is dead.
        with installer.folder_lock():
            if not services.install_claim(run_id=run_id, generation=generation):
                return "not claimed"
            status, error, message = _outcome(installer)
    except InstallError as locked:  # another installer works in this folder: this run fails, says why
        if not services.install_claim(run_id=run_id, generation=generation):
            return "not claimed"
        status, error, message = InstallStatus.FAILED, str(locked), f"Failed at step '{locked.step}'."
    if status is None:
        return "superseded"
    last = next((s for s in reversed(installer.states) if s.status != "pending"), installer.states[0])
    services.install_finish(run_id=run_id, generation=generation, status=status, error=error,
                            **{**progress_fields(last, installer.states), "message": message})
    return status


def _outcome(installer: Installer) -> tuple:
    try:
        installer.run()
    except Superseded:
        return None, "", ""
    except Paused:
        return InstallStatus.PAUSED, "", PAUSED_MESSAGE
    except Cancelled:
        return InstallStatus.CANCELLED, "", CANCELLED_MESSAGE
    except InstallError as error:
        return InstallStatus.FAILED, str(error), f"Failed at step '{error.step}'."
    except Exception as error:  # a bug, or Celery's soft time limit: record it, never leave "running"
        log.exception("installer crashed")
        return InstallStatus.FAILED, (f"The installer stopped unexpectedly ({type(error).__name__}: {error}). "
                                      "What to do: press Resume to continue from where it stopped; if it happens "
                                      "again, see the worker log."), "Failed."
    return InstallStatus.SUCCEEDED, "", installer.outcome()


def _tee(first: Callable, second: Optional[Callable]) -> Callable:
    if second is None:
        return first

    def both(state, states):
        second(state, states)
        first(state, states)
    return both


def _either(first: Callable, second: Optional[Callable]) -> Callable:
    if second is None:
        return first

    def either():
        wanted = second()
        return wanted if wanted != RUN else first()
    return either
