"""`lspci` (with or without -nn / -D): every display-class device, by PCI vendor id when
printed, by vendor name otherwise. Finds GPUs whose driver is missing, which the vendor
tools cannot see."""
import re

from . import Gpu, GpuProbe, looks_integrated, vendor_from_id, vendor_from_name

# Display classes; MI300-class accelerators list as "Processing accelerators", not VGA/3D.
_LINE = re.compile(
    r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\s+"
    r"(?:VGA compatible controller|3D controller|Display controller|Processing accelerators)"
    r"(?:\s*\[[0-9a-fA-F]{4}\])?:\s*(.+)$"
)
_IDS = re.compile(r"\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]")
_REV = re.compile(r"\s*\(rev [0-9a-fA-F]+\)\s*$")
_BRACKET = re.compile(r"\[([^\]]+)\]")
_VENDOR_PREFIXES = ("NVIDIA Corporation", "Advanced Micro Devices, Inc.", "Intel Corporation", "Apple Inc.")


def parse_lspci(text: str) -> GpuProbe:
    probe = GpuProbe()
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            probe.gpus.append(_gpu(match.group(1)))
    return probe


def _gpu(description: str) -> Gpu:
    description = _REV.sub("", description)
    ids = _IDS.search(description)
    vendor = vendor_from_id(ids.group(1)) if ids else vendor_from_name(description)
    device_id = ids.group(2).lower() if ids else ""
    name = _model_name(_IDS.sub("", description).strip(), vendor, device_id)
    return Gpu(vendor=vendor, name=name, device_id=device_id, integrated=looks_integrated(vendor, name),
               source="lspci")


def _model_name(description: str, vendor: str, device_id: str) -> str:
    # "NVIDIA Corporation GM108M [GeForce MX130]": the marketing name is the last bracket;
    # "[AMD/ATI]" is part of the vendor string, not a model.
    models = [b for b in _BRACKET.findall(description) if b not in ("AMD/ATI", "AMD")]
    if models:
        return models[-1]
    for prefix in _VENDOR_PREFIXES:
        description = description.removeprefix(prefix).strip()
    if description in ("", "Device") and device_id:
        return f"{vendor.capitalize()} GPU {device_id}"
    return description
