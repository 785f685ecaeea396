"""The installer's CLI run for real, end to end, into fresh folders: nothing is faked inside it.

What it talks to is served from loopback, shaped like the real thing:
* a ComfyUI release tarball with ComfyUI's layout (made here), whose main.py imports its
  requirements at the top like ComfyUI's does, honours `--quick-test-for-ci`, and answers
  GET /system_stats with its argv like ComfyUI 0.8.0 (server.py);
* a PEP 503 package index holding tiny wheels of torch, torchvision and the release's one
  other requirement, reached the way a mirror user reaches theirs: PIP_INDEX_URL;
* small models on the artifact server.
Then `python -m workers.installer install` runs as a subprocess: a real venv, real pip, a
real ComfyUI process started and verified, kill -9 for real.
"""
import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.workers.installer.support import STANDIN_MAIN, ArtifactServer, Fault, free_port, payload, sha256

pytestmark = pytest.mark.slow  # each test runs the installer CLI end to end: 13 to 36 s

ROOT = Path(__file__).resolve().parents[3]
VERSION = "9.9.9"
TORCH, VISION, DEP = ("torch", "2.9.1+cpu"), ("torchvision", "0.24.1+cpu"), ("comfy-fake-dep", "1.0")
UNLISTED = ("comfy-unlisted-dep", "2.0")  # imported by main.py, missing from requirements.txt (`requests` in 0.8.0)

# ComfyUI's shape: its requirements are imported first (a missing module fails here, as
# `requests` does in 0.8.0), then the installer tests' stand-in: the quick test exits, the
# server answers /system_stats with sys.argv.
RELEASE_MAIN = "import torch, comfy_fake_dep, comfy_unlisted_dep\n" + STANDIN_MAIN


