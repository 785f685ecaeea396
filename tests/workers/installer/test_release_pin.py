"""The ComfyUI release is pinned by its git commit's content, not by the archive's bytes.

The archives here are made by real `git archive` (tar.gz and zip), as GitHub makes its tag
tarballs, and the tree ids they must hash to come from `git rev-parse HEAD^{tree}`."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.workers.installer.support import STANDIN_MAIN, ArtifactServer, FakeRunner, hooks_for, sha256, tar_gz
from workers.installer.errors import Failure, InstallError
from workers.installer.gittree import archive_commit, archive_tree
from workers.installer.manifest import DEFAULT_MANIFEST, load_manifest, parse_manifest
from workers.installer.pipeline import Installer, Options

ROOT = Path(__file__).resolve().parents[3]
_GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def _git(repo: Path, *args) -> str:
    return subprocess.run([*_GIT, "-C", str(repo), *args], check=True, capture_output=True).stdout.decode().strip()


def _repo(tmp_path: Path, files: dict, executable=(), links=None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    for name in executable:
        os.chmod(repo / name, 0o755)
    for name, target in (links or {}).items():
        os.symlink(target, repo / name)
    (repo / "empty-folder").mkdir()  # git keeps no empty folders: neither may the tree id
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "release")
    return repo


def _archive(repo: Path, out: Path, fmt: str, prefix: str = "ComfyUI-9.9.9/") -> Path:
    subprocess.run([*_GIT, "-C", str(repo), "archive", f"--format={fmt}", f"--prefix={prefix}", "-o", str(out),
                    "HEAD"], check=True)
    return out


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_the_tree_id_of_a_git_archive_is_the_commits_tree(tmp_path, fmt):
    # Names chosen for git's ordering rule: the folder "a" sorts as "a/", after "a-b" and "a.txt".
    repo = _repo(tmp_path, {"a.txt": b"1\n", "a-b": b"2\n", "a/b/x.txt": b"hi\n", "run.sh": b"#!/bin/sh\n",
                            "c/z": b"z" * 70000}, executable=["run.sh"], links={"link": "a.txt"})
    archive = _archive(repo, tmp_path / f"release.{fmt}", fmt)

    assert archive_tree(archive, strip_components=1) == _git(repo, "rev-parse", "HEAD^{tree}")
    assert archive_commit(archive) == _git(repo, "rev-parse", "HEAD")
    assert archive_tree(archive, strip_components=0) != _git(repo, "rev-parse", "HEAD^{tree}")  # the prefix counts


def test_an_executable_bit_or_one_byte_changes_the_tree(tmp_path):
    repo = _repo(tmp_path, {"main.py": b"print(1)\n", "run.sh": b"#!/bin/sh\n"}, executable=["run.sh"])
    pinned = _git(repo, "rev-parse", "HEAD^{tree}")
    os.chmod(repo / "run.sh", 0o644)
    _git(repo, "commit", "-qam", "not executable")
    assert archive_tree(_archive(repo, tmp_path / "a.tar.gz", "tar.gz")) not in (pinned, None)
    (repo / "main.py").write_bytes(b"print(2)\n")
    _git(repo, "commit", "-qam", "one byte")
    assert archive_tree(_archive(repo, tmp_path / "b.tar.gz", "tar.gz")) != pinned


def test_an_archive_without_a_recorded_commit_says_so(tmp_path):
    (tmp_path / "plain.tar.gz").write_bytes(tar_gz({"top/main.py": b"x"}))
    assert archive_commit(tmp_path / "plain.tar.gz") is None


def _standin_repo(tmp_path: Path) -> Path:
    return _repo(tmp_path, {"main.py": STANDIN_MAIN.encode(), "requirements.txt": b"aiohttp\n",
                            "models/checkpoints/put_checkpoints_here": b""})


def _pinned_install(tmp_path, server, archive_bytes: bytes, repo: Path, **release) -> Installer:
    url = server.add("/ComfyUI-9.9.9.tar.gz", archive_bytes)
    manifest = {"format": 1, "comfyui": {"version": "9.9.9", "url": url, "strip_components": 1,
                                         "commit": _git(repo, "rev-parse", "HEAD"),
                                         "tree": _git(repo, "rev-parse", "HEAD^{tree}"), **release},
                "models": []}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    options = Options(path=str(tmp_path / "install"), manifest=str(path), service=False, start=False)
    return Installer(options, hooks_for(tmp_path, FakeRunner()))


def test_a_release_pinned_by_tree_installs_although_its_tarball_bytes_changed(tmp_path):
    repo = _standin_repo(tmp_path)
    archive = _archive(repo, tmp_path / "release.tar.gz", "tar.gz").read_bytes()
    with ArtifactServer() as server:
        installer = _pinned_install(tmp_path, server, archive, repo, sha256="0" * 64)  # GitHub re-gzipped it
        installer.run()

    assert installer.state("extract").status == "done"
    assert "differs from the manifest's" in installer.state("download").message
    marker = json.loads((installer.layout.comfy_dir / ".comfy-hybrid-release.json").read_text())
    assert marker["tree"] == _git(repo, "rev-parse", "HEAD^{tree}") and marker["commit"] == _git(repo, "rev-parse",
                                                                                                  "HEAD")
    assert (installer.layout.comfy_dir / "main.py").read_text() == STANDIN_MAIN


def test_an_archive_with_other_files_is_refused_deleted_and_fetched_afresh_next_time(tmp_path):
    repo = _standin_repo(tmp_path)
    genuine = _archive(repo, tmp_path / "genuine.tar.gz", "tar.gz").read_bytes()
    pinned_commit, pinned_tree = _git(repo, "rev-parse", "HEAD"), _git(repo, "rev-parse", "HEAD^{tree}")
    (repo / "main.py").write_text(STANDIN_MAIN + "\n# changed upstream\n")
    _git(repo, "commit", "-qam", "another version")
    other = _archive(repo, tmp_path / "other.tar.gz", "tar.gz").read_bytes()

    with ArtifactServer() as server:
        installer = _pinned_install(tmp_path, server, other, repo, commit=pinned_commit, tree=pinned_tree)
        with pytest.raises(InstallError) as failure:
            installer.run()
        assert failure.value.step == "extract"
        assert re.search(r"is not ComfyUI 9\.9\.9: its files hash to tree [0-9a-f]{40}", failure.value.cause)
        assert _git(repo, "rev-parse", "HEAD") in failure.value.cause  # the commit the archive records
        assert not installer.layout.comfy_dir.exists()  # nothing unpacked
        assert not list(installer.layout.downloads.glob("*.tar.gz"))  # and the bad archive is gone

        server.files["/ComfyUI-9.9.9.tar.gz"] = genuine  # the URL serves the pinned release again
        again = _pinned_install(tmp_path, server, genuine, repo, commit=pinned_commit, tree=pinned_tree)
        again.run()
    assert again.state("extract").status == "done" and (again.layout.comfy_dir / "main.py").exists()
    assert sha256(genuine) != sha256(other)


def test_a_manifest_with_a_malformed_commit_or_tree_is_refused():
    base = {"version": "1", "url": "https://example.invalid/x.tar.gz"}
    for key in ("commit", "tree"):
        with pytest.raises(Failure) as failure:
            parse_manifest({"format": 1, "comfyui": {**base, key: "v0.8.0"}})
        assert f"'{key}' must be a git object id" in failure.value.cause


def test_the_shipped_manifest_and_the_cloud_image_pin_the_same_comfyui_commit():
    release = load_manifest(DEFAULT_MANIFEST).comfyui
    dockerfile = (ROOT / "deploy" / "runpod-worker" / "Dockerfile").read_text()
    assert re.search(r"^ARG COMFYUI_VERSION=v(\S+)$", dockerfile, re.M).group(1) == release.version
    assert re.search(r"^ARG COMFYUI_COMMIT=(\S+)$", dockerfile, re.M).group(1) == release.commit
    assert release.tree and release.commit  # pinned by content (GitHub's tarball bytes are not stable)



def test_extra_requirements_are_requirement_lines():
    base = {"version": "1", "url": "https://example.invalid/x.tar.gz"}
    assert parse_manifest({"format": 1, "comfyui": {**base, "extra_requirements": ["requests>=2.32"]}}) \
        .comfyui.extra_requirements == ("requests>=2.32",)
    for bad in ("requests", ["-r other.txt"], ["requests; rm -rf /"], [3]):
        with pytest.raises(Failure, match="extra_requirements"):
            parse_manifest({"format": 1, "comfyui": {**base, "extra_requirements": bad}})
    assert "requests" in load_manifest(DEFAULT_MANIFEST).comfyui.extra_requirements  # 0.8.0 imports it unlisted
