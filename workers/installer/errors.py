"""What can stop an install, each carrying enough to tell the user what to do next.

`Failure` is raised by the building blocks (downloader, extractor, ...), which do not know
which step they serve; the pipeline turns it into `InstallError`, which names the step.
`Paused` and `Cancelled` are not errors: they are the cooperative answers to a control
request, raised between chunks once everything needed to resume is on disk.
"""


class Failure(Exception):
    """A building block failed: the cause and what the user can do about it."""

    def __init__(self, cause: str, fix: str):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix


class InstallError(Exception):
    """A step failed. `str()` reads as one sentence a user can act on."""

    def __init__(self, step: str, cause: str, fix: str):
        super().__init__(f"Step '{step}' failed: {cause}. What to do: {fix}")
        self.step = step
        self.cause = cause
        self.fix = fix


class Paused(Exception):
    """Stopped on request; partial downloads and their state are kept for a resume."""


class Cancelled(Exception):
    """Stopped on request; nothing half-done was moved into place."""


class Superseded(Cancelled):
    """Another run of the same install took over (a newer dispatch): stop quietly."""
