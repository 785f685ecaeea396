"""Terminal output shared by `python -m workers.installer` and `manage.py install_comfyui`:
progress bars (redrawn in place on a terminal, one line every few seconds in a log), the plan,
a yes/no prompt, and Ctrl-C as "pause"."""
import signal
import sys
import time

from .pipeline import STEPS
from .progress import (CANCELLED, DONE, FAILED, PAUSE, PAUSED, RUN, RUNNING, SKIPPED, human_bytes,
                       human_seconds)

BAR_WIDTH = 24
_LABELS = {DONE: "done", SKIPPED: "skipped", FAILED: "FAILED", PAUSED: "paused", CANCELLED: "cancelled"}


class ConsoleReporter:
    def __init__(self, stream=None, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else 3.0
        self.clock = clock
        self._last = {}
        self._drawn = False

    def __call__(self, state, states) -> None:
        number = [name for name, _ in STEPS].index(state.name) + 1
        if state.status == RUNNING:
            self._progress(state, number)
        elif state.status in _LABELS:
            self._end_line()
            self._write(f"[{number}/{len(STEPS)}] {state.title}: {_LABELS[state.status]}"
                        f"{' - ' + state.message if state.message else ''}\n")

    def _progress(self, state, number: int) -> None:
        now = self.clock()
        if now - self._last.get(state.name, -1e9) < self.interval or not (state.progress or state.message):
            return
        self._last[state.name] = now
        line = f"[{number}/{len(STEPS)}] {state.title} {bar(state.progress)} {state.progress:3d}%{_bytes(state)}"
        if state.message:
            line += f"  {state.message[:60]}"
        if self.tty:
            self._write("\r" + line[:150].ljust(150))
            self._drawn = True
        else:
            self._write(line + "\n")

    def _end_line(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False

    def _write(self, text: str) -> None:
        if hasattr(self.stream, "ending"):  # Django's OutputWrapper adds a newline unless told not to
            self.stream.write(text, ending="")
        else:
            self.stream.write(text)
        self.stream.flush()


def bar(progress: int) -> str:
    filled = BAR_WIDTH * max(0, min(100, progress)) // 100
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


def _bytes(state) -> str:
    if not state.bytes_total:
        return ""
    text = f"  {human_bytes(state.bytes_done)} / {human_bytes(state.bytes_total)}"
    if state.speed:
        text += f"  {human_bytes(state.speed)}/s  ETA {human_seconds(state.eta)}"
    return text


def describe_plan(plan: dict) -> str:
    system, torch = plan["system"], plan["torch"]
    primary = system["primary"]
    lines = [f"Install folder: {plan['path']}",
             f"GPU: {primary['name'] if primary else 'none found'}"
             + (f" ({human_bytes(primary['vram_bytes'])} VRAM)" if primary and primary.get("vram_bytes") else "")
             + (f", driver {system['driver_version']}, CUDA {system['cuda_version']}" if system["driver_version"]
                else ""),
             f"PyTorch build: {torch['key']} - {torch['reason']}", "Will install:"]
    for item in plan["items"]:
        status = "already there" if item["present"] else f"{human_bytes(item['to_download'])} to download"
        lines.append(f"  - {item['name']}: {human_bytes(item['size'])} ({status})")
    if plan.get("gpus"):
        lines.append("One ComfyUI per GPU:")
        lines += [f"  - GPU {item['index']} ({item['name']}): port {item['port']}, backend {item['backend']}, "
                  + " ".join(f"{name}={value}" for name, value in item["env"].items()) for item in plan["gpus"]]
    lines.append(f"Disk: {human_bytes(plan['disk_needed'])} needed, {human_bytes(plan['disk_free'])} free; "
                 f"estimated time about {human_seconds(plan['estimate_seconds'])}")
    lines += [f"Note: {warning}" for warning in plan["warnings"]]
    return "\n".join(lines)


def confirm_on_terminal(stream=None, ask=input):
    """A `confirm` hook: shows the plan and asks before anything is downloaded."""
    stream = stream or sys.stdout

    def confirm(plan: dict) -> bool:
        stream.write(describe_plan(plan) + "\n")
        stream.flush()
        return ask("Install now? [y/N] ").strip().lower() in ("y", "yes")
    return confirm


class CtrlCPauses:
    """The first Ctrl-C asks the installer to pause at the next chunk (state kept, run again
    to resume); a second one interrupts at once."""

    def __init__(self):
        self.wanted = RUN
        self._previous = None

    def __call__(self) -> str:
        return self.wanted

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        if self.wanted == PAUSE:
            raise KeyboardInterrupt
        self.wanted = PAUSE
        sys.stderr.write("\nPausing after the current chunk (Ctrl-C again to stop at once)...\n")
