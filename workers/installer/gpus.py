"""One ComfyUI per GPU (`--gpus all`, `--gpus 0,2`): which GPUs, how each is pinned, what each is called.

One ComfyUI tree and venv serve every GPU; each GPU gets its own ComfyUI process, pinned by the
vendor's visible-devices variable (so it sees one device, its own, as device 0), on its own port,
with its own service, log and start script. The first chosen GPU keeps the install's own names
and port and is the "local" backend; each other one is the backend `local-gpu<N>` and also gets
a service running its worker (`manage.py gpu_worker`), the only consumer of its queue.

Device numbers are the vendor runtime's, which is the order the vendor's tool lists the cards:
* NVIDIA: nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest first
  (CUDA_DEVICE_ORDER=FASTEST_FIRST, CUDA C Programming Guide, "CUDA Environment Variables"),
  so CUDA_DEVICE_ORDER=PCI_BUS_ID is set with CUDA_VISIBLE_DEVICES, or GPU 1 could be GPU 0.
* AMD: ROCR_VISIBLE_DEVICES on Linux, HIP_VISIBLE_DEVICES on Windows (ROCm's "GPU isolation
  techniques" recommends exactly that). Never both: HIP numbers the devices ROCr left visible,
  so ROCR=1 plus HIP=1 would hide the only one left. (PyTorch honours ROCR_VISIBLE_DEVICES
  since pytorch#142292.) rocm-smi lists an APU's integrated GPU too, as ROCr does: it is
  counted, never chosen.
* Intel: ZE_AFFINITY_MASK (Level Zero, under PyTorch's XPU backend); not ONEAPI_DEVICE_SELECTOR
  as well, which would number the devices already masked.
* Apple: one GPU, nothing to pin.
"""
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .autostart import ServiceNames, instance_path
from .errors import Failure
from .layout import Layout

FIRST_BACKEND = "local"  # what the installer has always registered (project/queues.py FIRST_COMFYUI)
_FLAVOR_VENDOR = {"cuda": "nvidia", "rocm": "amd", "xpu": "intel"}
_SELECTION = re.compile(r"^\d+(,\d+)*$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pin:
    """One GPU's ComfyUI: the device number its vendor's runtime uses, and the variables that pin it."""

    index: int
    name: str
    env: tuple  # (name, value) pairs

    @property
    def instance(self) -> str:
        return f"gpu{self.index}"

    def backend(self, first: bool) -> str:
        return FIRST_BACKEND if first else f"{FIRST_BACKEND}-{self.instance}"

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "env": dict(self.env)}


