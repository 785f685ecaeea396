"""ComfyUI's Python environment: a venv, the chosen PyTorch build, then ComfyUI's requirements.

PyTorch is installed first, from where the build comes from (torchbuild.torch_source), and its
versions are then pinned as constraints while ComfyUI's requirements install: otherwise pip
may "upgrade" torch from PyPI and silently swap the GPU build for another one (the classic
wrong-build bug). For the same reason pip reads a filtered copy of ComfyUI's requirements
without torch, torchvision and torchaudio: ComfyUI lists all three, and pip would fetch the
one not installed yet (torchaudio) from PyPI, built for another torch. torchaudio is not
installed at all — ComfyUI runs without it.

Readiness is checked, not remembered: envcheck.py, run by the venv's python, imports torch and
torchvision and compares every requirement with what is installed. A whole environment costs
that one subprocess per run; a broken one is repaired in place — the torch packages
reinstalled when one of them does not import (a torchvision built for another torch raises
"operator torchvision::nms does not exist"), missing or mismatched requirements installed —
and a venv made for another build, or whose python no longer runs, is made again (pip would
consider the other build's torch "already satisfied" and keep it).
"""
import hashlib
import json
import os
import re
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

from .commandlog import note
from .errors import Failure
from .layout import Layout, write_if_changed, write_json_atomic
from .pipoutput import failure_cause, progress_message
from .runner import CommandRunner, Completed
from .torchbuild import TORCH_INDEX_SETTING, TorchBuild, TorchSource, torch_source

TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")  # kept out of ComfyUI's requirements
INSTALLED_WITH_TORCH = ("torch", "torchvision")  # torchaudio is optional: reinstalled only if present
MARKER = "comfy-hybrid-env.json"
CHECK_SCRIPT = Path(__file__).with_name("envcheck.py")
PIP_TIMEOUT = 3 * 3600  # a 3 GB wheel on a slow line
CHECK_TIMEOUT = 900  # the first import of a CUDA torch reads a few GB from a cold disk
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_FILE_OPTION = re.compile(r"^(\s*(?:-r|--requirement|-c|--constraint)(?:\s+|=))(\S+)(.*)$")

FREEZE = ("import json, importlib.metadata as m\n"
          "def version(name):\n"
          "    try:\n"
          "        return m.version(name)\n"
          "    except m.PackageNotFoundError:\n"
          "        return None\n"
          "print(json.dumps({p: version(p) for p in %r}))" % (TORCH_PACKAGES,))


@dataclass
class Health:
    """What the readiness check found in the venv (envcheck.py's report)."""

    requirements_sha256: str
    venv: bool  # a venv made for this build, whose python runs: repaired in place
    report: dict = field(default_factory=dict)
    flavour: str = ""  # a torch without the build's CUDA/ROCm
    remake: str = ""  # why the venv is made again (when `venv` is False and one exists)

    @property
    def broken_torch(self) -> dict:
        broken = dict(self.report.get("broken") or {})
        return {**broken, "torch": self.flavour} if self.flavour and "torch" not in broken else broken

    @property
    def to_install(self) -> list:
        """Requirement lines to install: missing, or at a version their specifier refuses."""
        mismatched = [entry["requirement"] for entry in self.report.get("mismatched") or []]
        return list(self.report.get("missing") or []) + mismatched

    @property
    def damaged(self) -> list:
        """name==version of requirements whose files are gone although pip thinks them installed."""
        return [f"{entry['name']}=={entry['installed']}" for entry in self.report.get("damaged") or []]

    @property
    def ready(self) -> bool:
        return self.venv and not self.broken_torch and not self.to_install and not self.damaged

    def repairs(self) -> list:
        """What a repair will do, as phrases a person reads ("reinstall torchvision (...)")."""
        if not self.venv:
            return [f"make the venv again ({self.remake})"] if self.remake else []
        found = [f"reinstall {name} ({why})" for name, why in self.broken_torch.items()]
        found += [f"install {line}" for line in self.report.get("missing") or []]
        found += [f"install {entry['requirement']} ({entry['installed']} is installed)"
                  for entry in self.report.get("mismatched") or []]
        found += [f"reinstall {entry['name']} {entry['installed']} ({entry['file']} is missing)"
                  for entry in self.report.get("damaged") or []]
        return found


