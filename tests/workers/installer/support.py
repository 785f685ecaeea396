"""Shared pieces of the installer tests (this module holds no tests).

* ArtifactServer: a loopback HTTP file server with Range support, throttling and fault
  switches (fail with a status, drop the connection at an offset, stall at an offset,
  corrupt a byte once or always, ignore Range). It counts the body bytes it sends, can
  require a bearer token, answer a path with a redirect, and records each request's
  Authorization header.
* loopback_names: host names ("huggingface.co") that resolve to 127.0.0.1 for one test.
* recording_reporter: a StepReporter that keeps every state it reports, on a ticking clock.
* A stand-in "ComfyUI" release: a tar.gz whose main.py answers /system_stats on --port and,
  like ComfyUI's, exits 0 after its start-up checks with --quick-test-for-ci; variants of
  main.py that miss a module at once (MISSING_MODULE_MAIN) or only once serving
  (CRASHES_WHEN_SERVING_MAIN).
* FakeRunner: records venv/pip/service commands instead of installing PyTorch; it creates a
  venv whose python is this interpreter, so the start step runs the stand-in for real.
"""
import hashlib
import io
import json
import os
import random
import re
import socket
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from workers.installer.detect import GIB, Gpu
from workers.installer.detect.probe import SystemInfo
from workers.installer.download import Policy
from workers.installer.pipeline import Hooks, Options
from workers.installer.progress import StepReporter, StepState
from workers.installer.runner import Completed

PIECE = 16 * 1024  # the server writes in pieces this big; throttling sleeps between them
TEST_CHUNK = 64 * 1024


@dataclass
class Fault:
    statuses: list = field(default_factory=list)  # answered (then forgotten) before serving
    drop_at: Optional[int] = None  # close the connection when this file offset is reached, once
    stall_at: Optional[int] = None  # stop sending at this offset until released (or 30 s)
    corrupt: str = ""  # "once" | "always": flip the byte in the middle of the file
    ignore_range: bool = False


class ArtifactServer:
    def __init__(self, rate: Optional[float] = None, token: Optional[str] = None):
        self.files, self.faults = {}, {}
        self.rate = rate  # bytes per second, None = as fast as possible
        self.token = token  # when set, a request without "Authorization: Bearer <token>" gets 401
        self.sent = {}  # path -> body bytes written to clients
        self.requests = []  # (path, first byte asked)
        self.authorizations = []  # (path, the Authorization header or None), one per request
        self.redirects = {}  # path -> the URL it answers with a 302
        self.released = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "ArtifactServer":
        self.thread.start()
        return self

    def __enter__(self) -> "ArtifactServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, path: str, data: bytes, fault: Optional[Fault] = None) -> str:
        self.files[path] = data
        self.faults[path] = fault or Fault()
        self.sent[path] = 0
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        self.redirects[path] = target
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """Another `host` reaches this server only once loopback_names has made it resolve here."""
        return f"http://{host}:{self.httpd.server_port}{path}"

    def count(self, path: str, sent: int) -> None:
        with self._lock:
            self.sent[path] += sent


