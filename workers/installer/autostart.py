"""Start scripts, service registration and desktop shortcuts, per platform.

* Linux: a systemd *user* unit (~/.config/systemd/user), enabled; no root needed. It starts
  with the user's session (`loginctl enable-linger` makes it start at boot). Run as root (or
  with --system-service), a *system* unit (/etc/systemd/system) that runs as the folder's owner.
* macOS: a launchd agent (~/Library/LaunchAgents), loaded with `launchctl bootstrap`.
* Windows: an NSSM service when `nssm` is on PATH (needs an elevated shell), otherwise a
  scheduled task at logon that runs the PowerShell start script.
Shortcuts open the ComfyUI page: a .desktop entry, a .webloc, or a .url file on the Desktop.
Every name is the install's own (`ServiceNames`): one global name let a second install
silently repoint the first one's service.
The files are rendered by servicefiles.py (pure: tests read its output); `register` writes them
and runs the commands.
"""
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import Failure
from .layout import Layout, write_if_changed
from .runner import CommandRunner
from .servicefiles import (nssm_commands, render_desktop_entry, render_launchd_plist, render_start_ps1,  # noqa: F401 (tests read them here)
                           render_start_sh, render_systemd_unit, render_url_shortcut, render_webloc, schtasks_command)

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
OWN_FLAGS = ("--listen", "--port", "--preview-method", "--cpu")  # what Launch.comfy_args sets


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _resolved(path):
    """The folder as the OS resolves it (links followed; a PureWindowsPath in tests stays as written)."""
    return path.resolve() if isinstance(path, Path) else path


@dataclass(frozen=True)
class ServiceNames:
    """The names of one install's service and shortcuts: a readable slug of the folder name
    plus a short hash of its resolved path (~/comfyui: comfyui-3f9a1c), so two folders never
    share a name and the name still says which folder it runs."""

    slug: str
    digest: str
    instance: str = ""  # "" for the install's own ComfyUI; "gpu1", "gpu1-worker": one more service of it

    @classmethod
    def of(cls, layout: Layout, instance: str = "") -> "ServiceNames":
        folder = _resolved(layout.root)
        key = str(folder).lower() if layout.os_name == "windows" else str(folder)  # NTFS ignores case
        slug = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-")[:24].strip("-") or "comfyui"
        return cls(slug, hashlib.sha256(key.encode()).hexdigest()[:6], instance)

    @property
    def install_id(self) -> str:
        return f"{self.slug}-{self.digest}" + (f"-{self.instance}" if self.instance else "")

    @property
    def unit(self) -> str:
        return f"comfy-hybrid-comfyui-{self.install_id}.service"

    @property
    def desktop(self) -> str:
        return f"comfy-hybrid-comfyui-{self.install_id}.desktop"

    @property
    def launchd_label(self) -> str:
        return f"org.comfyhybrid.comfyui.{self.install_id}"

    @property
    def windows(self) -> str:
        return f"ComfyHybridComfyUI-{self.install_id}"

    @property
    def title(self) -> str:
        return f"ComfyUI ({self.install_id})"


def instance_path(path: Path, instance: str) -> Path:
    """logs/comfyui.log -> logs/comfyui-gpu1.log: each service of an install keeps its own files."""
    return path.with_name(f"{path.stem}-{instance}{path.suffix}") if instance else path


@dataclass(frozen=True)
class Launch:
    """How to run ComfyUI: the same command in every script, unit and plist. One ComfyUI per
    GPU (gpus.py) is one Launch each: `instance` ("gpu1") names its service, log, pid file and
    start script ("" keeps the install's own names), `env` pins it to its GPU."""

    layout: Layout
    host: str
    port: int
    cpu_only: bool  # ComfyUI assumes CUDA unless told --cpu
    instance: str = ""
    env: tuple = ()  # (name, value) pairs: the vendor's visible-devices variable, set before Python starts
    shortcuts: bool = True  # the install's own ComfyUI gets the desktop shortcut, not each GPU's

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def comfy_args(self) -> list:
        # --preview-method auto: samplers stream preview frames (ComfyUI's default is none),
        # which the job page shows live while a job runs.
        return (["--listen", self.host, "--port", str(self.port), "--preview-method", "auto"]
                + (["--cpu"] if self.cpu_only else []))

    @property
    def main(self) -> str:
        """By its absolute path everywhere: ComfyUI's /system_stats argv then names this install."""
        return str(self.layout.comfy_dir / "main.py")

    @property
    def argv(self) -> list:
        return [str(self.layout.python), self.main, *self.comfy_args]

    @property
    def names(self) -> ServiceNames:
        return ServiceNames.of(self.layout, self.instance)

    @property
    def workdir(self) -> Path:
        return self.layout.comfy_dir

    @property
    def log_file(self) -> Path:
        return instance_path(self.layout.log_file, self.instance)

    @property
    def pid_file(self) -> Path:
        return instance_path(self.layout.pid_file, self.instance)

    @property
    def start_script(self) -> Path:
        return instance_path(self.layout.start_script, self.instance)

    @property
    def description(self) -> str:
        return f"ComfyUI {self.names.install_id} (installed by Comfy Hybrid)"

    @property
    def script_header(self) -> tuple:
        """The start script's comment lines."""
        here = ".\\" if self.layout.os_name == "windows" else "./"
        return ("Starts ComfyUI as installed by Comfy Hybrid (deploy/INSTALLER.md).",
                f"Extra arguments are passed to ComfyUI, e.g. {here}{self.start_script.name} --lowvram")


