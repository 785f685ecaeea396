"""Proof that an unpacked ComfyUI release is the commit the manifest pins, whatever bytes the
archive had.

GitHub makes tag tarballs with `git archive` on demand and does not promise the same bytes
twice (compression settings changed in 2023 and every pinned SHA-256 broke), so a checksum of
the archive is a poor pin. What *is* stable is the content: `git archive` writes the commit
id in the tarball's pax header (a zip's comment), and the files it unpacks hash, the way git
hashes them, to the commit's tree id. So the manifest pins `commit` and `tree`; the archive's
own SHA-256 is optional and informative.

The tree id is computed exactly as git does: a blob is sha1(b"blob <size>\\0" + bytes), a
tree lists (mode, name, id) sorted by name with folders compared as "name/", and folders
without files do not exist for git. Modes are 100644, 100755 (any execute bit) and 120000
(a symbolic link, whose target is the blob).
"""
import hashlib
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

_FILE, _EXECUTABLE, _LINK, _FOLDER = b"100644", b"100755", b"120000", b"40000"


def archive_tree(archive: Path, strip_components: int = 1) -> str:
    """The git tree id of what the archive unpacks to (after stripping its top folders).

    Read from the archive's members, not from the unpacked folder, so it is the same on every
    system (Windows has no execute bit to read back). Raises tarfile.TarError/zipfile.BadZipFile
    on a damaged archive."""
    root: dict = {}
    for path, mode, digest in _members(archive):
        parts = PurePosixPath(path).parts[strip_components:]
        if not parts:
            continue
        folder = root
        for part in parts[:-1]:
            folder = folder.setdefault(part, {})
        folder[parts[-1]] = (mode, digest)
    return _tree(root) or _hash(b"tree", b"")


def archive_commit(archive: Path) -> Optional[str]:
    """The commit id `git archive` recorded in the archive, or None when it has none."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                comment = bundle.comment.decode("ascii", "replace")
        else:
            with tarfile.open(archive) as tar:
                tar.next()  # the pax global header is read with the first member
                comment = tar.pax_headers.get("comment", "")
    except (OSError, tarfile.TarError, zipfile.BadZipFile):
        return None
    comment = comment.strip().lower()
    return comment if len(comment) == 40 and all(c in "0123456789abcdef" for c in comment) else None


def _members(archive: Path) -> Iterator[tuple]:
    """(path, mode, blob id) of every file and link; folders are implied by the paths."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                if info.is_dir():
                    continue
                unix = info.external_attr >> 16
                with bundle.open(info) as data:
                    blob = _blob(data, info.file_size)
                yield info.filename, _LINK if stat.S_ISLNK(unix) else _mode(unix), blob
        return
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.issym():
                yield member.name, _LINK, _hash(b"blob", member.linkname.encode())
            elif member.isfile():
                yield member.name, _mode(member.mode), _blob(tar.extractfile(member), member.size)


def _mode(bits: int) -> bytes:
    return _EXECUTABLE if bits & 0o111 else _FILE


def _tree(folder: dict) -> Optional[str]:
    entries = []
    for name, value in folder.items():
        if isinstance(value, dict):
            digest = _tree(value)
            if digest:  # git has no empty folders
                entries.append((_FOLDER, name.encode(), digest))
        else:
            entries.append((value[0], name.encode(), value[1]))
    if not entries:
        return None
    entries.sort(key=lambda e: e[1] + (b"/" if e[0] == _FOLDER else b""))
    body = b"".join(mode + b" " + name + b"\0" + bytes.fromhex(digest) for mode, name, digest in entries)
    return _hash(b"tree", body)


def _blob(stream, size: int) -> str:
    hasher = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    for block in iter(lambda: stream.read(1024 * 1024), b""):
        hasher.update(block)
    return hasher.hexdigest()


def _hash(kind: bytes, body: bytes) -> str:
    return hashlib.sha1(kind + b" %d\0" % len(body) + body, usedforsecurity=False).hexdigest()
