"""The small interface every backend client implements (DESIGN.md, Backends).

Clients do HTTP only: they never touch the database. Services own state; tasks glue.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional


class BackendError(Exception):
    """A backend call failed. `retryable` says whether another try (or backend) may work:
    down, timeout, 5xx, missing model → retryable; the user's own bad input → permanent."""

    def __init__(self, message: str, *, retryable: bool, resend_safe: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        # True when sending the same request again cannot run the job twice: the backend
        # dedupes it (ComfyUI prompt ids) or certainly did not act on it (429, 503, refused).
        self.resend_safe = resend_safe


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
    position: Optional[int] = None  # place in the remote queue while pending
    next_poll: Optional[float] = None  # seconds until the next poll; None: the default


@dataclass
class Done:
    outputs: list
    seconds: Optional[float] = None  # remote execution time, for billing


@dataclass
class Failed:
    error: str
    retryable: bool


@dataclass
class Health:
    ok: bool
    latency_ms: Optional[float] = None
    queue_depth: int = 0
    gpu: str = ""
    vram_total: Optional[int] = None
    detail: str = ""


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

    def health(self) -> Health:
        raise NotImplementedError

    def download(self, output: RemoteOutput) -> bytes:
        if output.data is None:
            raise BackendError(f"No data for output {output.filename}", retryable=True)
        return output.data
