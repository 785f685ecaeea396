"""Windows: Win32_VideoController (wmic table, PowerShell Format-Table / Format-List) and
Get-PnpDevice. Vendor from `VEN_xxxx` in the PnP id, else from the name."""
import re

from . import Gpu, GpuProbe, looks_integrated, vendor_from_id, vendor_from_name

_PNP = re.compile(r"VEN_([0-9A-Fa-f]{4})&DEV_([0-9A-Fa-f]{4})")
_LIST_LINE = re.compile(r"^(\w+)\s*:\s?(.*)$")
# AdapterRAM is a uint32: 4 GB and up all read as ~4293918720. A lower bound, nothing more.
_ADAPTER_RAM_CAP = 4_000_000_000

# The query the installer runs (probe.py); Format-List keeps long names and ids whole.
QUERY = ("Get-CimInstance Win32_VideoController | "
         "Format-List Name,AdapterRAM,PNPDeviceID,DriverVersion")


def parse_windows(text: str) -> GpuProbe:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return GpuProbe()
    listed = sum(bool(_LIST_LINE.match(line)) for line in lines)
    records = _list_records(text) if listed > len(lines) / 2 else _table_records(lines)
    return GpuProbe(gpus=[_gpu(record) for record in records if _name(record)])


def _list_records(text: str) -> list:
    """Format-List: "Key : value" lines, one blank-line separated block per adapter."""
    records, current = [], {}
    for line in text.splitlines():
        match = _LIST_LINE.match(line.strip())
        if match:
            if match.group(1) in current:  # a repeated key starts the next adapter
                records.append(current)
                current = {}
            current[match.group(1)] = match.group(2).strip()
        elif not line.strip() and current:
            records.append(current)
            current = {}
    return records + ([current] if current else [])


def _table_records(lines: list) -> list:
    """wmic / Format-Table: fixed-width columns that start where the header words start."""
    header, rows = lines[0], lines[1:]
    if rows and set(rows[0].replace(" ", "")) == {"-"}:
        rows = rows[1:]  # PowerShell's dashed underline
    columns = [(m.group(0), m.start()) for m in re.finditer(r"\S+", header)]
    records = []
    for row in rows:
        bounds = [start for _, start in columns[1:]] + [None]
        records.append({name: row[start:end].strip() for (name, start), end in zip(columns, bounds)})
    return records


def _name(record: dict) -> str:
    return record.get("Name") or record.get("FriendlyName") or record.get("Caption") or ""


def _gpu(record: dict) -> Gpu:
    name = _name(record)
    pnp = _PNP.search(record.get("PNPDeviceID") or record.get("InstanceId") or "")
    vendor = vendor_from_id(pnp.group(1)) if pnp else vendor_from_name(name)
    ram = record.get("AdapterRAM", "")
    vram = int(ram) if ram.isdigit() else None
    return Gpu(vendor=vendor, name=name, vram_bytes=vram, vram_exact=vram is None or vram < _ADAPTER_RAM_CAP,
               device_id=pnp.group(2).lower() if pnp else "", integrated=looks_integrated(vendor, name),
               source="windows")