def _wheel(name: str, version: str, files: dict, requires=()) -> tuple:
    """(file name, bytes) of a pure-Python wheel that pip installs like any other."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {**files,
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s" % (
                 name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: comfy-hybrid-tests\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            data = text.encode()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def _wheels() -> dict:
    torch = ("__version__ = '%s'\n"
             "class version:\n    cuda = None\n    hip = None\n"
             "class cuda:\n    @staticmethod\n    def is_available():\n        return False\n"
             "class backends:\n    mps = None\n") % TORCH[1]
    return dict([
        (TORCH[0], _wheel(*TORCH, {"torch/__init__.py": torch})),
        (VISION[0], _wheel(*VISION, {"torchvision/__init__.py": "import torch\n__version__ = '%s'\n" % VISION[1]},
                           requires=[f"torch=={TORCH[1]}"])),
        (DEP[0], _wheel(*DEP, {"comfy_fake_dep/__init__.py": "VALUE = 1\n"})),
        (UNLISTED[0], _wheel(*UNLISTED, {"comfy_unlisted_dep/__init__.py": "VALUE = 2\n"})),
    ])


class PackageIndex:
    """A PEP 503 "simple" index on loopback: /simple/<project>/ links each wheel with its hash."""

    def __init__(self, root: Path, wheels: dict):
        for project, (filename, data) in wheels.items():
            (root / "files").mkdir(parents=True, exist_ok=True)
            (root / "files" / filename).write_bytes(data)
            page = root / "simple" / project
            page.mkdir(parents=True, exist_ok=True)
            link = f'<a href="../../files/{quote(filename)}#sha256={sha256(data)}">{filename}</a>'
            (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>")
        handler = partial(_QuietFiles, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/simple/"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _release() -> bytes:
    top = f"ComfyUI-{VERSION}/"
    members = {"main.py": RELEASE_MAIN, "requirements.txt": "torch\ntorchvision\ntorchaudio\ncomfy-fake-dep>=1.0\n",
               "comfyui_version.py": f'__version__ = "{VERSION}"\n', "comfy/__init__.py": "",
               "nodes.py": "NODE_CLASS_MAPPINGS = {}\n", "custom_nodes/example_node.py.example": "",
               "models/checkpoints/put_checkpoints_here": "", "models/vae/put_vae_here": "",
               "input/.keep": "", "output/_output_images_will_be_put_here": ""}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(top + name)
            data = text.encode()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The release, models and package index, shared by this module's installs."""
    root = tmp_path_factory.mktemp("world")
    index = PackageIndex(root / "index", _wheels())
    server = ArtifactServer().start()
    release = _release()
    model = payload(3 * 1024 * 1024, seed=7)
    manifest = {"format": 1,
                "comfyui": {"version": VERSION, "url": server.add(f"/ComfyUI-{VERSION}.tar.gz", release),
                            "sha256": sha256(release), "size": len(release), "strip_components": 1,
                            "requirements": "requirements.txt", "extra_requirements": [UNLISTED[0]]},
                "models": [{"name": "Tiny checkpoint", "url": server.add("/models/tiny.safetensors", model),
                            "size": len(model), "sha256": sha256(model), "dest": "models/checkpoints",
                            "filename": "tiny.safetensors"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    yield {"index": index, "server": server, "manifest": root / "manifest.json", "model": model}
    server.stop()
    index.stop()


class Install:
    """One install folder and the CLI runs made into it."""

    def __init__(self, world, folder: Path, home: Path, port: int, manifest=None):
        self.world, self.folder, self.home, self.port = world, folder, home, port
        self.manifest = manifest or world["manifest"]

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        return {**env, "HOME": str(self.home), "PIP_CONFIG_FILE": os.devnull,  # only the index below counts
                "PIP_INDEX_URL": self.world["index"].url, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_CACHE_DIR": "1", "PYTHONPATH": str(ROOT), "NO_PROXY": "*", "HF_TOKEN": ""}

    def command(self, *extra) -> list:
        return [sys.executable, "-m", "workers.installer", "install", "--yes", "--path", str(self.folder),
                "--manifest", str(self.manifest), "--torch", "cpu", "--port", str(self.port), *extra]

    def run(self, *extra, timeout=600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*extra), env=self.env(), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *extra) -> subprocess.Popen:
        return subprocess.Popen(self.command(*extra), env=self.env(), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def stats(self, port=None) -> dict:
        return requests.get(f"http://127.0.0.1:{port or self.port}/system_stats", timeout=5).json()

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "workers.installer", "stop", "--path", str(self.folder)],
                       env=self.env(), cwd=ROOT, capture_output=True, timeout=60)

    @property
    def main_py(self) -> str:
        return str((self.folder / "ComfyUI" / "main.py").resolve())

    @property
    def site_packages(self) -> Path:
        return next((self.folder / "venv" / "lib").glob("python3*/site-packages"))


@pytest.fixture
def installs(world, tmp_path):
    made = []

    def make(name="install", port=None, manifest=None) -> Install:
        install = Install(world, tmp_path / name, tmp_path / "home", port or free_port(), manifest)
        made.append(install)
        return install
    yield make
    for install in made:
        install.stop()


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_fresh_install_ends_with_this_installs_comfyui_answering(installs):
    install = installs()
    out = _ok(install.run("--no-service"))

    assert f"answers at http://127.0.0.1:{install.port}" in out
    stats = install.stats()
    assert str(Path(stats["system"]["argv"][0]).resolve()) == install.main_py  # this folder's ComfyUI
    python = str(install.folder / "venv" / "bin" / "python")
    torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                           timeout=60).stdout.strip()
    assert torch == TORCH[1]  # from the index PIP_INDEX_URL names
    model = install.folder / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors"
    assert model.read_bytes() == install.world["model"]
    assert not (install.site_packages / "torchaudio").exists()  # optional: never installed

    again = _ok(install.run("--no-service"))  # a re-run of a healthy install changes nothing
    assert "already" in again and install.stats()["system"]["argv"] == stats["system"]["argv"]


def test_a_killed_install_resumes_at_once_from_the_byte_it_reached(world, installs, tmp_path):
    """kill -9 mid-download, then the same command again at once: no "already working" wait,
    and the model continues with a Range request from where the part file stopped."""
    server = world["server"]
    chunk = 32 * 1024 * 1024  # the downloader's chunk: the part's state moves once per chunk
    model = payload(chunk + 2 * 1024 * 1024, seed=9)
    fault = Fault(stall_at=chunk + 1024 * 1024)  # the server holds the transfer after the first chunk
    manifest = json.loads(world["manifest"].read_text())
    manifest["models"] = [{"name": "Big checkpoint", "url": server.add("/models/big.safetensors", model, fault),
                           "size": len(model), "sha256": sha256(model), "dest": "models/checkpoints",
                           "filename": "big.safetensors"}]
    (tmp_path / "big.json").write_text(json.dumps(manifest))
    install = installs(manifest=tmp_path / "big.json")
    part = install.folder / "ComfyUI" / "models" / "checkpoints" / "big.safetensors.part.json"
    process = install.start("--no-service", "--no-start")
    try:
        for _ in range(2400):  # until the first chunk is on disk and vouched for (a state, not a delay)
            if part.exists() and json.loads(part.read_text() or "{}").get("bytes", 0) >= chunk:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the download never reached its first chunk: {process.poll()}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        fault.stall_at = None  # the next request is served whole
        server.released.set()
    kept = json.loads(part.read_text())["bytes"]
    asked = len(server.requests)

    out = _ok(install.run("--no-service", "--no-start"))
    assert ("/models/big.safetensors", kept) in server.requests[asked:]  # resumed, not restarted
    assert (install.folder / "ComfyUI" / "models" / "checkpoints" / "big.safetensors").read_bytes() == model
    assert "Resuming Big checkpoint (32.0 MB" in out  # the console cuts long messages


def test_a_port_held_by_another_comfyui_is_not_taken_for_this_install(installs):
    """Port 8188 is where an existing ComfyUI usually runs: answering there proves nothing."""
    from tests.fakes.comfyui import FakeComfyUI

    taken = free_port()
    with FakeComfyUI(port=taken) as other:
        install = installs(port=taken)
        out = _ok(install.run("--no-service"))
        ours = int(re.findall(r"answers at http://127\.0\.0\.1:(\d+)", out)[-1])
        assert ours != taken and f"{taken}" in out  # it says the port was taken
        assert str(Path(install.stats(ours)["system"]["argv"][0]).resolve()) == install.main_py
        assert install.stats(taken)["system"]["argv"][0] == "main.py"  # the other one still answers, untouched
        assert other.received  # and was asked who it is


def test_verify_all_finds_a_corrupted_model_whose_time_was_kept(world, installs):
    install = installs()
    _ok(install.run("--no-service", "--no-start"))
    model = install.folder / "ComfyUI" / "models" / "checkpoints" / "tiny.safetensors"
    before = model.stat()
    with open(model, "r+b") as handle:  # one flipped byte, same size, same modification time
        handle.seek(len(world["model"]) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))

    _ok(install.run("--no-service", "--no-start", "--verify-all"))
    assert model.read_bytes() == world["model"]


