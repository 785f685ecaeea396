"""Safe extraction of the ComfyUI release archive (.tar.gz or .zip).

Every member is checked before anything is written: no absolute paths or drive letters, no
`..`, no links pointing outside the tree, no devices or FIFOs. The archive is unpacked into a
temporary sibling folder and renamed into place only when all of it succeeded, so the
destination is either absent or complete.
"""
import copy
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import Failure


def extract_archive(archive: Path, dest: Path, *, strip_components: int = 1) -> None:
    if dest.exists():
        raise Failure(f"{dest} already exists", "remove it or choose another install path")
    staging = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, strip_components)
        else:
            _extract_tar(archive, staging, strip_components)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def safe_member_path(name: str, strip_components: int = 0) -> str:
    """The member's path inside the tree after stripping, or "" for a stripped-away entry.
    Raises Failure for anything that could land outside the tree."""
    cleaned = name.replace("\\", "/")
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or "\0" in cleaned:
        raise _unsafe(name, "is an absolute path")
    parts = [part for part in PurePosixPath(cleaned).parts if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "climbs out of the folder with '..'")
    return "/".join(parts[strip_components:])


def _link_stays_inside(member_path: str, target: str) -> bool:
    if target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
        return False
    depth = len(PurePosixPath(member_path).parts) - 1  # folders above the link inside the tree
    for part in PurePosixPath(target.replace("\\", "/")).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _extract_tar(archive: Path, staging: Path, strip: int) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in (_checked_tar_member(m, strip) for m in tar.getmembers()) if m]
            # Our checks above give the clear messages. Python's "data" filter is the second
            # layer: it resolves links on disk while extracting, which a check of names alone
            # cannot do for a chain of links (x/l -> .., then y -> x/l/..).
            tar.extractall(staging, members=members, **_FILTER)
    except tarfile.TarError as error:
        member = getattr(error, "tarinfo", None)
        if member is not None:  # a FilterError: the data filter refused this member
            raise _unsafe(member.name, f"was refused by the extraction filter ({error})")
        raise Failure(f"the archive {archive.name} is damaged ({error})",
                      "delete it and run the installer again to download it afresh")


# Python 3.10.12+/3.11.4+ have extraction filters; older ones get the stricter link rule below.
_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _checked_tar_member(member: tarfile.TarInfo, strip: int):
    path = safe_member_path(member.name, strip)
    if not path:
        return None
    if member.isdev() or member.isfifo():
        raise _unsafe(member.name, "is a device or FIFO")
    if member.issym() and (not _link_stays_inside(path, member.linkname) or (not _FILTER and ".." in member.linkname)):
        raise _unsafe(member.name, f"is a link to {member.linkname}, outside the folder")
    renamed = copy.copy(member)
    renamed.name = path
    renamed.mode = member.mode & 0o755  # no setuid/setgid/sticky or world-writable bits
    if member.islnk():
        # A hard link names another member by its archive path: strip and check it the same way.
        renamed.linkname = safe_member_path(member.linkname, strip)
        if not renamed.linkname:
            raise _unsafe(member.name, f"is a hard link to {member.linkname}, outside the folder")
    return renamed


def _extract_zip(archive: Path, staging: Path, strip: int) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = [(info, safe_member_path(info.filename, strip)) for info in bundle.infolist()]
            for info, path in entries:
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _unsafe(info.filename, "is a symbolic link (not supported in zip archives)")
            for info, path in entries:
                _write_zip_entry(bundle, info, staging, path)
    except zipfile.BadZipFile as error:
        raise Failure(f"the archive {archive.name} is damaged ({error})",
                      "delete it and run the installer again to download it afresh")


def _write_zip_entry(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path, path: str) -> None:
    if not path:
        return
    target = staging / path
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with bundle.open(info) as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, 1024 * 1024)


def _unsafe(name: str, why: str) -> Failure:
    return Failure(f"the archive member '{name}' {why}; refusing to extract it",
                   "the archive is not a genuine ComfyUI release: check the manifest's URL and sha256")
