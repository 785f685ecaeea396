"""The resumable downloader against a loopback server with Range support and fault switches."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.installer_support import TEST_CHUNK, ArtifactServer, Fault, payload, sha256
from workers.installer.download import Downloader, Item, Policy, part_path, state_path
from workers.installer.errors import Cancelled, Failure, Paused
from workers.installer.progress import CANCEL, PAUSE, RUN

ROOT = Path(__file__).resolve().parent.parent
SIZE = 2 * 1024 * 1024
POLICY = Policy(chunk_size=TEST_CHUNK, retries=3, backoff_base=0.01, backoff_max=0.05, connect_timeout=2,
                read_timeout=5)

# The downloader alone, in its own process, so the test can kill -9 it mid-file.
CHILD = """
import json, sys
from pathlib import Path
from workers.installer.download import Downloader, Item, Policy
url, dest, digest, size, chunk = sys.argv[1:6]
result = Downloader(policy=Policy(chunk_size=int(chunk), read_timeout=30)).fetch(
    Item(url=url, dest=Path(dest), sha256=digest, size=int(size), label="test file"))
print(json.dumps({"resumed_from": result.resumed_from, "fetched": result.fetched_bytes}))
"""


@pytest.fixture
def artifact_server():
    with ArtifactServer() as server:
        yield server


def child(url: str, dest: Path, data: bytes) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(dest), sha256(data), str(len(data)),
                             str(TEST_CHUNK)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def recorded_bytes(dest: Path) -> int:
    try:
        return json.loads(state_path(dest).read_text())["bytes"]
    except (OSError, ValueError):
        return 0


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def fetch(server, path, data, dest, **kwargs):
    item = Item(url=server.url(path), dest=dest, sha256=sha256(data), size=len(data), label="test file")
    return Downloader(policy=POLICY, sleep=lambda s: None, **kwargs).fetch(item)


def test_it_resumes_after_the_process_is_killed(artifact_server, tmp_path):
    data = payload(SIZE)
    stall_at = SIZE // 2 + 20_000  # mid-chunk: the chunk in flight is the only thing fetched twice
    url = artifact_server.add("/model.bin", data, Fault(stall_at=stall_at))
    dest = tmp_path / "models" / "model.bin"
    process = child(url, dest, data)
    wait_for(lambda: artifact_server.sent["/model.bin"] >= stall_at
             and recorded_bytes(dest) == stall_at // TEST_CHUNK * TEST_CHUNK)
    os.kill(process.pid, signal.SIGKILL)  # the process, not just the connection
    process.wait(10)
    assert not dest.exists() and part_path(dest).exists()
    artifact_server.faults["/model.bin"].stall_at = None

    resumed = child(url, dest, data)
    out, err = resumed.communicate(timeout=30)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert result["resumed_from"] == SIZE // 2  # the last fsync'd chunk boundary before the kill
    assert dest.read_bytes() == data and not part_path(dest).exists() and not state_path(dest).exists()
    assert artifact_server.requests[-1] == ("/model.bin", SIZE // 2)  # a Range request, not from zero
    assert artifact_server.sent["/model.bin"] <= SIZE + TEST_CHUNK


def test_a_download_killed_at_a_random_moment_resumes_and_is_exact(tmp_path):
    server = ArtifactServer(rate=4_000_000).start()  # throttled: the kill lands mid-stream
    try:
        data = payload(SIZE, seed=2)
        url = server.add("/model.bin", data)
        dest = tmp_path / "model.bin"
        process = child(url, dest, data)
        wait_for(lambda: recorded_bytes(dest) >= SIZE // 3)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        resumed = child(url, dest, data)
        out, err = resumed.communicate(timeout=30)
        assert resumed.returncode == 0, err
        assert json.loads(out)["resumed_from"] >= SIZE // 3
        assert dest.read_bytes() == data
        # Unpersisted chunk + what was in flight in the socket; never a restart from zero.
        assert server.sent["/model.bin"] < SIZE + 2 * TEST_CHUNK
    finally:
        server.stop()


def test_corrupted_bytes_cause_one_refetch_then_success(artifact_server, tmp_path):
    data = payload(SIZE // 4)
    artifact_server.add("/model.bin", data, Fault(corrupt="once"))
    messages = []
    result = fetch(artifact_server, "/model.bin", data, tmp_path / "model.bin",
                   progress=lambda done, total, message: messages.append(message))
    assert result.refetched and (tmp_path / "model.bin").read_bytes() == data
    assert len(artifact_server.requests) == 2 and any("checksum mismatch" in m for m in messages)


def test_persistent_corruption_fails_clearly_and_puts_nothing_in_place(artifact_server, tmp_path):
    data = payload(SIZE // 4)
    artifact_server.add("/model.bin", data, Fault(corrupt="always"))
    dest = tmp_path / "model.bin"
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/model.bin", data, dest)
    assert "SHA-256 mismatch twice" in failure.value.cause and "Nothing was moved into place" in failure.value.fix
    assert len(artifact_server.requests) == 2  # exactly one re-fetch
    assert list(tmp_path.iterdir()) == []  # no file, no .part, no state


def test_a_file_already_in_place_is_untouched_when_its_replacement_is_corrupt(artifact_server, tmp_path):
    data = payload(SIZE // 8)
    artifact_server.add("/model.bin", data, Fault(corrupt="always"))
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"the previous version")
    with pytest.raises(Failure):
        fetch(artifact_server, "/model.bin", data, dest)
    assert dest.read_bytes() == b"the previous version"


def test_a_connection_dropped_mid_file_is_retried_from_the_last_chunk(artifact_server, tmp_path):
    data = payload(SIZE // 2)
    artifact_server.add("/model.bin", data, Fault(drop_at=300_000))
    result = fetch(artifact_server, "/model.bin", data, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data
    assert artifact_server.requests[1] == ("/model.bin", 300_000 // TEST_CHUNK * TEST_CHUNK)
    assert result.fetched_bytes <= len(data) + TEST_CHUNK


def test_server_errors_are_retried_with_backoff(artifact_server, tmp_path):
    data = payload(100_000)
    artifact_server.add("/model.bin", data, Fault(statuses=[503, 502]))
    waits = []
    item = Item(url=artifact_server.url("/model.bin"), dest=tmp_path / "m.bin", sha256=sha256(data), size=len(data))
    Downloader(policy=POLICY, sleep=waits.append).fetch(item)
    assert (tmp_path / "m.bin").read_bytes() == data and len(artifact_server.requests) == 3 and waits


def test_retries_are_bounded_and_the_failure_says_a_rerun_resumes(artifact_server, tmp_path):
    data = payload(100_000)
    artifact_server.add("/model.bin", data, Fault(statuses=[503] * 20))
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin")
    assert len(artifact_server.requests) == POLICY.retries + 1
    assert "HTTP 503" in failure.value.cause and "resumes" in failure.value.fix


def test_a_missing_file_fails_at_once_without_retrying(artifact_server, tmp_path):
    data = payload(1000)
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/nothing-here.bin", data, tmp_path / "m.bin")
    assert "HTTP 404" in failure.value.cause and "manifest" in failure.value.fix
    assert artifact_server.requests == [("/nothing-here.bin", 0)]


def test_a_server_that_ignores_range_restarts_from_zero_and_still_verifies(artifact_server, tmp_path):
    data = payload(SIZE // 4)
    artifact_server.add("/model.bin", data, Fault(drop_at=100_000, ignore_range=True))
    fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin")
    assert (tmp_path / "m.bin").read_bytes() == data


def test_a_size_different_from_the_manifest_is_refused(artifact_server, tmp_path):
    data = payload(10_000)
    artifact_server.add("/model.bin", data + b"extra")
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin")
    assert "manifest says 10000" in failure.value.cause


def test_pause_stops_between_chunks_and_resume_continues_from_that_byte(artifact_server, tmp_path):
    data = payload(SIZE // 2)
    artifact_server.add("/model.bin", data)
    dest = tmp_path / "m.bin"
    seen = []

    def control():
        return PAUSE if seen and seen[-1] >= 4 * TEST_CHUNK else RUN
    with pytest.raises(Paused):
        fetch(artifact_server, "/model.bin", data, dest, control=control,
              progress=lambda done, total, message: seen.append(done))
    assert recorded_bytes(dest) == 4 * TEST_CHUNK and part_path(dest).stat().st_size == 4 * TEST_CHUNK
    result = fetch(artifact_server, "/model.bin", data, dest)
    assert result.resumed_from == 4 * TEST_CHUNK and artifact_server.requests[-1][1] == 4 * TEST_CHUNK
    assert dest.read_bytes() == data


def test_cancel_stops_the_download_without_putting_anything_in_place(artifact_server, tmp_path):
    data = payload(SIZE // 4)
    artifact_server.add("/model.bin", data)
    with pytest.raises(Cancelled):
        fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin", control=lambda: CANCEL)
    assert not (tmp_path / "m.bin").exists()


def test_a_state_file_for_another_url_is_not_trusted(artifact_server, tmp_path):
    data = payload(200_000)
    artifact_server.add("/model.bin", data)
    dest = tmp_path / "m.bin"
    part_path(dest).write_bytes(b"x" * 150_000)
    state_path(dest).write_text(json.dumps({"url": "http://elsewhere/", "sha256": sha256(data), "size": len(data),
                                            "bytes": 150_000}))
    result = fetch(artifact_server, "/model.bin", data, dest)
    assert result.resumed_from == 0 and dest.read_bytes() == data
