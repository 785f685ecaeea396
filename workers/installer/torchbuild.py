"""Which PyTorch build to install: the table that prevents "the wrong GPU build".

NVIDIA: `nvidia-smi` reports the newest CUDA version the *driver* supports. A PyTorch CUDA
build runs on any driver that supports its CUDA version or newer, so we take the newest
build not newer than the driver, then apply the GPU-generation limits below.

| driver supports CUDA | build | index URL                                  |
|----------------------|-------|--------------------------------------------|
| 13.2 or newer        | cu132 | https://download.pytorch.org/whl/cu132     |
| 13.0 - 13.1          | cu130 | https://download.pytorch.org/whl/cu130     |
| 12.8 - 12.9          | cu128 | https://download.pytorch.org/whl/cu128     |
| 12.6 - 12.7          | cu126 | https://download.pytorch.org/whl/cu126     |
| 12.4 - 12.5          | cu124 | https://download.pytorch.org/whl/cu124     |
| 12.1 - 12.3          | cu121 | https://download.pytorch.org/whl/cu121     |
| 11.8 - 12.0          | cu118 | https://download.pytorch.org/whl/cu118     |
| older                | —     | fails: update the driver (or --torch cpu)   |

GPU generation limits (by compute capability when nvidia-smi reports it, else by name):
* Maxwell / Pascal (compute 5.x / 6.x: GTX 9xx/10xx, MX1xx-3xx, Tesla M/P, Quadro M/P): at
  most cu126 — PyTorch's CUDA 12.8+ builds no longer ship kernels for them.
* Volta (7.0: V100, Titan V, Quadro GV100): at most cu128 — CUDA 13 dropped it.
* Blackwell (10.x / 12.x: RTX 50xx, RTX PRO Blackwell, B100/B200): at least cu128 — older
  builds have no kernels for it; a driver below CUDA 12.8 fails with "update the driver".

Other vendors:

| machine                                    | build   | index URL                                 |
|--------------------------------------------|---------|-------------------------------------------|
| Linux + AMD discrete GPU supported by ROCm | rocm7.2 | https://download.pytorch.org/whl/rocm7.2  |
| Linux/Windows + Intel Arc (discrete)       | xpu     | https://download.pytorch.org/whl/xpu      |
| macOS on Apple silicon                     | mps     | PyPI (the default wheels include MPS)     |
| macOS on Intel                             | cpu     | PyPI                                      |
| anything else (no GPU, iGPU only, AMD on   | cpu     | https://download.pytorch.org/whl/cpu      |
| Windows, AMD older than RDNA2/CDNA2)       |         |                                           |

`--torch <build>` (cu126, rocm7.2, cpu, ...) overrides the choice.

Where the build comes from (`torch_source`): the index URLs above, unless the user says
otherwise — COMFY_TORCH_INDEX_URL names a mirror of https://download.pytorch.org/whl/, and a
pip configuration that chooses an index (a company mirror, a proxy, an offline wheel folder)
is honoured instead of being overridden by --index-url.
"""
import re
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Optional

from .commandlog import redact
from .detect import GIB
from .errors import Failure

PYTORCH_INDEX = "https://download.pytorch.org/whl/"
TORCH_INDEX_SETTING = "COMFY_TORCH_INDEX_URL"
# pip's settings that choose where packages come from, as environment variables and as the
# keys `pip config list` prints (global.index-url='...', install.no-index='true', ...).
PIP_SOURCE_VARIABLES = ("PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS")
_PIP_SOURCE_KEY = re.compile(r"^([\w:.-]*\.)?(index-url|no-index|find-links)='(.*)'$")
_FALSE = ("", "0", "false", "no", "off")

# (oldest driver CUDA version that can run the build, build), newest first.
CUDA_BUILDS = [((13, 2), "cu132"), ((13, 0), "cu130"), ((12, 8), "cu128"), ((12, 6), "cu126"),
               ((12, 4), "cu124"), ((12, 1), "cu121"), ((11, 8), "cu118")]
CUDA_ORDER = [build for _, build in CUDA_BUILDS]

ROCM_BUILD = "rocm7.2"
# GFX targets the ROCm 7 PyTorch wheels carry kernels for (RDNA2+, CDNA2+).
ROCM_GFX = ("gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151",
            "gfx1200", "gfx1201")
_ROCM_NAMES = re.compile(r"RX 6[789]\d\d|RX 7\d\d\d|RX 9\d\d\d|PRO W[67]\d\d\d|Instinct MI[23]|Navi [234]",
                         re.IGNORECASE)

_PASCAL_OR_OLDER = re.compile(r"GTX (7[5-9]|9\d|10\d)\d|GT 10\d0|\bMX ?[123]\d0\b|TITAN Xp?\b|Tesla [KMP]\d|"
                              r"Quadro [KMP]\d", re.IGNORECASE)