@dataclass
class Environment:
    layout: Layout
    build: TorchBuild
    base_python: str
    run: CommandRunner
    say: Callable[[float, str], None]  # (progress 0-100, message)
    tick: Callable[[], None]  # called while a command runs; may raise Cancelled
    checkpoint: Callable[[], None] = lambda: None  # between commands; may raise Paused/Cancelled
    environ: Mapping = field(default_factory=lambda: os.environ)
    # Requirements the release needs but does not list (the manifest's `extra_requirements`:
    # ComfyUI 0.8.0 imports `requests` at start-up without naming it).
    extra: tuple = ()
    _source: Optional[TorchSource] = field(default=None, init=False, repr=False)

    @property
    def marker_path(self) -> Path:
        return self.layout.venv_dir / MARKER

    @property
    def filtered_requirements(self) -> Path:
        return self.layout.venv_dir / "comfyui-requirements.txt"

    @property
    def constraints(self) -> Path:
        return self.layout.venv_dir / "torch-constraints.txt"

    # Readiness -----------------------------------------------------------------------------
    def health(self, requirements: Path, known: Optional[Health] = None) -> Health:
        """The venv's state; `known` (found earlier in this run) stands while the requirements
        file is the same, so a run checks a whole venv once."""
        digest = hashlib.sha256((_sha256(requirements) + "\n".join(self.extra)).encode()).hexdigest()
        if known is not None and known.requirements_sha256 == digest:
            return known
        built_for = self._marker().get("build")
        if not self.layout.python.exists():
            return Health(digest, venv=False)
        if built_for != self.build.key:
            return Health(digest, venv=False, remake=f"it was made for {built_for or 'an unknown build'}, "
                                                     f"not {self.build.key}")
        return self._checked(requirements, digest)

    def _checked(self, requirements: Path, digest: str) -> Health:
        args = [str(self.layout.python), "-I", str(CHECK_SCRIPT)]
        if requirements.exists():
            args.append(str(self._filter(requirements)))
        done = self.run(args, timeout=CHECK_TIMEOUT, tick=self.tick)
        report = _json_line(done.output)
        if report is None and str(CHECK_SCRIPT.name) in done.output:
            raise Failure(f"the check of {self.layout.venv_dir} failed: {failure_cause(done.output.splitlines())}",
                          f"read {self.layout.install_log}; delete {self.layout.venv_dir} and run the installer "
                          "again to make it anew")
        if report is None:  # its python does not start (the base Python was upgraded or removed)
            return Health(digest, venv=False, remake=f"its python does not run: "
                                                     f"{failure_cause(done.output.splitlines())}")
        return Health(digest, venv=True, report=report, flavour=self._flavour_problem(report.get("device")))

    def _flavour_problem(self, device: Optional[dict]) -> str:
        flavor = self.build.flavor
        if device and ((flavor == "cuda" and not device.get("cuda")) or (flavor == "rocm" and not device.get("hip"))):
            return f"PyTorch {device.get('torch')} has no {flavor.upper()} support"
        return ""

    def describe(self, health: Health) -> dict:
        """For the plan: whether the venv is whole, what a repair will do, where PyTorch comes from."""
        source = self.torch_source() if not health.venv or health.broken_torch else None
        return {"ready": health.ready, "repairs": health.repairs(), "torch_from": source.origin if source else None,
                "notes": self._notes(health, source)}

    def _notes(self, health: Health, source: Optional[TorchSource]) -> list:
        notes = []
        if health.venv and not health.ready:
            notes.append(f"ComfyUI's environment will be repaired: {'; '.join(health.repairs())}")
        elif health.remake:
            notes.append(f"the venv will be made again: {health.remake}")
        if source and source.kind == "mirror":
            notes.append(f"PyTorch ({self.build.key}) will be installed from {source.origin}")
        if source and source.kind == "pip":
            safety = f"; the check after the install still refuses a build without {self.build.flavor.upper()} " \
                     "support" if self.build.flavor in ("cuda", "rocm") else ""
            notes.append(f"PyTorch ({self.build.key}) will be installed from {source.origin}, not "
                         f"{self.build.index_url}{safety}")
        return notes

    def torch_source(self) -> TorchSource:
        if self._source is None:
            self._source = torch_source(self.build, self.environ, self._pip_config)
        return self._source

    def _pip_config(self) -> str:
        """`pip config list` of the base interpreter (the venv may not exist yet); a Python
        without pip has no pip configuration to honour."""
        done = self.run([self.base_python, "-m", "pip", "config", "list"], timeout=120, tick=self.tick)
        return done.output if done.code == 0 else ""

    # Setting up and repairing ----------------------------------------------------------------
    def set_up(self, requirements: Path, known: Optional[Health] = None) -> dict:
        """Make the venv whole; returns what the final check found about torch and the GPU."""
        health = self.health(requirements, known)
        python = str(self.layout.python)
        if not health.venv:
            self._fresh_venv()
        torch_changes = not health.venv or bool(health.broken_torch)
        if torch_changes:
            self._install_torch(python, health)
        constraints = self._pin_torch(python, None if torch_changes else health.report.get("versions"))
        if not health.venv:
            self._pip(70, "Installing ComfyUI's requirements",
                      [python, "-m", "pip", "install", "-r", str(self._filter(requirements)), "-c", str(constraints)])
        elif health.to_install:
            self._pip(70, f"Installing {len(health.to_install)} missing or outdated requirement(s) of ComfyUI",
                      [python, "-m", "pip", "install", *health.to_install, "-c", str(constraints)])
        if health.venv and health.damaged:  # metadata says installed, so only a forced reinstall puts files back
            self._pip(80, f"Reinstalling {len(health.damaged)} damaged requirement(s) of ComfyUI",
                      [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", *health.damaged,
                       "-c", str(constraints)])
        self.say(95, "Checking that PyTorch and ComfyUI's requirements work")
        return self._whole(self.health(requirements))

    def _fresh_venv(self) -> None:
        shutil.rmtree(self.layout.venv_dir, ignore_errors=True)
        self._pip(0, "Creating the virtual environment", [self.base_python, "-m", "venv", str(self.layout.venv_dir)],
                  fix=f"make sure {self.base_python} can make a venv (Debian/Ubuntu: apt install python3-venv) or "
                      f"pass --python with another Python 3.10+; its whole output is in {self.layout.install_log}")
        done = self._command(10, "Updating pip", [str(self.layout.python), "-m", "pip", "install", "--upgrade", "pip"])
        if done.code != 0:  # offline, or an index without pip on it: the venv's own pip will do
            note(self.layout.install_log, f"pip could not be updated ({done.cause}); going on with the pip the venv "
                                          "came with")
            self.say(10, "pip could not be updated; going on with the venv's own pip")
        write_json_atomic(self.marker_path, {"build": self.build.key})

    def _install_torch(self, python: str, health: Health) -> None:
        source = self.torch_source()
        present = health.report.get("versions") or {}
        packages = list(INSTALLED_WITH_TORCH) + (["torchaudio"] if present.get("torchaudio") else [])
        index = ["--index-url", source.index_url] if source.index_url else []
        fix = self._torch_fix(source)
        if health.venv:  # broken: "already satisfied" would keep it, so replace them as a matched set
            self._pip(15, f"Reinstalling PyTorch ({self.build.key}): {', '.join(packages)}",
                      [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", *packages, *index], fix=fix)
        self._pip(20, f"Installing PyTorch ({self.build.key})", [python, "-m", "pip", "install", *packages, *index],
                  fix=fix)

    def _torch_fix(self, source: TorchSource) -> str:
        other = f"point {TORCH_INDEX_SETTING} at a mirror of the PyTorch index" if source.kind != "mirror" \
            else f"check {TORCH_INDEX_SETTING}"
        return (f"check that {source.origin} can be reached and that the disk has room, or {other}; pip's whole "
                f"output is in {self.layout.install_log}; then run the installer again (finished steps are "
                "skipped). A build for another GPU: --torch")

    def _pin_torch(self, python: str, versions: Optional[dict] = None) -> Path:
        """The installed torch packages as constraints; `versions` are the check's when torch was left alone."""
        versions = versions or self._json_output(python, FREEZE, "list the installed PyTorch packages")
        self.constraints.write_text("".join(f"{name}=={version}\n" for name, version in versions.items() if version))
        return self.constraints

    def _whole(self, health: Health) -> dict:
        device = health.report.get("device") or {}
        if health.flavour:
            source = self.torch_source()
            raise Failure(f"PyTorch {device.get('torch')} was installed without {self.build.flavor.upper()} support",
                          f"delete {self.layout.venv_dir} and run the installer again; if it persists, install with "
                          f"--torch {self.build.key} from {self.build.index_url}"
                          + (f" (your pip configuration supplied this one: set {TORCH_INDEX_SETTING} to a mirror "
                             "of the PyTorch index)" if source.kind == "pip" else ""))
        if not health.ready:
            raise Failure(f"{self.layout.venv_dir} is still incomplete after installing: {'; '.join(health.repairs())}",
                          f"read {self.layout.install_log} for pip's whole output; delete {self.layout.venv_dir} and "
                          "run the installer again to make it anew")
        origin = self._source.origin if self._source else self._marker().get("torch_from")  # torch kept as it was
        write_json_atomic(self.marker_path, {"build": self.build.key, "torch": device, "torch_from": origin})
        return device

    def _filter(self, requirements: Path) -> Path:
        """ComfyUI's requirements without the torch packages (see the module doc)."""
        lines = [_filtered_line(line, requirements.parent) for line in requirements.read_text().splitlines()]
        if self.extra:
            lines += ["# needed by this release but not in its requirements (the manifest's extra_requirements)",
                      *self.extra]
        write_if_changed(self.filtered_requirements, "".join(line + "\n" for line in lines))
        return self.filtered_requirements

    # Commands ------------------------------------------------------------------------------
    def _command(self, progress: float, message: str, command: list) -> "Ran":
        """Run one command, its output shortened into progress messages; never raises on exit."""
        self.checkpoint()
        self.say(progress, message)
        host = urlsplit(command[command.index("--index-url") + 1]).hostname if "--index-url" in command else ""
        lines = deque(maxlen=2000)

        def on_line(line: str) -> None:
            lines.append(line)
            shown = progress_message(line, host or "")
            if shown:
                self.say(progress, shown)
        done = self.run(command, timeout=PIP_TIMEOUT, on_line=on_line, tick=self.tick)
        return Ran(done, failure_cause(list(lines) or done.output.splitlines(), host or ""))

    def _pip(self, progress: float, message: str, command: list, fix: str = "") -> None:
        done = self._command(progress, message, command)
        if done.code == 0:
            return
        if not fix:
            first = "check the network or proxy (pip reads HTTPS_PROXY and its configuration)" \
                if done.cause.startswith("could not reach") else "check the free disk space"
            fix = (f"{first}; pip's whole output is in {self.layout.install_log}; then run the installer again "
                   "(finished steps are skipped)")
        raise Failure(f"{message} failed (exit code {done.code}): {done.cause}", fix)

    def _json_output(self, python: str, script: str, what: str) -> dict:
        done = self.run([python, "-c", script], timeout=300, tick=self.tick)
        found = _json_line(done.output)
        if done.code != 0 or found is None:
            raise Failure(f"could not {what} in {self.layout.venv_dir}: {failure_cause(done.output.splitlines())}",
                          f"read {self.layout.install_log}; delete {self.layout.venv_dir} and run the installer again")
        return found

    def _marker(self) -> dict:
        try:
            return json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}


@dataclass
class Ran:
    """A command's result and the line that says why it failed (pipoutput.failure_cause)."""

    completed: Completed
    cause: str

    @property
    def code(self) -> int:
        return self.completed.code


def _filtered_line(line: str, base: Path) -> str:
    name = _NAME.match(line)
    if name and re.sub(r"[-_.]+", "-", name.group(1)).lower() in TORCH_PACKAGES:
        return f"# {line.strip()}  (left out: the PyTorch build provides it; torchaudio is optional)"
    option = _FILE_OPTION.match(line)
    if option and not re.match(r"^(/|[A-Za-z]:|\w+://)", option.group(2)):  # relative to the original's folder
        return option.group(1) + str(base / option.group(2)) + option.group(3)
    return line


def _json_line(output: str) -> Optional[dict]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
