"""The install's log (`<install>/logs/install.log`): every command the installer runs, whole.

A progress message has room for one line and a Failure quotes one; the rest of pip's output
(which index it looked in, each retry, the resolver's explanation) is what a person needs
when that line is not enough, so every command is written here in full: a header with the
time and the command, each output line as it comes, and the exit code. Anything that looks
like a secret (a URL's user:password, a token= value, the word after --password) is masked
before it is written, in the command and in the output alike.
"""
import os
import re
import time
from pathlib import Path

from .runner import CommandRunner, Completed

ROTATE_BYTES = 20 * 1024 * 1024  # then the log moves to install.log.1 (one old log is kept)
MASK = "***"
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
_SECRET_WORD = r"[\w.-]*(?:secret|token|passw(?:or)?d|pwd|api[_-]?key|auth|credential|signature)[\w.-]*"
_SECRET_ASSIGNMENT = re.compile(rf"(?i)\b({_SECRET_WORD})=([^\s&'\"]+)")
_SECRET_FLAG = re.compile(rf"(?i)^--?{_SECRET_WORD}$")


def logged(run: CommandRunner, path: Path) -> CommandRunner:
    """`run`, with each command and its whole output appended to the log at `path`."""
    def run_logged(args, *, on_line=None, **options) -> Completed:
        with _open(path) as log:
            log.write(f"\n[{_now()}] $ {redact_command(args)}\n")
            streamed = []

            def line(text: str) -> None:
                streamed.append(True)
                log.write(redact(text) + "\n")
                if on_line:
                    on_line(text)
            try:
                done = run(args, on_line=line, **options)
            except BaseException as stopped:  # cancelled, timed out, or a callback failed
                log.write(f"[{_now()}] stopped early: {type(stopped).__name__} {redact(str(stopped))}\n")
                raise
            if not streamed and done.output.strip():  # a runner that only returns its output
                log.write(redact(done.output.rstrip()) + "\n")
            log.write(f"[{_now()}] exit code {done.code}\n")
        return done
    return run_logged


def note(path: Path, text: str) -> None:
    """A line of the installer's own in the log (a step it skipped, a leftover it ended)."""
    with _open(path) as log:
        log.write(f"[{_now()}] note: {redact(text)}\n")


def redact_command(args) -> str:
    words, hide_next = [], False
    for arg in map(str, args):
        words.append(MASK if hide_next else redact(arg))
        hide_next = bool(_SECRET_FLAG.match(arg))
    return " ".join(_quoted(word) for word in words)


def redact(text: str) -> str:
    return _SECRET_ASSIGNMENT.sub(rf"\1={MASK}", _URL_USERINFO.sub(rf"\1{MASK}@", text))


def _quoted(word: str) -> str:
    return f"'{word}'" if not word or re.search(r"[\s'\"]", word) else word


def _open(path: Path):
    """The log, appended to; a folder not made yet (a check before any install) gets none."""
    if not path.parent.parent.is_dir():
        return open(os.devnull, "w")
    path.parent.mkdir(exist_ok=True)
    if path.exists() and path.stat().st_size > ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    return open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # line-buffered: a kill keeps it


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
