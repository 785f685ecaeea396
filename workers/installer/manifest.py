"""The manifest: which ComfyUI release and which models to install (deploy/comfyui-manifest.json).

Format (see deploy/INSTALLER.md):

    {"format": 1,
     "comfyui": {"version": "0.8.0", "url": ".../v{version}.tar.gz", "sha256": "<64 hex>" | null,
                 "commit": "<40 hex>" | null, "tree": "<40 hex>" | null,
                 "extra_requirements": ["requests"],
                 "size": <bytes> | null, "approx_size": <bytes>, "strip_components": 1,
                 "requirements": "requirements.txt"},
     "models": [{"name": "...", "url": "...", "size": <bytes>, "sha256": "<64 hex>",
                 "dest": "models/checkpoints", "filename": "x.safetensors", "optional": false}]}

`dest` is relative to the ComfyUI folder. Every model needs its size (for resume and the
disk check) and its sha256 (nothing unverified is moved into place).
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

from .errors import Failure

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "comfyui-manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_ID = re.compile(r"^[0-9a-f]{40}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Artifact:
    name: str
    url: str
    dest: str  # folder relative to the ComfyUI folder
    filename: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    optional: bool = False
    loads_with: str = ""  # "NodeClass.input" that loads it, e.g. "UNETLoader.unet_name"
    templates: tuple = ()  # the bundled prompt templates that use it (workers/workflows)

    @property
    def relative_path(self) -> str:
        return str(PurePosixPath(self.dest) / self.filename)


@dataclass(frozen=True)
class Release:
    version: str
    url: str
    sha256: Optional[str]
    size: Optional[int]
    approx_size: int
    strip_components: int
    requirements: str
    commit: Optional[str] = None  # the git commit `git archive` records in the archive
    tree: Optional[str] = None  # that commit's tree id: what the unpacked files must hash to (gittree.py)
    extra_requirements: tuple = ()  # requirement lines the release needs but its requirements file omits

    @property
    def archive_name(self) -> str:
        suffix = ".zip" if self.url.endswith(".zip") else ".tar.gz"
        return f"ComfyUI-{self.version}{suffix}"


@dataclass(frozen=True)
class Manifest:
    comfyui: Release
    models: list = field(default_factory=list)

    def selected_models(self, *, skip_models: bool = False, with_optional: bool = False) -> list:
        if skip_models:
            return []
        return [m for m in self.models if with_optional or not m.optional]


def load_manifest(path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise Failure(f"cannot read the manifest {path}: {error.strerror}", "pass --manifest with a readable file")
    except ValueError as error:
        raise Failure(f"the manifest {path} is not valid JSON ({error})", "fix the JSON syntax at that position")
    return parse_manifest(data, str(path))


def parse_manifest(data: dict, where: str = "manifest") -> Manifest:
    if not isinstance(data, dict) or data.get("format") != 1:
        raise _invalid(where, "format", "must be 1")
    release = _release(data.get("comfyui") or {}, f"{where}: comfyui")
    models = [_artifact(entry, f"{where}: models[{index}]") for index, entry in enumerate(data.get("models") or [])]
    return Manifest(comfyui=release, models=models)


def _release(entry: dict, where: str) -> Release:
    version = _text(entry, "version", where)
    return Release(
        version=version, url=_url(entry.get("url", "").replace("{version}", version), where),
        sha256=_sha256(entry, where, required=False), size=_size(entry, "size", where, required=False),
        approx_size=_size(entry, "approx_size", where, required=False) or 50_000_000,
        strip_components=int(entry.get("strip_components", 1)),
        requirements=_relative(entry.get("requirements", "requirements.txt"), "requirements", where),
        commit=_git_id(entry, "commit", where), tree=_git_id(entry, "tree", where),
        extra_requirements=_requirement_lines(entry, where),
    )


def _requirement_lines(entry: dict, where: str) -> tuple:
    value = entry.get("extra_requirements") or []
    if not isinstance(value, list) or not all(isinstance(line, str) and re.match(r"^[A-Za-z0-9][\w.\-\[\],<>=!~ ]*$",
                                                                                   line) for line in value):
        raise _invalid(where, "extra_requirements", "must be a list of requirement lines such as \"requests>=2.32\"")
    return tuple(line.strip() for line in value)


def _git_id(entry: dict, key: str, where: str) -> Optional[str]:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _GIT_ID.match(value.lower()):
        raise _invalid(where, key, "must be a git object id (40 hexadecimal characters)")
    return value.lower()


def _artifact(entry: dict, where: str) -> Artifact:
    filename = _text(entry, "filename", where)
    if not _FILENAME.match(filename):
        raise _invalid(where, "filename", "must be a plain file name (letters, digits, . _ + -)")
    return Artifact(
        name=entry.get("name") or filename, url=_url(entry.get("url", ""), where),
        dest=_relative(_text(entry, "dest", where), "dest", where), filename=filename,
        size=_size(entry, "size", where, required=True), sha256=_sha256(entry, where, required=True),
        optional=bool(entry.get("optional", False)), loads_with=_loader(entry, where),
        templates=tuple(str(name) for name in entry.get("templates") or ()),
    )


def _loader(entry: dict, where: str) -> str:
    value = entry.get("loads_with") or ""
    if value and not re.match(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+$", value):
        raise _invalid(where, "loads_with", "must be NodeClass.input_name")
    return value


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(where, key, "is missing")
    return value.strip()


def _url(value: str, where: str) -> str:
    if not re.match(r"^https?://[^\s/]+/\S*$", value or ""):
        raise _invalid(where, "url", "must be an http(s) URL")
    return value


def _sha256(entry: dict, where: str, required: bool) -> Optional[str]:
    value = entry.get("sha256")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise _invalid(where, "sha256", "must be 64 hexadecimal characters")
    return value.lower()


def _size(entry: dict, key: str, where: str, required: bool) -> Optional[int]:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _invalid(where, key, "must be a positive number of bytes")
    return value


def _relative(value: str, key: str, where: str) -> str:
    # The manifest may come from elsewhere: it must never write outside the ComfyUI folder.
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", value):
        raise _invalid(where, key, "must be a relative path inside the ComfyUI folder")
    return str(path)


def _invalid(where: str, key: str, problem: str) -> Failure:
    return Failure(f"{where}: '{key}' {problem}", "correct the manifest (format: deploy/INSTALLER.md)")