@pytest.mark.parametrize("broken", ["module", "distribution"])
def test_a_rerun_repairs_a_deleted_module(installs, broken):
    """The module's folder is gone (its metadata may still claim it is installed): the re-run's
    check finds it, the environment step puts it back, and ComfyUI starts again."""
    import shutil

    install = installs()
    _ok(install.run("--no-service"))
    install.stop()
    shutil.rmtree(install.site_packages / "comfy_fake_dep")
    if broken == "distribution":
        shutil.rmtree(next(install.site_packages.glob("comfy_fake_dep-*.dist-info")))

    out = _ok(install.run("--no-service"))
    assert "[5/8] Install PyTorch and requirements: done" in out  # repaired, not skipped
    assert (install.site_packages / "comfy_fake_dep" / "__init__.py").exists()
    assert str(Path(install.stats()["system"]["argv"][0]).resolve()) == install.main_py


def test_two_installs_get_two_services(installs, tmp_path):
    """Run as a user (the test's root is hidden) with a `systemctl` on PATH that has no user
    session, as on a server without a login: each install writes its own unit, named from its
    folder, whose ExecStart runs its own main.py; neither repoints the other."""
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "systemctl-calls"
    for tool in ("systemctl", "journalctl"):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                                  'echo "Failed to connect to bus: No medium found" >&2\nexit 1\n')
        os.chmod(tools / tool, 0o755)
    first, second = installs("first"), installs("second")
    for install in (first, second):
        env = {**install.env(), "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
        as_user = ["-c", "import os, runpy, sys; os.geteuid = lambda: 1000; sys.argv[0] = 'installer'; "
                         "runpy.run_module('workers.installer', run_name='__main__')"]
        done = subprocess.run([sys.executable, *as_user, *install.command()[3:]], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        _ok(done)

    units = sorted((tmp_path / "home" / ".config" / "systemd" / "user").glob("comfy-hybrid-comfyui-*.service"))
    assert len(units) == 2 and units[0].name != units[1].name
    for install in (first, second):
        mine = [u for u in units if install.main_py in u.read_text()]
        assert len(mine) == 1 and install.folder.name in mine[0].name
        assert str(Path(install.stats()["system"]["argv"][0]).resolve()) == install.main_py
    assert "show-environment" in calls.read_text()
