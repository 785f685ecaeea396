"""ComfyUI's Python environment: a venv, the chosen PyTorch build, then ComfyUI's requirements.

PyTorch is installed first, from the index of the chosen build, and its versions are then
pinned as constraints while ComfyUI's requirements install: otherwise pip may "upgrade"
torch from PyPI and silently swap the GPU build for another one (the classic wrong-build
bug). A marker records what was installed, so a re-run with the same build and
requirements does nothing; a different build gets a fresh venv.
"""
import hashlib
import json
import shutil
from dataclasses import dataclass
from typing import Callable

from .errors import Failure
from .layout import Layout, write_json_atomic
from .runner import CommandRunner
from .torchbuild import TorchBuild

TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
MARKER = "comfy-hybrid-env.json"
PIP_TIMEOUT = 3 * 3600  # a 3 GB wheel on a slow line

FREEZE = ("import json, importlib.metadata as m\n"
          "print(json.dumps({p: m.version(p) for p in %r}))" % (TORCH_PACKAGES,))
TORCH_CHECK = ("import json, torch\n"
               "mps = getattr(torch.backends, 'mps', None)\n"
               "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
               "  'hip': getattr(torch.version, 'hip', None), 'gpu': torch.cuda.is_available()\n"
               "  or bool(mps and mps.is_available()) or bool(getattr(torch, 'xpu', None)\n"
               "  and torch.xpu.is_available())}))")


@dataclass
class Environment:
    layout: Layout
    build: TorchBuild
    base_python: str
    run: CommandRunner
    say: Callable[[float, str], None]  # (progress 0-100, message)
    tick: Callable[[], None]  # called while a command runs; may raise Cancelled
    checkpoint: Callable[[], None] = lambda: None  # between commands; may raise Paused/Cancelled

    @property
    def marker_path(self):
        return self.layout.venv_dir / MARKER

    def wanted(self, requirements) -> dict:
        digest = hashlib.sha256(requirements.read_bytes()).hexdigest() if requirements.exists() else ""
        return {"build": self.build.key, "index_url": self.build.index_url, "requirements_sha256": digest}

    def _marker(self) -> dict:
        try:
            return json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}

    def is_ready(self, requirements) -> bool:
        marker, wanted = self._marker(), self.wanted(requirements)
        return self.layout.python.exists() and all(marker.get(k) == v for k, v in wanted.items())

    def set_up(self, requirements) -> dict:
        python = str(self.layout.python)
        marker = self._fresh_venv()
        if not marker.get("torch_installed"):
            where = self.build.index_url or "PyPI"
            self._pip(15, f"Installing PyTorch ({self.build.key})", self._torch_command(python),
                      fix=f"check that {where} can be reached and that the disk has room, then run the installer "
                          "again (finished steps are skipped); a build for another GPU: --torch")
            write_json_atomic(self.marker_path, {**marker, "torch_installed": True})
        constraints = self._pin_torch(python)
        self._pip(70, "Installing ComfyUI's requirements",
                  [python, "-m", "pip", "install", "-r", str(requirements), "-c", str(constraints)])
        found = self._check_torch(python)
        write_json_atomic(self.marker_path, {**self.wanted(requirements), "torch_installed": True, "torch": found})
        return found

    def _fresh_venv(self) -> dict:
        """The venv to install into, recreated when it was made for another PyTorch build:
        pip would consider the other build's torch "already satisfied" and keep it."""
        marker = self._marker()
        if marker.get("build") == self.build.key and self.layout.python.exists():
            return marker
        shutil.rmtree(self.layout.venv_dir, ignore_errors=True)
        self._pip(0, "Creating the virtual environment", [self.base_python, "-m", "venv", str(self.layout.venv_dir)])
        self._pip(10, "Updating pip", [str(self.layout.python), "-m", "pip", "install", "--upgrade", "pip"])
        marker = {"build": self.build.key, "index_url": self.build.index_url}
        write_json_atomic(self.marker_path, marker)
        return marker

    def _torch_command(self, python: str) -> list:
        command = [python, "-m", "pip", "install", *TORCH_PACKAGES]
        return command + (["--index-url", self.build.index_url] if self.build.index_url else [])

    def _pin_torch(self, python: str):
        versions = self._json_output(python, FREEZE, "list the installed PyTorch packages")
        path = self.layout.venv_dir / "torch-constraints.txt"
        path.write_text("".join(f"{name}=={version}\n" for name, version in versions.items()))
        return path

    def _check_torch(self, python: str) -> dict:
        self.say(95, "Checking that PyTorch works")
        found = self._json_output(python, TORCH_CHECK, "import torch")
        flavor = self.build.flavor
        if (flavor == "cuda" and not found.get("cuda")) or (flavor == "rocm" and not found.get("hip")):
            raise Failure(f"PyTorch {found.get('torch')} was installed without {flavor.upper()} support",
                          f"delete {self.layout.venv_dir} and run the installer again; if it persists, "
                          f"install with --torch {self.build.key} from {self.build.index_url}")
        return found

    def _pip(self, progress: float, message: str, command: list, fix: str = "") -> None:
        self.checkpoint()
        self.say(progress, message)
        done = self.run(command, timeout=PIP_TIMEOUT, on_line=lambda line: self.say(progress, _short(line)),
                        tick=self.tick)
        if done.code != 0:
            raise Failure(f"{message} failed (exit code {done.code}): {_last_line(done.output)}",
                          fix or "check the network and the free disk space (pip's last line is quoted above), "
                                 "then run the installer again; finished steps are skipped")

    def _json_output(self, python: str, script: str, what: str) -> dict:
        done = self.run([python, "-c", script], timeout=300, tick=self.tick)
        lines = [line for line in done.output.splitlines() if line.startswith("{")]
        if done.code != 0 or not lines:
            raise Failure(f"could not {what} in {self.layout.venv_dir}: {_last_line(done.output)}",
                          f"delete {self.layout.venv_dir} and run the installer again")
        return json.loads(lines[-1])


def _short(line: str) -> str:
    return line.strip()[:200]


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