_VOLTA = re.compile(r"V100|TITAN V\b|Quadro GV100", re.IGNORECASE)
_BLACKWELL = re.compile(r"RTX 50\d\d|Blackwell|\bB[12]00\b|GB[12]00", re.IGNORECASE)

# Installed size of the ComfyUI venv (PyTorch + ComfyUI's requirements) and how much of
# that is downloaded, per build kind. Rough, measured on Linux x86_64 wheels; used for the
# free-disk check and the time estimate only.
ENV_DISK = {"cuda": 7 * GIB, "rocm": 16 * GIB, "xpu": 6 * GIB, "mps": 2 * GIB, "cpu": 2 * GIB}
ENV_DOWNLOAD = {"cuda": 3 * GIB, "rocm": 5 * GIB, "xpu": 2 * GIB, "mps": GIB, "cpu": GIB}


@dataclass(frozen=True)
class TorchBuild:
    key: str  # cu128, rocm7.2, xpu, mps, cpu
    flavor: str  # cuda | rocm | xpu | mps | cpu
    index_url: str  # "" means PyPI's default wheels
    reason: str

    @property
    def disk_bytes(self) -> int:
        return ENV_DISK[self.flavor]

    @property
    def download_bytes(self) -> int:
        return ENV_DOWNLOAD[self.flavor]

    def as_dict(self) -> dict:
        return {**asdict(self), "disk_bytes": self.disk_bytes}


def build_for(key: str, reason: str, os_name: str = "linux") -> TorchBuild:
    """The build for a key such as "cu128", "rocm7.2", "xpu", "mps" or "cpu"."""
    if key in CUDA_ORDER:
        return TorchBuild(key, "cuda", PYTORCH_INDEX + key, reason)
    if key.startswith("rocm"):
        return TorchBuild(key, "rocm", PYTORCH_INDEX + key, reason)
    if key == "xpu":
        return TorchBuild(key, "xpu", PYTORCH_INDEX + key, reason)
    if key == "mps" or (key == "cpu" and os_name == "darwin"):
        return TorchBuild(key, "mps" if key == "mps" else "cpu", "", reason)  # macOS wheels live on PyPI
    if key == "cpu":
        return TorchBuild(key, "cpu", PYTORCH_INDEX + "cpu", reason)
    raise Failure(f"unknown PyTorch build '{key}'",
                  f"use one of {', '.join(CUDA_ORDER)}, {ROCM_BUILD}, xpu, mps or cpu")


@dataclass(frozen=True)
class TorchSource:
    """Where PyTorch is installed from."""

    index_url: str  # given to pip as --index-url; "" leaves it to pip (its configuration, or PyPI)
    origin: str  # for the plan and for errors, credentials masked
    kind: str  # pytorch (the build's index) | mirror (COMFY_TORCH_INDEX_URL) | pip (its configuration) | pypi


def torch_source(build: TorchBuild, environ: Mapping, pip_config: Callable[[], str]) -> TorchSource:
    """Where to install `build` from. `pip_config()` returns what `pip config list` prints;
    it is asked only when nothing before it decides.

    * Builds whose wheels are on PyPI (macOS): no --index-url; pip's configuration applies.
    * COMFY_TORCH_INDEX_URL: a mirror of download.pytorch.org/whl/; "{build}" in it is
      replaced by the build's key (cu128, rocm7.2, cpu...), otherwise the key is appended.
    * A pip configuration that chooses an index (PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS,
      or index-url / no-index / find-links in pip's config files): no --index-url, so pip
      uses it; the check after the install still refuses a torch without CUDA/ROCm.
    * Otherwise the build's index on download.pytorch.org.
    """
    if not build.index_url:
        return TorchSource("", "PyPI (or the index your pip configuration names)", "pypi")
    mirror = environ.get(TORCH_INDEX_SETTING, "").strip()
    if mirror:
        url = _mirror_url(mirror, build.key)
        return TorchSource(url, f"{redact(url)} ({TORCH_INDEX_SETTING})", "mirror")
    chosen = pip_source_setting(environ, pip_config)
    if chosen:
        return TorchSource("", f"your pip configuration ({chosen})", "pip")
    return TorchSource(build.index_url, build.index_url, "pytorch")


def pip_source_setting(environ: Mapping, pip_config: Callable[[], str]) -> str:
    """The first pip setting that chooses where packages come from ("PIP_FIND_LINKS",
    "global.index-url", ...), or "" when pip would use PyPI."""
    for name in PIP_SOURCE_VARIABLES:
        value = environ.get(name, "").strip()
        if value and not (name == "PIP_NO_INDEX" and value.lower() in _FALSE):
            return name
    for line in pip_config().splitlines():
        match = _PIP_SOURCE_KEY.match(line.strip())
        if match and not (match.group(2) == "no-index" and match.group(3).strip().lower() in _FALSE):
            return (match.group(1) or "") + match.group(2)
    return ""


