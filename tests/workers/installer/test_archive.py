"""Safe extraction: every way out of the install folder is refused, nothing is left behind."""
import io
import tarfile
import zipfile

import pytest

from tests.workers.installer.support import tar_gz
from workers.installer.archive import extract_archive, safe_member_path
from workers.installer.errors import Failure

TOP = "ComfyUI-1.0/"


def write(tmp_path, data: bytes, name="release.tar.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(tmp_path, archive) -> Failure:
    dest = tmp_path / "install" / "ComfyUI"
    with pytest.raises(Failure) as failure:
        extract_archive(archive, dest, strip_components=1)
    assert not dest.exists()
    assert [p.name for p in (tmp_path / "install").iterdir()] == []  # the staging folder is gone too
    assert "refusing to extract" in failure.value.cause and "manifest" in failure.value.fix
    return failure.value


def test_a_genuine_release_is_extracted_with_its_top_folder_stripped(tmp_path):
    archive = write(tmp_path, tar_gz({TOP + "main.py": b"print()", TOP + "comfy/sd.py": b"x"},
                                     links={TOP + "comfy/alias.py": "sd.py"}))
    dest = tmp_path / "ComfyUI"
    extract_archive(archive, dest, strip_components=1)
    assert (dest / "main.py").read_bytes() == b"print()"
    assert (dest / "comfy" / "alias.py").resolve() == (dest / "comfy" / "sd.py").resolve()


def test_a_path_escaping_member_is_refused(tmp_path):
    archive = write(tmp_path, tar_gz({TOP + "main.py": b"", TOP + "../../evil.py": b"owned"}))
    failure = refused(tmp_path, archive)
    assert "'..'" in failure.cause
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "install" / "evil.py").exists()


def test_an_absolute_member_is_refused(tmp_path):
    archive = write(tmp_path, tar_gz({TOP + "main.py": b"", "/tmp/evil.py": b"owned"}))
    assert "absolute" in refused(tmp_path, archive).cause


@pytest.mark.parametrize("name", ["C:/Windows/evil.py", "ComfyUI-1.0\\..\\..\\evil.py"])
def test_windows_style_escapes_are_refused(name):
    with pytest.raises(Failure):
        safe_member_path(name, 1)


def test_a_symlink_pointing_outside_the_tree_is_refused(tmp_path):
    archive = write(tmp_path, tar_gz({TOP + "main.py": b""}, links={TOP + "models": "../../../home/user"}))
    assert "outside the folder" in refused(tmp_path, archive).cause


def test_an_absolute_symlink_is_refused(tmp_path):
    archive = write(tmp_path, tar_gz({TOP + "main.py": b""}, links={TOP + "passwd": "/etc/passwd"}))
    refused(tmp_path, archive)


def test_a_chain_of_links_that_climbs_out_is_refused(tmp_path):
    # Each link looks harmless by name; together x/up/.. is the parent of the tree.
    archive = write(tmp_path, tar_gz({TOP + "main.py": b"", TOP + "x/keep": b""},
                                     links={TOP + "x/up": "..", TOP + "escape": "x/up/.."}))
    refused(tmp_path, archive)


def test_a_device_file_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(TOP + "dev")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)
    assert "device" in refused(tmp_path, write(tmp_path, buffer.getvalue())).cause


def test_setuid_bits_are_dropped(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(TOP + "run.sh")
        info.size, info.mode = 2, 0o4777
        tar.addfile(info, io.BytesIO(b"hi"))
    extract_archive(write(tmp_path, buffer.getvalue()), tmp_path / "ComfyUI", strip_components=1)
    assert (tmp_path / "ComfyUI" / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_a_zip_with_an_escaping_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(TOP + "main.py", "")
        bundle.writestr(TOP + "../../evil.py", "owned")
    refused(tmp_path, write(tmp_path, buffer.getvalue(), "release.zip"))


def test_a_genuine_zip_release_is_extracted(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(TOP, "")
        bundle.writestr(TOP + "main.py", "print()")
    extract_archive(write(tmp_path, buffer.getvalue(), "r.zip"), tmp_path / "ComfyUI", strip_components=1)
    assert (tmp_path / "ComfyUI" / "main.py").read_text() == "print()"


def test_a_damaged_archive_fails_with_what_to_do(tmp_path):
    with pytest.raises(Failure) as failure:
        extract_archive(write(tmp_path, b"\x1f\x8b not really gzip"), tmp_path / "ComfyUI")
    assert "damaged" in failure.value.cause and "download it afresh" in failure.value.fix
    assert not (tmp_path / "ComfyUI").exists()


def test_it_never_extracts_over_an_existing_folder(tmp_path):
    (tmp_path / "ComfyUI").mkdir()
    with pytest.raises(Failure):
        extract_archive(write(tmp_path, tar_gz({TOP + "main.py": b""})), tmp_path / "ComfyUI")
