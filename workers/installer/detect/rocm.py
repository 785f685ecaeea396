"""`rocm-smi` output: --json and --csv (product name + VRAM), --showproduct, and the three
"Concise Info" table layouts (legacy, pre-6.1.1 stacked ids, 6.1.1+ Node/IDs columns)."""
import csv
import io
import json
import re

from . import Gpu, GpuProbe, looks_integrated

# PCI device ids of AMD parts seen in the recorded samples (https://pci-ids.ucw.cz/read/PC/1002).
# The concise tables print only the id; this turns it into a name a person recognises.
AMD_DEVICE_NAMES = {
    "73bf": "Radeon RX 6800/6800 XT/6900 XT (Navi 21)",
    "73a3": "Radeon PRO W6800 (Navi 21)",
    "744c": "Radeon RX 7900 XT/7900 XTX (Navi 31)",
    "74a0": "Instinct MI300A",
    "164e": "Radeon Graphics (Raphael, integrated)",
    "67df": "Radeon RX 470/480/570/580 (Ellesmere)",
}

_PRODUCT = re.compile(r"^GPU\[(\d+)\]\s*:\s*([^:]+?):\s*(.*)$")
_CONCISE_ID_ROW = re.compile(r"^(\d+)\s+\d+\s+0x([0-9a-fA-F]{4}),")  # 6.1.1+: Device Node DID,GUID
_STACKED_ROW = re.compile(r"^(\d+)\s+\[0x([0-9a-fA-F]{4})\s*:\s*0x[0-9a-fA-F]+\]")  # pre-6.1.1
_LEGACY_ROW = re.compile(r"^(\d+)\s+\d+(?:\.\d+)?c\s")  # "0    33.0c  24.0W ..."


def parse_rocm_smi(text: str) -> GpuProbe:
    stripped = text.strip()
    if "command not found" in stripped or "is not recognized as" in stripped:
        return GpuProbe(problem="rocm-smi is not installed",
                        fix="Install ROCm (amdgpu driver + rocm-smi) for your Radeon/Instinct GPU, then run again.")
    if stripped.startswith("{"):
        return _from_records(json.loads(stripped).values(), "rocm-smi --json")
    if stripped.startswith("device,"):
        return _from_records(csv.DictReader(io.StringIO(stripped)), "rocm-smi --csv")
    if "Card Series" in stripped:
        return _from_records(_product_records(stripped), "rocm-smi --showproduct")
    return _parse_concise(stripped)


def _from_records(records, source: str) -> GpuProbe:
    return GpuProbe(gpus=[_gpu(record, source) for record in records])


def _gpu(record: dict, source: str) -> Gpu:
    device_id = (record.get("Card Model") or "").lower().removeprefix("0x")
    name = record.get("Card Series") or AMD_DEVICE_NAMES.get(device_id) or f"AMD GPU {device_id}"
    vram = record.get("VRAM Total Memory (B)")
    vram_bytes = int(vram) if vram and vram.isdigit() else None
    # A few tens of MB of "VRAM" is an APU's carve-out, not a graphics card.
    integrated = looks_integrated("amd", name) or (vram_bytes is not None and vram_bytes < 512 * 1024 ** 2)
    return Gpu(vendor="amd", name=name, vram_bytes=vram_bytes, device_id=device_id, integrated=integrated,
               gfx=record.get("GFX Version", ""), source=source)


def _product_records(text: str) -> list:
    records = {}
    for line in text.splitlines():
        match = _PRODUCT.match(line.strip())
        if match:
            records.setdefault(int(match.group(1)), {})[match.group(2).strip()] = match.group(3).strip()
    return [records[index] for index in sorted(records)]


def _parse_concise(text: str) -> GpuProbe:
    probe = GpuProbe()
    for line in text.splitlines():
        match = _CONCISE_ID_ROW.match(line) or _STACKED_ROW.match(line)
        if match:
            probe.gpus.append(_gpu({"Card Model": match.group(2)}, "rocm-smi"))
        elif _LEGACY_ROW.match(line):
            # The legacy table has no ids at all: count the cards, name them by index.
            probe.gpus.append(Gpu(vendor="amd", name=f"AMD GPU {_LEGACY_ROW.match(line).group(1)}",
                                  source="rocm-smi"))
    return probe