def _mirror_url(mirror: str, key: str) -> str:
    if not re.match(r"^(https?|file)://\S+$", mirror):
        raise Failure(f"{TORCH_INDEX_SETTING} is set to '{redact(mirror)}', which is not a URL",
                      f"set it to the address of a mirror of {PYTORCH_INDEX} (e.g. https://mirror.example/whl/: "
                      f"the build, such as cu128, is appended; or put {{build}} where it goes), or unset it")
    return mirror.replace("{build}", key) if "{build}" in mirror else mirror.rstrip("/") + "/" + key


def choose_build(system, override: str = "") -> TorchBuild:
    """The build for this machine (`system` is a detect.probe.SystemInfo)."""
    if override:
        return build_for(override, f"chosen with --torch {override}", system.os)
    if system.os == "darwin":
        if system.arch in ("arm64", "aarch64"):
            return build_for("mps", "Apple silicon: Metal (MPS) acceleration", "darwin")
        return build_for("cpu", "Intel Mac: PyTorch has no GPU build for it", "darwin")
    gpu = system.primary
    if gpu is None or gpu.integrated:
        return build_for("cpu", "no discrete GPU found: ComfyUI will run on the CPU (slow)")
    return _BY_VENDOR.get(gpu.vendor, _cpu_for)(system, gpu)


def _cuda_for(system, gpu) -> TorchBuild:
    if system.problem:
        raise Failure(system.problem, system.fix + " Or pass --torch cpu to install without GPU acceleration")
    driver = _version(system.cuda_version)
    if driver is None:
        raise Failure("nvidia-smi did not report which CUDA version the driver supports",
                      "run `nvidia-smi` to check the driver, or pass --torch cu126 (or another build) explicitly")
    usable = [build for minimum, build in CUDA_BUILDS if minimum <= driver]
    ceiling, floor = _generation_limits(gpu)
    if ceiling:
        usable = [build for build in usable if CUDA_ORDER.index(build) >= CUDA_ORDER.index(ceiling)]
    if not usable or (floor and CUDA_ORDER.index(usable[0]) > CUDA_ORDER.index(floor)):
        needed = floor or CUDA_ORDER[-1]
        raise Failure(f"the NVIDIA driver {system.driver_version} supports CUDA {system.cuda_version}, but "
                      f"{gpu.name} needs a PyTorch build of at least {needed}",
                      "update the NVIDIA driver (R570 or newer supports CUDA 12.8), reboot, then run again")
    return build_for(usable[0], f"{gpu.name}, driver {system.driver_version} supports CUDA {system.cuda_version}"
                     + (f"; capped at {ceiling} for this GPU generation" if ceiling else ""))


def _generation_limits(gpu) -> tuple:
    """(newest build with kernels for this GPU or None, oldest such build or None)."""
    capability = _version(gpu.compute_capability)
    if capability:
        if capability < (7, 0):
            return "cu126", None
        if capability < (7, 5):
            return "cu128", None
        return None, ("cu128" if capability >= (10, 0) else None)
    if _PASCAL_OR_OLDER.search(gpu.name):
        return "cu126", None
    if _VOLTA.search(gpu.name):
        return "cu128", None
    return None, ("cu128" if _BLACKWELL.search(gpu.name) else None)


def _rocm_for(system, gpu) -> TorchBuild:
    if system.os != "linux":
        return build_for("cpu", f"{gpu.name}: PyTorch's ROCm builds in this table are for Linux only")
    if gpu.gfx and gpu.gfx not in ROCM_GFX:
        return build_for("cpu", f"{gpu.name} ({gpu.gfx}) is not supported by the ROCm 7 PyTorch builds")
    if not gpu.gfx and not _ROCM_NAMES.search(gpu.name) and gpu.source != "rocm-smi":
        return build_for("cpu", f"{gpu.name} is not known to be supported by the ROCm 7 PyTorch builds")
    return build_for(ROCM_BUILD, f"{gpu.name}: AMD ROCm build")


def _xpu_for(system, gpu) -> TorchBuild:
    return build_for("xpu", f"{gpu.name}: Intel XPU build")


def _cpu_for(system, gpu) -> TorchBuild:
    return build_for("cpu", f"{gpu.name}: no PyTorch GPU build for this vendor")


_BY_VENDOR = {"nvidia": _cuda_for, "amd": _rocm_for, "intel": _xpu_for}


def _version(text: str) -> Optional[tuple]:
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None
