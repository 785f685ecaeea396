"""GPU detection: what each tool prints, parsed into one shape.

Each parser takes the text a command printed (exactly as recorded in
tests/data/gpu-samples) and returns a `GpuProbe`. They never run anything themselves;
`probe.py` runs the commands (through an injectable runner) and merges the answers.
"""
from dataclasses import asdict, dataclass, field
from typing import Optional

# PCI vendor ids (https://pci-ids.ucw.cz/): the one thing every tool on every OS agrees on.
VENDOR_IDS = {"10de": "nvidia", "1002": "amd", "8086": "intel", "106b": "apple"}
VENDOR_LABELS = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel", "apple": "Apple", "unknown": "Unknown"}

GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclass
class Gpu:
    vendor: str  # nvidia | amd | intel | apple | unknown
    name: str
    vram_bytes: Optional[int] = None
    # False when the number is a lower bound (Windows' AdapterRAM is a 32-bit field: 4 GB max).
    vram_exact: bool = True
    device_id: str = ""  # PCI device id, 4 lower-case hex digits
    integrated: bool = False
    gfx: str = ""  # AMD GFX target (gfx1100...), decides ROCm support
    compute_capability: str = ""  # NVIDIA "8.9": decides which CUDA builds have kernels for it
    source: str = ""  # which tool said so

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GpuProbe:
    gpus: list = field(default_factory=list)
    driver_version: str = ""
    cuda_version: str = ""  # the newest CUDA the NVIDIA driver supports
    problem: str = ""  # the tool ran but reported a broken driver
    fix: str = ""


def vendor_from_id(vendor_id: str) -> str:
    return VENDOR_IDS.get(vendor_id.lower().removeprefix("0x")[-4:], "unknown")


def vendor_from_name(text: str) -> str:
    lowered = text.lower()
    for needle, vendor in (("nvidia", "nvidia"), ("geforce", "nvidia"), ("quadro", "nvidia"),
                           ("tesla", "nvidia"), ("advanced micro devices", "amd"), ("amd", "amd"),
                           ("radeon", "amd"), ("ati ", "amd"), ("intel", "intel"), ("apple", "apple")):
        if needle in lowered:
            return vendor
    return "unknown"


# Integrated GPUs share system memory and are never the GPU to install for when a
# discrete one is present (an Intel UHD next to an RTX card, a Raphael iGPU next to a Radeon).
_INTEGRATED_HINTS = ("uhd graphics", "hd graphics", "iris", "raphael", "radeon graphics", "rembrandt",
                     "phoenix", "renoir", "cezanne", "vega 8", "vega 7", "apple m")


def looks_integrated(vendor: str, name: str) -> bool:
    lowered = name.lower()
    if vendor == "apple":
        return True
    if vendor == "intel":
        return "arc" not in lowered and "data center" not in lowered
    return any(hint in lowered for hint in _INTEGRATED_HINTS)


_VENDOR_RANK = {"nvidia": 0, "amd": 1, "intel": 2, "apple": 3, "unknown": 4}


def primary_gpu(gpus: list) -> Optional[Gpu]:
    """The GPU to install for: discrete before integrated, NVIDIA before AMD before Intel,
    then the one with the most memory."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (g.integrated, _VENDOR_RANK.get(g.vendor, 9), -(g.vram_bytes or 0)))