def pin_env(vendor: str, index: int, os_name: str) -> tuple:
    """The vendor's visible-devices variables for device `index` (see the module docstring)."""
    if vendor == "nvidia":
        return (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_VISIBLE_DEVICES", str(index)))
    if vendor == "amd":
        return (("ROCR_VISIBLE_DEVICES" if os_name == "linux" else "HIP_VISIBLE_DEVICES", str(index)),)
    return (("ZE_AFFINITY_MASK", str(index)),)


def usable_gpus(system, build) -> list:
    """(device number, Gpu) of each discrete GPU this PyTorch build drives, numbered among all of
    its vendor's cards in the order the tool listed them (an integrated one keeps its number)."""
    vendor = _FLAVOR_VENDOR.get(build.flavor)
    same_vendor = [gpu for gpu in system.gpus if gpu.vendor == vendor]
    return [(number, gpu) for number, gpu in enumerate(same_vendor) if not gpu.integrated]


def choose(system, build, asked: str) -> tuple:
    """(pins, note) for `--gpus` (`asked`): "" is one ComfyUI for the whole machine (no pins);
    "all" every usable GPU; "0,2" those. "all" where there is nothing to pin (a Mac, the CPU
    build) is one ComfyUI and a note; numbers that are not there fail the check."""
    asked = (asked or "").strip().lower()
    if not asked:
        return [], ""
    if asked != "all" and not _SELECTION.match(asked.replace(" ", "")):
        raise Failure(f"--gpus {asked!r} is neither 'all' nor GPU numbers", "pass --gpus all or --gpus 0,2")
    usable = usable_gpus(system, build)
    if not usable:
        return _nothing_to_pin(build, asked)
    if asked == "all":
        wanted = [number for number, _ in usable]
    else:
        wanted = sorted({int(part) for part in asked.replace(" ", "").split(",")})
    names = dict(usable)
    missing = [number for number in wanted if number not in names]
    if missing:
        here = ", ".join(f"{number} ({gpu.name})" for number, gpu in usable)
        raise Failure(f"--gpus {asked}: no GPU {', '.join(map(str, missing))} here (the GPUs PyTorch "
                      f"{build.key} can use: {here})", "pass numbers from that list, or --gpus all")
    vendor = _FLAVOR_VENDOR[build.flavor]
    return [Pin(number, names[number].name, pin_env(vendor, number, system.os)) for number in wanted], ""


def _nothing_to_pin(build, asked: str) -> tuple:
    why = "Apple silicon has one GPU" if build.flavor == "mps" else f"PyTorch {build.key} uses no GPU here"
    if asked != "all":
        raise Failure(f"--gpus {asked}: {why}, so there is no GPU to choose", "leave out --gpus")
    return [], f"--gpus all: {why}; one ComfyUI serves the machine"


def venv_python(os_name: str, root: Path = PROJECT_ROOT) -> Path:
    """The project's virtualenv (`make setup`), which has Django and Celery."""
    return root / ".venv" / ("Scripts/python.exe" if os_name == "windows" else "bin/python")


def project_python(os_name: str, root: Path = PROJECT_ROOT) -> Path:
    """The Python of the GPU workers: the project's virtualenv, else the interpreter running the
    installer (a bootstrap's has only `requests`: the plan warns)."""
    venv = venv_python(os_name, root)
    return venv if venv.exists() else Path(sys.executable)


@dataclass(frozen=True)
class Worker:
    """The worker of one extra GPU's backend: `manage.py gpu_worker` from the project root, run by
    the same service machinery as ComfyUI (autostart.py renders it through the same attributes
    as a Launch). The project's settings read its .env, so nothing secret is in the unit."""

    layout: Layout
    instance: str  # the GPU's ("gpu1")
    comfyui_url: str
    backend: str
    python: Path
    project: Path = PROJECT_ROOT
    env = ()
    shortcuts = False

    @property
    def names(self) -> ServiceNames:
        return ServiceNames.of(self.layout, f"{self.instance}-worker")

    @property
    def argv(self) -> list:
        return [str(self.python), str(self.project / "manage.py"), "gpu_worker", "--comfyui-url", self.comfyui_url,
                "--name", self.backend]

    @property
    def workdir(self) -> Path:
        return self.project

    @property
    def log_file(self) -> Path:
        return instance_path(self.layout.root / "logs" / "gpu-worker.log", self.instance)

    @property
    def start_script(self) -> Path:
        return instance_path(self.layout.start_script.with_stem("start-gpu-worker"), self.instance)

    @property
    def description(self) -> str:
        return f"Comfy Hybrid GPU worker of backend {self.backend} ({self.names.install_id})"

    @property
    def script_header(self) -> tuple:
        return (f"Starts the Comfy Hybrid worker of backend {self.backend} (its ComfyUI: {self.comfyui_url}),",
                "installed with one ComfyUI per GPU (deploy/INSTALLER.md). Extra arguments go to manage.py gpu_worker.")


def previous(state: dict) -> list:
    """The extra GPUs an earlier run set up (their port, backend and service records)."""
    return list((state.get("gpus") or {}).get("instances") or [])


def remembered_port(state: dict, index: int, asked: int) -> Optional[int]:
    """An earlier run's port for GPU `index`, when it was asked the same base port."""
    record = state.get("gpus") or {}
    if record.get("asked") != asked:
        return None
    return next((item.get("port") for item in previous(state) if item.get("gpu") == index), None)