@dataclass(frozen=True)
class Scope:
    """Where a systemd unit lives and who runs it. A user unit starts with the user's own
    service manager, where network-online.target does not exist; a system unit starts at boot,
    after the network, as `user`."""

    system: bool
    unit_dir: Path
    user: str = ""

    @property
    def name(self) -> str:
        return "system" if self.system else "user"

    @property
    def flags(self) -> list:
        """For systemctl and journalctl: the user manager needs --user, the system one nothing."""
        return [] if self.system else ["--user"]


def user_scope(home: Path) -> Scope:
    return Scope(False, home / ".config" / "systemd" / "user")


def system_scope(unit_dir: Path, root: Path, as_root: bool) -> Scope:
    if not as_root:
        raise Failure(f"a system service (--system-service) is written to {unit_dir}, which needs root",
                      "run the installer as root (sudo), or without --system-service for a user service")
    return Scope(True, unit_dir, owner_of(root))


def owner_of(folder: Path) -> str:
    """Who a system unit runs ComfyUI as: the install folder's owner (systemd takes a uid too)."""
    uid = folder.stat().st_uid
    try:
        import pwd  # POSIX only, like system units

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


@dataclass
class Registration:
    manager: str = ""  # systemd | launchd | nssm | schtasks | "" (not registered)
    start_command: list = field(default_factory=list)
    files: list = field(default_factory=list)
    message: str = ""
    name: str = ""  # the unit, label or Windows name: what verify asks about
    scope: str = ""  # systemd: user | system
    # Starts it unless it runs: a GPU worker restarted for nothing would leave the fleet (moving its jobs).
    ensure_command: list = field(default_factory=list)

    def record(self) -> dict:
        """What the install's state keeps (verify starts and watches the service with it)."""
        return {"manager": self.manager, "start_command": self.start_command, "name": self.name,
                "scope": self.scope, "files": self.files, "ensure_command": self.ensure_command}


def write_start_script(launch: Launch) -> Path:
    path = launch.start_script
    if launch.layout.os_name == "windows":
        write_if_changed(path, render_start_ps1(launch))
    else:
        write_if_changed(path, render_start_sh(launch), mode=0o755)
    return path


def register(launch: Launch, home: Path, run: CommandRunner, scope: Optional[Scope] = None) -> Registration:
    """Register the service and create the shortcut for this platform (`scope`: systemd's,
    a user unit under `home` unless told otherwise)."""
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)
    os_name = launch.layout.os_name
    if os_name == "linux":
        registration = _register_systemd(launch, run, scope or user_scope(home))
    else:
        registration = (_register_launchd if os_name == "darwin" else _register_windows)(launch, home, run)
    if launch.shortcuts:
        registration.files += [str(path) for path in _write_shortcuts(launch, home)]
    return registration


def unregister(record: dict, run: CommandRunner) -> list:
    """Undo what an earlier run registered for this install (`record`: its state's "service"),
    for a re-run with --no-service: the service is stopped and no longer starts at boot or
    logon, and its unit/plist and shortcuts are deleted. Best effort (what is already gone is
    fine). Returns the names and files removed, for the step's message."""
    manager, name = record.get("manager") or "", record.get("name") or ""
    flags = [] if record.get("scope") == "system" else ["--user"]
    commands = {"systemd": [["systemctl", *flags, "disable", "--now", name]],
                "launchd": [["launchctl", "bootout", f"{launchd_domain()}/{name}"]],
                "nssm": [["nssm", "stop", name], ["nssm", "remove", name, "confirm"]],
                "schtasks": [["schtasks", "/Delete", "/F", "/TN", name]]}.get(manager, []) if name else []
    for command in commands:
        run(command, timeout=60)
    removed = [name] if commands else []
    for path in map(Path, record.get("files") or []):
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
    if manager == "systemd" and name:
        run(["systemctl", *flags, "daemon-reload"], timeout=60)
    return removed


