"""Progress of each step (status, 0-100, message, bytes, speed, ETA) and the control flags.

Every front (CLI, Celery task, bootstrap scripts) receives the same `StepState` objects
through one callback; how often it shows or stores them is its own business (the database
writer throttles, the terminal redraws).
"""
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .errors import Cancelled, Paused

# Status of one step.
PENDING, RUNNING, DONE, SKIPPED, FAILED = "pending", "running", "done", "skipped", "failed"
PAUSED, CANCELLED = "paused", "cancelled"
FINISHED = (DONE, SKIPPED)

# Answers of a control callable.
RUN, PAUSE, CANCEL = "run", "pause", "cancel"

Control = Callable[[], str]


def no_control() -> str:
    return RUN


def check_control(control: Control) -> None:
    """Raise Paused/Cancelled when asked to; called between chunks, never mid-write."""
    wanted = control()
    if wanted == PAUSE:
        raise Paused()
    if wanted == CANCEL:
        raise Cancelled()


@dataclass
class StepState:
    name: str
    title: str
    status: str = PENDING
    progress: int = 0
    message: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    speed: float = 0.0  # bytes per second, averaged over the last few seconds
    eta: Optional[float] = None  # seconds
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["speed"] = round(self.speed, 1)
        data["eta"] = None if self.eta is None else round(self.eta, 1)
        return data


Sink = Callable[[StepState], None]


@dataclass
class _Rate:
    """Bytes per second over a sliding window: steadier than per-chunk, quicker than overall."""

    window: float = 5.0
    samples: deque = field(default_factory=deque)

    def add(self, now: float, done: int) -> float:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 and b1 >= b0 else 0.0


class StepReporter:
    """Updates one StepState and hands it to the sink on every change."""

    def __init__(self, state: StepState, sink: Sink, clock: Callable[[], float] = time.monotonic):
        self.state = state
        self.sink = sink
        self.clock = clock
        self._rate = _Rate()
        self._transferred = 0  # bytes fetched while this step ran: what the speed is made of

    def start(self, message: str = "") -> None:
        self.state.status, self.state.started_at = RUNNING, self.clock()
        self._emit(message=message)

    def update(self, *, progress: Optional[float] = None, message: Optional[str] = None,
               bytes_done: Optional[int] = None, bytes_total: Optional[int] = None) -> None:
        """A message of None keeps the one shown. Bytes given here were transferred just now."""
        self._bytes(bytes_done, bytes_total, transferred=True)
        if progress is not None:
            self.state.progress = max(0, min(100, int(progress)))
        self._emit(message=message)

    def skip_to(self, bytes_done: int, *, bytes_total: Optional[int] = None, message: Optional[str] = None) -> None:
        """Move the byte count over bytes not transferred now (what a resume finds on disk, a
        model already in place): the bar moves, but speed and ETA stay those of real transfers."""
        self._bytes(bytes_done, bytes_total, transferred=False)
        self._emit(message=message)

    def finish(self, status: str, message: str = "") -> None:
        self.state.status, self.state.finished_at = status, self.clock()
        self.state.speed, self.state.eta = 0.0, None
        if status in FINISHED:
            self.state.progress = 100
        self._emit(message=message)

    def _bytes(self, done: Optional[int], total: Optional[int], transferred: bool) -> None:
        state = self.state
        if total is not None:
            state.bytes_total = total
        if done is None:
            return
        if transferred:  # a count that went back (a re-fetch from zero) transferred nothing yet
            self._transferred += max(0, done - state.bytes_done)
        state.bytes_done = done
        state.speed = self._rate.add(self.clock(), self._transferred)
        remaining = state.bytes_total - done
        state.eta = remaining / state.speed if state.speed > 0 and remaining > 0 else None
        if state.bytes_total:
            state.progress = int(100 * done / state.bytes_total)

    def _emit(self, message: Optional[str]) -> None:
        if message is not None:
            self.state.message = message
        self.sink(self.state)


class FileBar:
    """One file's download as a stretch of its step's bar: the file's bytes shifted by `offset`,
    against the step's `total` (several files, one bar) or, without one, the file's own size.
    Has the reporting methods of StepReporter that the Downloader uses."""

    def __init__(self, reporter: StepReporter, offset: int = 0, total: Optional[int] = None):
        self.reporter, self.offset, self.total = reporter, offset, total

    def update(self, *, message: Optional[str] = None, bytes_done: Optional[int] = None,
               bytes_total: Optional[int] = None) -> None:
        self.reporter.update(message=message, bytes_done=self._shifted(bytes_done),
                             bytes_total=self.total or bytes_total)

    def skip_to(self, bytes_done: int, *, bytes_total: Optional[int] = None, message: Optional[str] = None) -> None:
        self.reporter.skip_to(self._shifted(bytes_done), bytes_total=self.total or bytes_total, message=message)

    def _shifted(self, done: Optional[int]) -> Optional[int]:
        return None if done is None else self.offset + done


class Quiet:
    """Reports to no one: a Downloader used without a front (bench, scripts)."""

    def update(self, **changes) -> None:
        pass

    def skip_to(self, bytes_done: int, **changes) -> None:
        pass


def human_bytes(count: Optional[float]) -> str:
    """Binary units with the labels Django's filesizeformat uses, so the CLI and the page agree."""
    if count is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def human_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
