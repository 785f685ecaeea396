"""6. Installer download throughput against a plain HTTP copy from the same local server.

The installer's downloader (workers/installer/download.py, `Downloader().fetch(Item(...))`) is
resumable and verified: every chunk (32 MiB) is written and fsync'd, its length recorded in a
state file (also fsync'd), the whole file hashed with SHA-256 and renamed into place. The
plain copy streams the same URL with the same HTTP library and chunk size into a file,
nothing more (what `curl -o` does); a third run adds SHA-256 and one fsync at the end (the
least a durable, verified copy costs). All read from one loopback server answering with
sendfile; runs alternate and the median of each is used. The same three are measured again
against the server paced to 100 MiB/s, closer to a real download from the internet.
"""
import hashlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from workers.installer.download import Policy

from . import harness

NAME = "installer"
TITLE = "installer download throughput vs plain HTTP copy from the same local server"
SIZES = {"tiny": {"mib": 8, "rounds": 1}, "quick": {"mib": 64, "rounds": 2}, "full": {"mib": 256, "rounds": 3}}
TARGET = 0.9
CHUNK = Policy().chunk_size  # the installer's own default
THROTTLED_MIB_S = 100  # about a gigabit line: what a download from Hugging Face can reach


def run(ctx) -> dict:
    params = SIZES[ctx.size]
    work = Path(tempfile.mkdtemp(prefix="bench-installer-"))
    servers = []
    try:
        source = work / "model.safetensors"
        digest = _make_file(source, params["mib"] * 1024 * 1024)
        servers = [_serve(source, None), _serve(source, THROTTLED_MIB_S)]
        fast, line = (_measure(server, source, digest, work, params["rounds"]) for server in servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(work, ignore_errors=True)
    ours, base = fast["installer"], fast["plain"]
    value = harness.ratio(ours, base)
    line_ratio = harness.ratio(line["installer"], line["plain"])
    return {
        "params": {**params, "chunk_bytes": CHUNK, "throttled_mib_s": THROTTLED_MIB_S},
        "figures": {"installer_mib_s": ours, "durable_plain_mib_s": fast["durable"],
                    "runs_mib_s": fast["runs"]["installer"],
                    "throttled": {**line, "ratio": line_ratio}},
        "baseline": {"plain_copy_mib_s": base, "runs_mib_s": fast["runs"]["plain"]},
        "ratio": value, "ratio_meaning": "installer MiB/s ÷ plain copy MiB/s (unthrottled local server)",
        "targets": [harness.target("installer ÷ plain copy throughput", value, f"≥ {TARGET}", value >= TARGET)],
        "lines": [
            f"installer (fsync per {CHUNK >> 20} MiB chunk + state file, SHA-256, atomic rename): {ours:.1f} MiB/s",
            f"plain HTTP copy (same client library and chunk size, no fsync): {base:.1f} MiB/s",
            f"plain copy + SHA-256 + one fsync at the end: {fast['durable']:.1f} MiB/s",
            f"ratio {value:.2f} on a {params['mib']} MiB file from an unthrottled loopback server "
            f"(durable plain copy: {harness.ratio(ours, fast['durable']):.2f})",
            f"server limited to {THROTTLED_MIB_S} MiB/s (a fast internet line): installer {line['installer']:.1f}, "
            f"plain {line['plain']:.1f} MiB/s, ratio {line_ratio:.2f}",
        ],
    }


def _measure(server, source: Path, digest: str, work: Path, rounds: int) -> dict:
    """Median MiB/s of each method over alternating rounds."""
    from workers.installer.download import Downloader, Item

    url = f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
    size = source.stat().st_size
    methods = {
        "installer": lambda dest: Downloader().fetch(Item(url=url, dest=dest, sha256=digest, size=size, label="bench")),
        "plain": lambda dest: _plain_copy(url, dest),
        "durable": lambda dest: _plain_copy(url, dest, durable=True),
    }
    runs = {name: [] for name in methods}
    for round_number in range(rounds):
        for name, method in methods.items():
            dest = work / f"{name}-{round_number}.bin"
            runs[name].append(round(_timed(lambda: method(dest), size), 1))
            dest.unlink()
    return {**{name: round(statistics.median(values), 1) for name, values in runs.items()}, "runs": runs}


def _make_file(path: Path, size: int) -> str:
    """Incompressible bytes (like model weights) and their SHA-256."""
    digest, block = hashlib.sha256(), os.urandom(CHUNK)
    with open(path, "wb") as handle:
        for written in range(0, size, CHUNK):
            part = block[: min(CHUNK, size - written)]
            handle.write(part)
            digest.update(part)
    return digest.hexdigest()


def _timed(action, size: int) -> float:
    started = time.perf_counter()
    action()
    return size / (1024 * 1024) / (time.perf_counter() - started)


def _plain_copy(url: str, dest: Path, durable: bool = False) -> None:
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=(15, 60), headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        with open(dest, "wb") as handle:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
                if durable:
                    digest.update(chunk)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())


def _paced(connection, handle, size: int, mib_per_second: float) -> None:
    started, sent, piece = time.perf_counter(), 0, 256 * 1024
    while sent < size:
        sent += connection.sendfile(handle, offset=sent, count=min(piece, size - sent))
        ahead = sent / (mib_per_second * 1024 * 1024) - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(ahead)


def _serve(source: Path, mib_per_second) -> ThreadingHTTPServer:
    """A loopback server for one file: sendfile at full speed, or paced to `mib_per_second`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's naming)
            size = source.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("ETag", '"bench"')
            self.end_headers()
            with open(source, "rb") as handle:
                self.wfile.flush()
                if mib_per_second is None:
                    self.connection.sendfile(handle)
                else:
                    _paced(self.connection, handle, size, mib_per_second)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bench-http", daemon=True).start()
    return server
