"""Run the detection commands of this OS and merge their answers into one `SystemInfo`.

Vendor tools (nvidia-smi, rocm-smi) know memory and driver versions; the bus listing
(lspci, Win32_VideoController) sees every card, including one whose driver is missing.
A vendor's cards come from its tool when the tool answered, from the bus listing otherwise.
"""
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

from . import Gpu, GpuProbe, primary_gpu
from .lspci import parse_lspci
from .macos import parse_system_profiler
from .nvidia import parse_nvidia_smi
from .rocm import parse_rocm_smi
from .windows import QUERY, parse_windows

NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,pci.device_id,compute_cap",
                "--format=csv"]
ROCM_QUERY = ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"]


@dataclass
class CommandOutput:
    found: bool
    code: int
    text: str


Runner = Callable[[list], CommandOutput]


def run_command(args: list, timeout: float = 15.0) -> CommandOutput:
    """Run a detection command; a missing tool is an answer, not an error."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=timeout)
    except FileNotFoundError:
        return CommandOutput(False, 127, "")
    except subprocess.TimeoutExpired:
        return CommandOutput(True, -1, f"{args[0]} did not answer within {timeout:.0f} s")
    except OSError as error:
        return CommandOutput(False, 126, str(error))
    return CommandOutput(True, done.returncode, (done.stdout or "") + (done.stderr or ""))


def current_os() -> str:
    return {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")


@dataclass
class SystemInfo:
    os: str
    arch: str
    gpus: list = field(default_factory=list)
    driver_version: str = ""
    cuda_version: str = ""
    problem: str = ""
    fix: str = ""

    @property
    def primary(self):
        return primary_gpu(self.gpus)

    def as_dict(self) -> dict:
        primary = self.primary
        return {"os": self.os, "arch": self.arch, "gpus": [g.as_dict() for g in self.gpus],
                "primary": primary.as_dict() if primary else None, "driver_version": self.driver_version,
                "cuda_version": self.cuda_version, "problem": self.problem, "fix": self.fix}


def probe_system(os_name: str = "", arch: str = "", run: Runner = run_command) -> SystemInfo:
    os_name = os_name or current_os()
    arch = arch or platform.machine().lower()
    if os_name == "darwin":
        return _probe_macos(arch, run)
    nvidia = _probe_nvidia(run)
    amd = parse_rocm_smi(run(ROCM_QUERY).text) if os_name == "linux" else GpuProbe()
    bus = parse_lspci(run(["lspci", "-nn"]).text) if os_name == "linux" else \
        parse_windows(run(["powershell", "-NoProfile", "-Command", QUERY]).text)
    return _merge(os_name, arch, nvidia, amd, bus)


def _probe_nvidia(run: Runner) -> GpuProbe:
    query = run(NVIDIA_QUERY)
    if not query.found:
        return GpuProbe(problem="missing")
    probe = parse_nvidia_smi(query.text)
    if probe.problem:
        return probe
    table = parse_nvidia_smi(run(["nvidia-smi"]).text)
    # Drivers older than R510 reject compute_cap; the table then names the GPUs.
    if query.code != 0 or not probe.gpus:
        probe.gpus = table.gpus
    probe.cuda_version = table.cuda_version
    probe.driver_version = probe.driver_version or table.driver_version
    return probe


def _merge(os_name: str, arch: str, nvidia: GpuProbe, amd: GpuProbe, bus: GpuProbe) -> SystemInfo:
    from_tools = nvidia.gpus + amd.gpus
    covered = {g.vendor for g in from_tools}
    info = SystemInfo(os=os_name, arch=arch, gpus=from_tools + [g for g in bus.gpus if g.vendor not in covered],
                      driver_version=nvidia.driver_version, cuda_version=nvidia.cuda_version)
    has_nvidia_card = any(g.vendor == "nvidia" for g in info.gpus)
    if nvidia.problem == "missing":
        if has_nvidia_card:
            info.problem = "an NVIDIA GPU is installed but its driver is not (nvidia-smi is missing)"
            info.fix = "Install the NVIDIA driver for your GPU, reboot, then run the installer again."
    elif nvidia.problem:
        info.problem, info.fix = nvidia.problem, nvidia.fix
    return info


def _probe_macos(arch: str, run: Runner) -> SystemInfo:
    probe = parse_system_profiler(run(["system_profiler", "SPDisplaysDataType"]).text)
    memory = run(["sysctl", "-n", "hw.memsize"]).text.strip()
    for gpu in probe.gpus:
        if gpu.vendor == "apple" and memory.isdigit():
            gpu.vram_bytes = int(memory)  # unified memory: the GPU can use (most of) the RAM
    return SystemInfo(os="darwin", arch=arch, gpus=probe.gpus)


def gpu_from_dict(data: dict) -> Gpu:
    return Gpu(**{k: v for k, v in data.items() if k in Gpu.__dataclass_fields__})
