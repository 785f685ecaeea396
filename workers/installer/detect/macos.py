"""`system_profiler SPDisplaysDataType` (Apple silicon and Intel Macs with AMD graphics)."""
import re

from . import GIB, MIB, Gpu, GpuProbe, looks_integrated, vendor_from_id, vendor_from_name

_FIELD = re.compile(r"^\s*([^:]+):\s*(.*)$")
_VRAM = re.compile(r"^(\d+(?:\.\d+)?)\s*(GB|MB)$")


def parse_system_profiler(text: str) -> GpuProbe:
    probe = GpuProbe()
    current = None
    for line in text.splitlines():
        match = _FIELD.match(line)
        if not match:
            continue
        key, value = match.group(1).strip(), match.group(2).strip()
        if key == "Chipset Model":
            current = {"name": value}
            probe.gpus.append(current)
        elif current is not None and key in ("Vendor", "VRAM (Total)", "VRAM (Dynamic, Max)", "Device ID"):
            current.setdefault(key, value)
    probe.gpus = [_gpu(fields) for fields in probe.gpus]
    return probe


def _gpu(fields: dict) -> Gpu:
    vendor_field = fields.get("Vendor", "")
    vendor_id = re.search(r"\(0x([0-9a-fA-F]{4})\)", vendor_field)
    vendor = vendor_from_id(vendor_id.group(1)) if vendor_id else vendor_from_name(vendor_field or fields["name"])
    # Apple silicon has no VRAM line: the GPU uses unified memory (hw.memsize, see probe.py).
    vram = _vram(fields.get("VRAM (Total)") or fields.get("VRAM (Dynamic, Max)") or "")
    device_id = fields.get("Device ID", "").lower().removeprefix("0x")
    return Gpu(vendor=vendor, name=fields["name"], vram_bytes=vram, device_id=device_id,
               integrated=looks_integrated(vendor, fields["name"]), source="system_profiler")


def _vram(value: str):
    # system_profiler's "GB" are binary (a "16 GB" Vega 64 has 16 GiB).
    match = _VRAM.match(value)
    if not match:
        return None
    return int(float(match.group(1)) * (GIB if match.group(2) == "GB" else MIB))
