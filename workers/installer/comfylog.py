"""What ComfyUI printed: the part of its log one start wrote, and the line that names why it failed.

ComfyUI logs with the format "%(message)s" (app/logger.py), so a traceback reaches the log as
Python prints it. Its last line is the exception ("ModuleNotFoundError: No module named
'requests'"), which says more than the log's tail: after a crash that tail is often systemd's
"Failed with result 'exit-code'" or a custom node's later chatter.
"""
import re
from pathlib import Path

TRACEBACK = "Traceback (most recent call last):"
TAIL_LINES = 8
LINE_LIMIT = 300
_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def size(path: Path) -> int:
    """Where the next start's output begins (the log is appended to)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def first_error(text: str) -> str:
    """The last line of the first traceback (its exception), or "" when there is none."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.strip() == TRACEBACK:
            return next((after.strip()[:LINE_LIMIT] for after in lines[number + 1:]
                         if after.strip() and not after[0].isspace()), "")
    return ""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = [line.strip()[:LINE_LIMIT] for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def quote_error(text: str) -> str:
    """What to show for a failed start: the first traceback's exception, else the last lines."""
    return first_error(text) or tail(text)


def missing_module(error: str) -> str:
    """'requests' for "ModuleNotFoundError: No module named 'requests.adapters'", else ""."""
    found = _MISSING_MODULE.search(error)
    return found.group(1).split(".")[0] if found else ""


def fix_for(error: str, python: str, where: str) -> str:
    """What a person does about `error`; `where` says where the whole output is."""
    module = missing_module(error)
    if module:
        return (f"a Python package is missing from ComfyUI's environment: install the one that provides "
                f"'{module}' with `{python} -m pip install <package>` (for a custom node, its requirements.txt), "
                f"or remove the custom node that needs it, then run the installer again; {where}")
    return (f"{where}; fix what it says (often a GPU driver, a missing package or a custom node), then run the "
            "installer again")