def _register_systemd(launch: Launch, run: CommandRunner, scope: Scope) -> Registration:
    name, systemctl = launch.names.unit, ["systemctl", *scope.flags]
    unit = scope.unit_dir / name
    write_if_changed(unit, render_systemd_unit(launch, scope))
    if run([*systemctl, "show-environment"], timeout=30).code != 0:
        manager = "systemd is not running here" if scope.system else "no systemd user session is available here"
        return Registration(files=[str(unit)], message=f"wrote {unit}, but {manager}: start it with "
                                                       f"{launch.start_script}")
    for command in ([*systemctl, "daemon-reload"], [*systemctl, "enable", name]):
        _must(run(command, timeout=60), command)
    started = (f"the system service {name} (starts at boot as {scope.user})" if scope.system else
               f"{name} (to start at boot without logging in: loginctl enable-linger)")
    return Registration("systemd", [*systemctl, "restart", name], [str(unit)], f"enabled {started}", name,
                        scope.name, [*systemctl, "start", name])


def launchd_domain() -> str:
    return f"gui/{os.getuid()}" if hasattr(os, "getuid") else "gui/0"


def _register_launchd(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    label = launch.names.launchd_label
    plist = home / "Library" / "LaunchAgents" / f"{label}.plist"
    plist.parent.mkdir(parents=True, exist_ok=True)
    if not plist.exists() or plist.read_bytes() != render_launchd_plist(launch):
        plist.write_bytes(render_launchd_plist(launch))
    target = f"{launchd_domain()}/{label}"
    run(["launchctl", "bootout", target], timeout=60)  # not loaded yet is fine
    command = ["launchctl", "bootstrap", launchd_domain(), str(plist)]
    _must(run(command, timeout=60), command)
    return Registration("launchd", ["launchctl", "kickstart", "-k", target], [str(plist)],
                        f"loaded launchd agent {label}", label, ensure_command=["launchctl", "kickstart", target])


def _register_windows(launch: Launch, home: Path, run: CommandRunner) -> Registration:
    name = launch.names.windows
    if shutil.which("nssm"):
        run(["nssm", "stop", name], timeout=60)
        run(["nssm", "remove", name, "confirm"], timeout=60)  # re-create: settings may have changed
        for command in nssm_commands(launch):
            _must(run(command, timeout=60), command)
        return Registration("nssm", ["nssm", "start", name], [], f"installed service {name} (NSSM)", name,
                            ensure_command=["nssm", "start", name])
    command = schtasks_command(launch)
    _must(run(command, timeout=60), command)
    run_task = ["schtasks", "/Run", "/TN", name]  # a running task is left alone (its default: IgnoreNew)
    return Registration("schtasks", run_task, [], f"created scheduled task {name} (runs at logon)", name,
                        ensure_command=run_task)


def _write_shortcuts(launch: Launch, home: Path) -> list:
    """The shortcuts written (all of them are recorded, so --no-service can take them away)."""
    desktop, names = home / "Desktop", launch.names
    os_name = launch.layout.os_name
    if os_name == "linux":
        entries = [home / ".local" / "share" / "applications" / names.desktop]
        if desktop.is_dir():
            entries.append(desktop / names.desktop)
        for entry in entries:
            write_if_changed(entry, render_desktop_entry(launch), mode=0o755)
        return entries
    if not desktop.is_dir():
        return []
    if os_name == "darwin":
        path = desktop / f"{names.title}.webloc"
        path.write_bytes(render_webloc(launch))
        return [path]
    path = desktop / f"{names.title}.url"
    write_if_changed(path, render_url_shortcut(launch))
    return [path]


def _must(done, command: list) -> None:
    if done.code != 0:
        raise Failure(f"`{' '.join(command)}` failed (exit code {done.code}): {done.output.strip()[-300:]}",
                      "run that command yourself to see why, or re-run the installer with --no-service "
                      "and start ComfyUI with the start script")
