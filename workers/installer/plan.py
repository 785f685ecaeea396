"""What an install will do on this machine: what is still missing, how big, how long, and
whether the disk can take it. Computed by the check step, shown before anything downloads."""
import json
from pathlib import Path

from .detect import GIB
from .download import partial_bytes
from .errors import Failure
from .layout import RELEASE_MARKER, Layout
from .progress import human_bytes, human_seconds

# For the time estimate only: 100 Mbit/s, a common home line. The real speed shows live.
ASSUMED_BYTES_PER_SECOND = 12_500_000
ENV_SETUP_SECONDS = 120  # unpacking wheels, byte-compiling: on top of their download time
MARGIN = GIB  # logs, pip's cache growth, ComfyUI's first outputs
# SD 1.5 at 512x512 runs in about 4 GB of VRAM; below that ComfyUI needs --lowvram.
MIN_COMFORTABLE_VRAM = 4 * GIB


def release_installed(layout: Layout, release) -> bool:
    try:
        marker = json.loads((layout.comfy_dir / RELEASE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == release.version and marker.get("url") == release.url


def model_path(layout: Layout, artifact) -> Path:
    return layout.comfy_dir / artifact.dest / artifact.filename


def make_plan(*, layout: Layout, manifest, models: list, system, build, env_ready: bool, free: int) -> dict:
    items = [_release_item(layout, manifest.comfyui)] + [_model_item(layout, m) for m in models]
    items.append({"name": f"PyTorch ({build.key}) and ComfyUI's requirements", "kind": "environment",
                  "size": build.disk_bytes, "present": env_ready,
                  "to_download": 0 if env_ready else build.download_bytes,
                  "disk": 0 if env_ready else build.disk_bytes})
    download = sum(item["to_download"] for item in items)
    disk = sum(item["disk"] for item in items)
    return {
        "path": str(layout.root), "system": system.as_dict(), "torch": build.as_dict(), "items": items,
        "download_bytes": download, "disk_needed": disk + MARGIN if disk else 0, "disk_free": free,
        "estimate_seconds": _estimate(download, env_ready), "warnings": _warnings(system, models),
    }


def check_disk(plan: dict, models: list) -> None:
    if plan["disk_free"] >= plan["disk_needed"]:
        return
    fix = "free up space on that disk or choose another --path"
    if models:
        fix += f" (or use --skip-models, which saves {human_bytes(sum(m.size for m in models))})"
    raise Failure(f"not enough free disk space in {plan['path']}: {human_bytes(plan['disk_needed'])} needed, "
                  f"{human_bytes(plan['disk_free'])} free", fix)


def summary(plan: dict) -> str:
    primary = plan["system"]["primary"]
    gpu = primary["name"] if primary else "no GPU"
    vram = f", {human_bytes(primary['vram_bytes'])} VRAM" if primary and primary.get("vram_bytes") else ""
    return (f"{gpu}{vram}; PyTorch {plan['torch']['key']}; {human_bytes(plan['download_bytes'])} to download "
            f"(about {human_seconds(plan['estimate_seconds'])}); {human_bytes(plan['disk_free'])} free, "
            f"{human_bytes(plan['disk_needed'])} needed")


def _release_item(layout: Layout, release) -> dict:
    present = release_installed(layout, release)
    size = release.size or release.approx_size
    archive = layout.downloads / release.archive_name
    return {"name": f"ComfyUI {release.version}", "kind": "release", "size": size, "present": present,
            "to_download": 0 if present else max(0, size - partial_bytes(archive)),
            "disk": 0 if present else 3 * size}  # archive + extracted tree + staging copy


def _model_item(layout: Layout, artifact) -> dict:
    path = model_path(layout, artifact)
    present = path.exists() and path.stat().st_size == artifact.size  # verified in the models step
    remaining = 0 if present else max(0, artifact.size - partial_bytes(path))
    return {"name": artifact.name, "kind": "model", "size": artifact.size, "present": present,
            "to_download": remaining, "disk": remaining}


def _estimate(download: int, env_ready: bool) -> int:
    return int(download / ASSUMED_BYTES_PER_SECOND) + (0 if env_ready else ENV_SETUP_SECONDS)


def _warnings(system, models: list) -> list:
    warnings = []
    primary = system.primary
    if primary and primary.vram_bytes and primary.vram_exact and primary.vram_bytes < MIN_COMFORTABLE_VRAM \
            and not primary.integrated:
        warnings.append(f"{primary.name} has {human_bytes(primary.vram_bytes)} of VRAM: ComfyUI may need "
                        "--lowvram (add it to the start script)")
    if primary is None or primary.integrated:
        warnings.append("no discrete GPU: images will be generated on the CPU, which is slow")
    return warnings