def _handler(server: ArtifactServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            fault, data = server.faults.get(path, Fault()), server.files.get(path)
            start = self._range_start(fault)
            server.requests.append((path, start))
            server.authorizations.append((path, self.headers.get("Authorization")))
            if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                return self._status(401)
            if path in server.redirects:
                return self._status(302, {"Location": server.redirects[path]})
            if data is None:
                return self._status(404)
            if fault.statuses:
                return self._status(fault.statuses.pop(0))
            if start >= len(data) and start:
                return self._status(416, {"Content-Range": f"bytes */{len(data)}"})
            self._send(path, fault, self._body(fault, data), start)

        def _range_start(self, fault: Fault) -> int:
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            return int(match.group(1)) if match and not fault.ignore_range else 0

        def _body(self, fault: Fault, data: bytes) -> bytes:
            if fault.corrupt in ("once", "always"):
                if fault.corrupt == "once":
                    fault.corrupt = "done"
                middle = len(data) // 2
                return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            return data

        def _send(self, path: str, fault: Fault, data: bytes, start: int) -> None:
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"' + hashlib.sha1(server.files[path]).hexdigest() + '"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            offset = start
            try:
                while offset < len(data):
                    if fault.drop_at is not None and offset >= fault.drop_at:
                        fault.drop_at = None
                        self.close_connection = True
                        return self.connection.shutdown(socket.SHUT_RDWR)
                    if fault.stall_at is not None and offset >= fault.stall_at:
                        server.released.wait(30)
                        return
                    piece = data[offset:offset + PIECE]
                    if fault.stall_at is not None:
                        piece = piece[:fault.stall_at - offset]
                    if fault.drop_at is not None:
                        piece = piece[:fault.drop_at - offset]
                    self.wfile.write(piece)
                    server.count(path, len(piece))
                    offset += len(piece)
                    if server.rate:
                        time.sleep(len(piece) / server.rate)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _status(self, code: int, headers=None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def loopback_names(monkeypatch, *names: str) -> None:
    """Make `names` resolve to 127.0.0.1 in this process for one test (requests asks
    socket.getaddrinfo), so a loopback server can stand in for "huggingface.co" and the
    downloader's host rules run on real names; nothing leaves the machine."""
    resolve = socket.getaddrinfo

    def loopback(host, *args, **kwargs):
        return resolve("127.0.0.1" if host in names else host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", loopback)
    monkeypatch.setenv("NO_PROXY", "*")  # a proxy from the environment must not get these names


class Ticks:
    """A clock that moves one second each time it is read: speeds come out per reading."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def recording_reporter(name: str = "models") -> tuple:
    """A started StepReporter on a Ticks clock, and the list of every state it reported (as dicts)."""
    seen = []
    reporter = StepReporter(StepState(name, name), lambda state: seen.append(state.as_dict()), clock=Ticks())
    reporter.start()
    return reporter, seen


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes (so a wrong offset would show)."""
    blocks = [hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size // 32 + 1)]
    return b"".join(blocks)[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


STANDIN_MAIN = '''
"""Stand-in ComfyUI for the installer tests: answers GET /system_stats like ComfyUI."""
import argparse, json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--cpu", action="store_true")
parser.add_argument("--quick-test-for-ci", action="store_true")
args, _ = parser.parse_known_args()
if args.quick_test_for_ci:
    print("stand-in ComfyUI start-up check passed:", json.dumps(sys.argv), flush=True)
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/system_stats":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"system": {"os": sys.platform, "comfyui_version": "0.0-standin", "argv": sys.argv},
                           "devices": [{"name": "cpu", "type": "cpu", "vram_total": 0}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


print("stand-in ComfyUI listening", flush=True)
HTTPServer((args.listen, args.port), Handler).serve_forever()
'''


MISSING_MODULE = "comfy_hybrid_missing_dependency"
# Fails the start-up check and the server alike, as ComfyUI does when a package is missing.
MISSING_MODULE_MAIN = f"import {MISSING_MODULE}\n" + STANDIN_MAIN
# Passes the start-up check, then (serving) prints a traceback, more lines, and exits 3.
CRASHES_WHEN_SERVING_MAIN = STANDIN_MAIN.replace('print("stand-in ComfyUI listening", flush=True)', f'''
import traceback
try:
    import {MISSING_MODULE}
except ImportError:
    traceback.print_exc()
for number in range(12):
    print(f"loading node pack {{number}}: ok", flush=True)
sys.exit(3)
''')


def tar_gz(members: dict, links: Optional[dict] = None) -> bytes:
    """A .tar.gz from {name: bytes} plus {name: symlink target}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def standin_release() -> bytes:
    return tar_gz({"ComfyUI-0.0-standin/main.py": STANDIN_MAIN.encode(),
                   "ComfyUI-0.0-standin/requirements.txt": b"aiohttp\n",
                   "ComfyUI-0.0-standin/models/checkpoints/put_checkpoints_here": b""})


def write_manifest(path: Path, release_url: str, release: bytes, models: list) -> Path:
    """models: [(name, url, data, dest, filename, optional)]"""
    manifest = {"format": 1,
                "comfyui": {"version": "0.0-standin", "url": release_url, "sha256": sha256(release),
                            "size": len(release), "strip_components": 1, "requirements": "requirements.txt"},
                "models": [{"name": name, "url": url, "size": len(data), "sha256": sha256(data), "dest": dest,
                            "filename": filename, "optional": optional}
                           for name, url, data, dest, filename, optional in models]}
    path.write_text(json.dumps(manifest))
    return path


class FakeRunner:
    """Stands in for venv/pip/systemctl: records every command, answers like the real ones."""

    checks = ()  # envcheck.py answers in turn (reports or Completed), the last one repeated; none: a whole venv
    pip_config = ""  # what `pip config list` prints

    def __init__(self, torch_found: Optional[dict] = None, fail: str = "", answers: Optional[dict] = None):
        self.commands = []
        self.torch_found = torch_found or {"torch": "2.12.1+cpu", "cuda": None, "hip": None, "gpu": False}
        self.fail = fail  # a substring: the command containing it exits 1
        self.answers = answers or {}  # command prefix -> [Completed, ...] given in turn, the last one repeated

    def __call__(self, args, *, cwd=None, env=None, timeout=None, on_line=None, tick=None, tick_every=2.0,
                 on_start=None):
        args = [str(a) for a in args]
        self.commands.append(args)
        if self.fail and self.fail in " ".join(args):
            return Completed(1, "ERROR: simulated failure\n")
        for prefix, replies in self.answers.items():
            if " ".join(args).startswith(prefix):
                return replies.pop(0) if len(replies) > 1 else replies[0]
        if args[1:3] == ["-m", "venv"]:
            return self._make_venv(Path(args[3]))
        if len(args) > 2 and args[2].endswith("envcheck.py"):
            return self._envcheck()
        if args[1:5] == ["-m", "pip", "config", "list"]:
            return Completed(0, self.pip_config)
        if "-c" in args:
            return self._python_c(args[args.index("-c") + 1])
        if on_line:
            on_line("Successfully installed (fake)")
        if tick:
            tick()
        return Completed(0, "ok\n")

    def _make_venv(self, venv: Path) -> Completed:
        (venv / "bin").mkdir(parents=True, exist_ok=True)
        os.symlink(sys.executable, venv / "bin" / "python")
        return Completed(0, "")

    def _python_c(self, script: str) -> Completed:
        if "importlib.metadata" in script:
            version = self.torch_found["torch"]
            return Completed(0, json.dumps({"torch": version, "torchvision": "0.27.1", "torchaudio": "2.11.0"}))
        return Completed(0, json.dumps(self.torch_found))

    def _envcheck(self) -> Completed:
        if self.checks:
            answer = self.checks.pop(0) if len(self.checks) > 1 else self.checks[0]
            return answer if isinstance(answer, Completed) else Completed(0, json.dumps(answer))
        return Completed(0, json.dumps({"versions": {"torch": self.torch_found["torch"], "torchvision": "0.27.1",
                                                   "torchaudio": None}, "broken": {}, "device": self.torch_found,
                                      "missing": [], "mismatched": [], "unreadable": []}))

    def pip_installs(self) -> list:
        return [c for c in self.commands if c[1:4] == ["-m", "pip", "install"]]

    def asked(self, prefix: str) -> int:
        """How many commands started with `prefix`."""
        return sum(" ".join(c).startswith(prefix) for c in self.commands)


def without_pip_configuration(monkeypatch) -> None:
    """No pip setting of this machine's (PIP_FIND_LINKS...) chooses where PyTorch comes from."""
    for name in ("PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS", "COMFY_TORCH_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def cpu_machine() -> SystemInfo:
    return SystemInfo(os="linux", arch="x86_64", gpus=[])


def nvidia_machine(cuda: str = "12.4") -> SystemInfo:
    return SystemInfo(os="linux", arch="x86_64", driver_version="550.127.05", cuda_version=cuda,
                      gpus=[Gpu(vendor="nvidia", name="NVIDIA A40", vram_bytes=45 * GIB, source="test")])


def free_port(count: int = 3) -> int:
    """A free port with the `count - 1` after it free too, below Linux's ephemeral range
    (32768-60999). In that range a client connection's own port can take the port the installer
    moves ComfyUI to (the next one) between its check and ComfyUI's bind: a full run failed two
    installs so, "Address already in use" on the port after a taken one."""
    for base in range(random.randrange(20000, 30000), 32000):
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free ports below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def hooks_for(tmp_path: Path, runner: FakeRunner, *, free: int = 100 * GIB, probe=cpu_machine, **extra) -> Hooks:
    extra = {"as_root": False, "system_units": tmp_path / "etc-systemd-system", **extra}  # tests run as root here
    return Hooks(run=runner, probe=probe, free_space=lambda path: free, home=tmp_path / "home", os_name="linux",
                 policy=Policy(chunk_size=TEST_CHUNK, retries=3, backoff_base=0.01, backoff_max=0.05,
                               connect_timeout=2, read_timeout=3), **extra)


@dataclass
class Site:
    """A served release + models and the manifest that describes them."""

    server: ArtifactServer
    manifest: Path
    models: dict  # filename -> bytes


def make_site(server: ArtifactServer, tmp_path: Path, *, model_size: int = 512 * 1024, model_fault=None) -> Site:
    release = standin_release()
    release_url = server.add("/ComfyUI-0.0-standin.tar.gz", release)
    model = payload(model_size)
    model_url = server.add("/models/tiny.safetensors", model, model_fault)
    manifest = write_manifest(tmp_path / "manifest.json", release_url, release,
                              [("Tiny checkpoint", model_url, model, "models/checkpoints", "tiny.safetensors", False)])
    return Site(server, manifest, {"tiny.safetensors": model})


def options_for(site: Site, tmp_path: Path, **changes) -> Options:
    values = {"path": str(tmp_path / "install"), "manifest": str(site.manifest), "service": False,
              "start": True, "port": free_port(), "start_timeout": 20.0, **changes}
    return Options(**values)
