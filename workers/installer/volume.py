"""Fill a RunPod network volume with the models, on a short-lived pod.

    python -m workers.installer.volume --root /workspace [--port 8188]

Runs in the cloud image (deploy/runpod-worker/start.sh, COMFY_HYBRID_MODE=sync) with the
network volume mounted at `--root`, where every pod's ComfyUI reads models
(extra_model_paths.yaml: /workspace/models/...). What to fetch comes from the server in the
environment, COMFY_HYBRID_SYNC (base64 of JSON: [{name, url, dest, filename, size, sha256}]), so
the volume follows the server's manifest, not the one the image was built with.

Each file: in place with its size and SHA-256 → kept (it is hashed again: a volume has no
record this process could trust); else fetched with the installer's resumable, verified
Downloader. Its parts live on the volume itself, so a sync pod killed mid-way loses at most the
chunk in flight, and the next sync resumes. Progress is served as JSON at `GET /sync` on
`--port` (the pod's exposed port; the server polls it through RunPod's proxy) until the pod is
terminated by the server that started it.
"""
import argparse
import base64
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from .download import Downloader, Item, Policy, file_sha256, partial_bytes
from .errors import Failure

SYNC_ENV = "COMFY_HYBRID_SYNC"
CHUNK_ENV = "COMFY_HYBRID_SYNC_CHUNK"  # bytes fetched between two fsyncs (default: the installer's)


def encode_files(files: list[dict]) -> str:
    """The file list for COMFY_HYBRID_SYNC: RunPod's GraphQL takes env values unescaped, so
    the JSON travels as URL-safe base64 (no quotes, no backslashes)."""
    return base64.urlsafe_b64encode(json.dumps(files, separators=(",", ":")).encode()).decode()


def decode_files(value: str) -> list[dict]:
    files = json.loads(base64.urlsafe_b64decode(value.encode()))
    for entry in files:
        for key in ("name", "url", "dest", "filename", "size", "sha256"):
            if key not in entry:
                raise ValueError(f"{SYNC_ENV}: a file lacks {key!r}")
        if Path(entry["dest"]).is_absolute() or ".." in Path(entry["dest"], entry["filename"]).parts:
            raise ValueError(f"{SYNC_ENV}: {entry['name']} would be written outside the volume")
    return files


class Status:
    """What GET /sync answers; written by the sync, read by the HTTP threads."""

    def __init__(self, files: list[dict]):
        self._lock = threading.Lock()
        self.state = "running"  # running | done | failed
        self.message = "starting"
        self.files = {f["name"]: {"name": f["name"], "size": f["size"], "done": 0, "state": "waiting"} for f in files}
        self.started = time.time()

    def set(self, name: Optional[str] = None, **fields) -> None:
        with self._lock:
            if name is not None:
                self.files[name].update(fields)
            else:
                self.__dict__.update(fields)

    def as_json(self) -> dict:
        with self._lock:
            files = [dict(f) for f in self.files.values()]
            return {"state": self.state, "message": self.message, "files": files,
                    "bytes_done": sum(f["done"] for f in files), "bytes_total": sum(f["size"] for f in files),
                    "seconds": round(time.time() - self.started, 1)}


class _FileProgress:
    """The Downloader's progress interface, for one file of the status."""

    def __init__(self, status: Status, name: str):
        self.status, self.name = status, name

    def update(self, *, message=None, bytes_done=None, bytes_total=None) -> None:
        if bytes_done is not None:
            self.status.set(self.name, done=bytes_done)
        if message:
            self.status.set(message=message)

    def skip_to(self, bytes_done, *, bytes_total=None, message=None) -> None:
        self.update(message=message, bytes_done=bytes_done)


def sync(root: Path, files: list[dict], status: Status, downloader_factory=None) -> None:
    """Every file in place and verified under `root`, or a Failure naming the first that is not."""
    for entry in files:
        dest = root / entry["dest"] / entry["filename"]
        name = entry["name"]
        if dest.exists() and dest.stat().st_size == entry["size"]:
            status.set(name, state="checking")
            status.set(message=f"{name}: checking the file already on the volume")
            if file_sha256(dest) == entry["sha256"]:
                status.set(name, state="in place", done=entry["size"])
                continue
        kept = partial_bytes(dest)
        status.set(name, state="downloading", done=kept)
        status.set(message=f"Resuming {name} ({kept} bytes already on the volume)" if kept else f"Downloading {name}")
        progress = _FileProgress(status, name)
        downloader = (downloader_factory or (lambda progress: Downloader(progress=progress)))(progress)
        result = downloader.fetch(Item(url=entry["url"], dest=dest, sha256=entry["sha256"], size=entry["size"],
                                       label=name))
        status.set(name, state="downloaded", done=entry["size"], resumed_from=result.resumed_from)


def serve(status: Status, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] not in ("/sync", "/"):
                self.send_error(404)
                return
            body = json.dumps(status.as_json()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # one line per poll is noise in the pod's log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv=None, environ=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.installer.volume", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/workspace"), help="where the network volume is mounted")
    parser.add_argument("--port", type=int, default=8188, help="port of GET /sync (the pod's exposed port)")
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        files = decode_files(environ.get(SYNC_ENV, ""))
    except (ValueError, json.JSONDecodeError) as error:
        files, problem = [], f"{SYNC_ENV} is not a file list: {error}"
    else:
        problem = "" if args.root.is_dir() else f"no volume mounted at {args.root}"
    status = Status(files)
    serve(status, args.port)
    if problem:
        status.set(state="failed", message=problem)
    else:
        chunk = int(environ.get(CHUNK_ENV) or Policy.chunk_size)
        try:
            sync(args.root, files, status,
                 downloader_factory=lambda progress: Downloader(progress=progress, policy=Policy(chunk_size=chunk)))
            status.set(state="done", message=f"{len(files)} file(s) in place and verified")
        except Failure as failure:
            status.set(state="failed", message=f"{failure.cause} — run the sync again: it resumes what it fetched")
        except OSError as error:
            status.set(state="failed", message=f"the volume could not be written: {error}")
    print(json.dumps(status.as_json()), flush=True)
    while True:  # the server reads the outcome, then terminates this pod
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
