"""`nvidia-smi` in all the shapes it prints: the table (R440 layout through the R610
KMD/UMD header, Linux and Windows/WDDM, MIG), `-L`, `--version`, `--query-gpu --format=csv`,
and its error messages, each of which needs a different fix."""
import csv
import io
import re

from . import MIB, Gpu, GpuProbe

# (text in the output, what it means, what the user should do)
PROBLEMS = [
    ("command not found", "nvidia-smi is not installed (no NVIDIA driver)",
     "Install the NVIDIA driver for your GPU, reboot, then run the installer again."),
    ("is not recognized as", "nvidia-smi is not installed (no NVIDIA driver)",
     "Install the NVIDIA driver for your GPU, reboot, then run the installer again."),
    ("Driver/library version mismatch", "the NVIDIA driver was updated but the old kernel module is still loaded",
     "Reboot the machine so the new driver loads, then run the installer again."),
    ("couldn't communicate with the NVIDIA driver", "the NVIDIA kernel driver is not loaded",
     "Reinstall the NVIDIA driver for the running kernel (a kernel update often causes this), reboot, "
     "then run the installer again."),
    ("No devices were found", "the NVIDIA driver is loaded but sees no GPU",
     "Check that the card is seated and powered and that nouveau is not bound to it; "
     "`nvidia-smi` must list the GPU before the installer can use it."),
    ("Failed to initialize NVML", "the NVIDIA management library could not start",
     "Reinstall the NVIDIA driver and reboot, then run the installer again."),
]

_DRIVER = re.compile(r"(?:Driver|KMD) Version:\s*([\d.]+)")
_CUDA = re.compile(r"CUDA (?:UMD )?Version:\s*([\d.]+)")
# "|   0  NVIDIA GeForce RTX 4080 ...    Off |   00000000:01:00.0  On |" (the bus id anchors
# the row, so MIG and process rows, which have none, never match).
_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s{2,}(?:On|Off|WDDM|TCC|MCDM|N/A)\s*\|\s*[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:")
_MEMORY = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
_LIST = re.compile(r"^GPU (\d+): (.+?) \(UUID: ")


def parse_nvidia_smi(text: str) -> GpuProbe:
    """Any output of nvidia-smi, sniffed by shape."""
    for needle, problem, fix in PROBLEMS:
        if needle in text:
            return GpuProbe(problem=problem, fix=fix)
    first = text.lstrip().split("\n", 1)[0]
    if "," in first and "name" in first and "|" not in first:
        return _parse_csv(text)
    if _LIST.match(first):
        return _parse_list(text)
    if "NVIDIA-SMI version" in text:
        return _parse_version(text)
    return _parse_table(text)


def _parse_table(text: str) -> GpuProbe:
    probe = GpuProbe(driver_version=_first(_DRIVER, text), cuda_version=_first(_CUDA, text))
    lines = text.splitlines()
    for number, line in enumerate(lines):
        row = _ROW.match(line)
        if not row:
            continue
        memory = _MEMORY.search(lines[number + 1]) if number + 1 < len(lines) else None
        probe.gpus.append(Gpu(vendor="nvidia", name=_untruncate(row.group(2)), source="nvidia-smi",
                              vram_bytes=int(memory.group(2)) * MIB if memory else None))
    return probe


def _untruncate(name: str) -> str:
    # The table cuts long names with "..."; keep what is there and say it was cut.
    name = name.strip()
    return name.rstrip(". ") + "…" if name.endswith("...") else name


def _parse_list(text: str) -> GpuProbe:
    gpus = [Gpu(vendor="nvidia", name=m.group(2), source="nvidia-smi -L")
            for m in map(_LIST.match, text.splitlines()) if m]
    return GpuProbe(gpus=gpus)


def _parse_version(text: str) -> GpuProbe:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    # R610 reports the old keys as "Deprecated, see ..." and the numbers under new names.
    driver = _numeric(fields.get("driver version")) or _numeric(fields.get("kmd version"))
    cuda = _numeric(fields.get("cuda version")) or _numeric(fields.get("cuda umd version"))
    return GpuProbe(driver_version=driver, cuda_version=cuda)


def _parse_csv(text: str) -> GpuProbe:
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    header = [re.sub(r"\s*\[.*\]$", "", name.strip()) for name in rows[0]]
    probe = GpuProbe()
    for values in rows[1:]:
        row = dict(zip(header, (v.strip() for v in values)))
        probe.driver_version = probe.driver_version or _numeric(row.get("driver_version"))
        probe.gpus.append(Gpu(vendor="nvidia", name=row.get("name", "NVIDIA GPU"), vram_bytes=_csv_memory(row),
                              device_id=_device_id(row.get("pci.device_id", "")),
                              compute_capability=_numeric(row.get("compute_cap")), source="nvidia-smi --query-gpu"))
    return probe


def _csv_memory(row: dict):
    total = _mib(row.get("memory.total"))
    if total is not None:
        return total
    # Some field lists omit memory.total; reserved + used + free adds up to it.
    parts = [_mib(row.get(key)) for key in ("memory.reserved", "memory.used", "memory.free")]
    return sum(parts) if all(part is not None for part in parts) else None


def _mib(value):
    match = re.match(r"^(\d+)(?:\s*MiB)?$", value or "")
    return int(match.group(1)) * MIB if match else None


def _device_id(value: str) -> str:
    # pci.device_id is "0x270210DE": device id in the high 16 bits, vendor id in the low 16.
    match = re.match(r"^0x([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})$", value)
    return match.group(1).lower() if match else ""


def _numeric(value) -> str:
    return value if value and re.match(r"^\d+(\.\d+)*$", value) else ""


def _first(pattern, text: str) -> str:
    match = pattern.search(text)
    return match.group(1) if match else ""
