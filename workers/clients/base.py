"""The small interface every backend client implements (DESIGN.md, Backends).

Clients do HTTP only: they never touch the database. Services own state; tasks glue.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional


class BackendError(Exception):
    """A backend call failed. `retryable` says whether another try (or backend) may work:
    down, timeout, 5xx, missing model → retryable; the user's own bad input → permanent."""

    def __init__(self, message: str, *, retryable: bool, resend_safe: bool = False, outage: bool = False,
                 lacks: tuple = (), misconfigured: bool = False):
        super().__init__(message)
        self.message = message
        # The backend refused us for its own settings (key rejected, no permission, unknown
        # model): it did nothing, and it will refuse every job until someone changes them. It
        # is marked down at once (no hysteresis) with the message, and the job fails over.
        self.misconfigured = misconfigured
        retryable = retryable or misconfigured
        self.retryable = retryable
        # True when sending the same request again cannot run the job twice: the backend
        # dedupes it (ComfyUI prompt ids) or certainly did not act on it (429, 503, refused).
        self.resend_safe = resend_safe
        # True for transport failures (unreachable, timeout, 5xx, garbage, lost its queue): the
        # backend is not working. Only these (and probes) move its health; a job's own missing
        # model or node error never does.
        self.outage = outage
        # What the backend said it lacks ("vae/x.safetensors", "node Foo"): its inventory was stale.
        self.lacks = tuple(lacks)
        if misconfigured:
            self.outage, self.resend_safe = True, True  # not working; and nothing ran, nothing was billed

    def __reduce__(self):  # picklable (Celery's result and error handling pickle exceptions)
        return (_rebuild_error, (type(self), self.message, self.retryable, self.resend_safe, self.outage,
                                 self.lacks, self.misconfigured))


def _rebuild_error(cls, message, retryable, resend_safe, outage, lacks, misconfigured=False):
    error = cls.__new__(cls)
    BackendError.__init__(error, message, retryable=retryable, resend_safe=resend_safe, outage=outage,
                          lacks=lacks, misconfigured=misconfigured)
    return error


@dataclass
class RemoteOutput:
    """One output file of a finished remote job: either inline bytes or a reference the
    client knows how to download (ComfyUI /view parameters, a URL...)."""

    filename: str
    mime: str = "application/octet-stream"
    data: Optional[bytes] = None
    ref: dict = field(default_factory=dict)


@dataclass
class Progress:
    percent: int = 0
    running: bool = False
    position: Optional[int] = None  # while pending: how many prompts are ahead, the running one included
    next_poll: Optional[float] = None  # seconds until the next poll; None: the default
    maybe_billed: bool = False  # this poll's paid call was cut short: the provider may have run it
    preview: Optional[bytes] = None  # the latest live preview image (ComfyUI's binary frames)
    preview_mime: str = ""


@dataclass
class Done:
    outputs: list
    seconds: Optional[float] = None  # remote execution time, for billing


@dataclass
class Failed:
    error: str
    retryable: bool
    outage: bool = False  # as BackendError.outage
    lacks: tuple = ()  # as BackendError.lacks
    maybe_billed: bool = False  # as Progress.maybe_billed
    seconds: Optional[float] = None  # remote execution time the provider reports for the failed run
    misconfigured: bool = False  # as BackendError.misconfigured (retryable and outage are then True too)


@dataclass
class Health:
    ok: bool
    latency_ms: Optional[float] = None
    queue_depth: int = 0
    gpu: str = ""
    vram_total: Optional[int] = None
    detail: str = ""
    misconfigured: bool = False  # not ok because of its settings (as BackendError): down at once


ProgressCallback = Callable[[Progress], None]


class Client:
    """submit(spec) -> handle; poll(handle) -> Progress | Done | Failed; cancel; health.

    `for_backend(backend, url)` builds a client from a Backend row and settings; secrets come
    from settings there, never from the row or a task argument.
    """

    @classmethod
    def for_backend(cls, backend, url: str) -> "Client":
        raise NotImplementedError

    def submit(self, spec: dict) -> dict:
        raise NotImplementedError

    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        raise NotImplementedError

    def cancel(self, handle: dict) -> None:
        raise NotImplementedError

    def ran_seconds(self, handle: dict) -> Optional[float]:
        """The provider's record of how long an ended (or cancelled) run ran, which is what it
        bills for it; None when it keeps no such record or the run has not ended yet."""
        return None

    def health(self) -> Health:
        raise NotImplementedError

    def starts_paid_run(self, phase: str, handle: dict) -> bool:
        """Whether this call ("submit" with the spec, or "poll" with the handle) can start a run
        the provider bills for, with no way to find that run again if the caller dies during
        it (no idempotency key, no listing). Such a call left open by a crash is recorded as
        operator spend. ComfyUI is never: a resubmit finds its prompt id."""
        return False

    def inventory(self) -> Optional[dict]:
        """Model files per folder and node classes it has (requirements.inventory_from_object_info
        shape), or None when this kind of backend cannot be asked."""
        return None

    def download(self, output: RemoteOutput) -> bytes:
        if output.data is None:
            raise BackendError(f"No data for output {output.filename}", retryable=True)
        return output.data
