"""The resumable downloader against a loopback server with Range support and fault switches."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workers.installer.support import (
    TEST_CHUNK,
    ArtifactServer,
    Fault,
    loopback_names,
    payload,
    recording_reporter,
    sha256,
)
from workers.installer import download
from workers.installer.download import Downloader, Item, Policy, part_path, state_path
from workers.installer.errors import Cancelled, Failure, Paused
from workers.installer.progress import CANCEL, PAUSE, RUN

ROOT = Path(__file__).resolve().parents[3]
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


def fetch(server, path, data, dest, host="127.0.0.1", **kwargs):
    item = Item(url=server.url(path, host), dest=dest, sha256=sha256(data), size=len(data), label="test file")
    return Downloader(policy=POLICY, sleep=lambda s: None, **kwargs).fetch(item)


def pause_after(reporter_states: list, size: int):
    """A control that pauses once the reported bytes reach `size`."""
    return lambda: PAUSE if reporter_states and reporter_states[-1]["bytes_done"] >= size else RUN


def messages(states: list) -> list:
    """The messages in the order shown, each once per stretch it stayed on screen."""
    shown = [state["message"] for state in states]
    return [m for n, m in enumerate(shown) if n == 0 or m != shown[n - 1]]


@pytest.mark.slow
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


@pytest.mark.slow
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
    reporter, seen = recording_reporter()
    result = fetch(artifact_server, "/model.bin", data, tmp_path / "model.bin", progress=reporter)
    assert result.refetched and (tmp_path / "model.bin").read_bytes() == data
    assert len(artifact_server.requests) == 2
    assert "test file: checksum mismatch, downloading it again" in [state["message"] for state in seen]


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
    reporter, seen = recording_reporter()

    def control():
        return PAUSE if seen[-1]["bytes_done"] >= 4 * TEST_CHUNK else RUN
    with pytest.raises(Paused):
        fetch(artifact_server, "/model.bin", data, dest, control=control, progress=reporter)
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


# What the front shows ---------------------------------------------------------------------

def test_a_resumed_download_says_it_checks_then_where_it_resumed_and_counts_speed_from_there(
        artifact_server, tmp_path, monkeypatch):
    data = payload(16 * TEST_CHUNK)
    artifact_server.add("/model.bin", data)
    dest = tmp_path / "m.bin"
    before, seen_before = recording_reporter()
    with pytest.raises(Paused):
        fetch(artifact_server, "/model.bin", data, dest, control=pause_after(seen_before, 4 * TEST_CHUNK),
              progress=before)
    monkeypatch.setattr(download, "HASH_BLOCK", TEST_CHUNK)  # four steps of re-hashing to see
    reporter, seen = recording_reporter()
    reporter.skip_to(0, bytes_total=len(data))  # as the models step does: the bar's last sample is at 0
    fetch(artifact_server, "/model.bin", data, dest, progress=reporter)
    checking = [f"test file: checking the 256.0 KB already downloaded ({p}%)" for p in (25, 50, 75, 100)]
    assert messages(seen)[1:] == checking + ["test file: resumed at 256.0 KB of 1.0 MB"]
    resumed = next(n for n, state in enumerate(seen) if state["message"].endswith("resumed at 256.0 KB of 1.0 MB"))
    assert all(state["bytes_done"] == 0 for state in seen[:resumed])  # checking moves no bytes
    assert (seen[resumed]["bytes_done"], seen[resumed]["bytes_total"], seen[resumed]["speed"]) == \
        (4 * TEST_CHUNK, 16 * TEST_CHUNK, 0)
    flowing = seen[resumed + 1:]
    assert [state["bytes_done"] for state in flowing] == [n * TEST_CHUNK for n in range(5, 17)]
    # One chunk per tick of the clock: the 256 KB found on disk would make it faster.
    assert all(0 < state["speed"] <= TEST_CHUNK for state in flowing) and flowing[-2]["speed"] == TEST_CHUNK
    assert (flowing[-2]["eta"], flowing[-1]["eta"]) == (1.0, None)  # one chunk left at one chunk a tick


def test_a_retry_says_why_when_and_which_attempt_until_bytes_flow_again(artifact_server, tmp_path):
    data = payload(16 * TEST_CHUNK)
    artifact_server.add("/model.bin", data, Fault(drop_at=4 * TEST_CHUNK))
    reporter, seen = recording_reporter()
    fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin", progress=reporter)
    shown = messages(seen)
    assert shown[1] == "Downloading test file" and shown[3:] == ["test file: resumed at 256.0 KB of 1.0 MB"]
    assert re.fullmatch(r"test file: connection problem \(\w+\); retrying in 1 s \(attempt 2 of 4\)", shown[2])
    back = next(n for n, state in enumerate(seen) if state["message"] == shown[3])
    # The note stays while the new request is made; the first new chunk brings the normal text back.
    assert (seen[back - 1]["message"], seen[back - 1]["bytes_done"]) == (shown[2], 4 * TEST_CHUNK)
    assert seen[back]["bytes_done"] == 5 * TEST_CHUNK


# Hugging Face tokens (the names resolve to the loopback servers) --------------------------

HUB_PATH = "/acme/gated-model/resolve/main/m.bin"


@pytest.fixture
def hub_names(monkeypatch):
    loopback_names(monkeypatch, "huggingface.co", "cdn-lfs.huggingface.co", "cdn.example.net", "short.example.net")


def test_the_token_goes_to_hugging_face_and_not_across_a_redirect_to_another_host(hub_names, tmp_path):
    data = payload(100_000)
    with ArtifactServer(token="hf_secret") as hub, ArtifactServer() as cdn:
        cdn.add("/blob/m.bin", data)
        hub.redirect(HUB_PATH, cdn.url("/blob/m.bin", "cdn.example.net"))
        fetch(hub, HUB_PATH, data, tmp_path / "m.bin", host="huggingface.co", token="hf_secret")
    assert (tmp_path / "m.bin").read_bytes() == data
    assert hub.authorizations == [(HUB_PATH, "Bearer hf_secret")] and cdn.authorizations == [("/blob/m.bin", None)]


def test_a_hugging_face_hop_gets_the_token_that_the_host_before_it_never_saw(hub_names, tmp_path):
    data = payload(100_000)
    with ArtifactServer() as short, ArtifactServer(token="hf_secret") as hub:
        hub.add("/blob/m.bin", data)
        short.redirect("/m", hub.url("/blob/m.bin", "cdn-lfs.huggingface.co"))
        fetch(short, "/m", data, tmp_path / "m.bin", host="short.example.net", token="hf_secret")
    assert short.authorizations == [("/m", None)] and hub.authorizations == [("/blob/m.bin", "Bearer hf_secret")]


def test_the_token_is_read_from_hf_token_and_sent_to_no_other_host(artifact_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    data = payload(1000)
    artifact_server.add("/model.bin", data)
    fetch(artifact_server, "/model.bin", data, tmp_path / "m.bin")
    assert artifact_server.authorizations == [("/model.bin", None)]
    assert Downloader().token == "hf_secret"


def hub_refusal(tmp_path, *, token: str, server_token=None, statuses=()) -> Failure:
    with ArtifactServer(token=server_token) as hub:
        hub.add(HUB_PATH, payload(1000), Fault(statuses=list(statuses)))
        with pytest.raises(Failure) as failure:
            fetch(hub, HUB_PATH, payload(1000), tmp_path / "m.bin", host="huggingface.co", token=token)
    assert len(hub.requests) == 1  # a refusal is not retried
    return failure.value


def test_a_401_without_a_token_says_to_set_hf_token_and_where_to_make_one(hub_names, tmp_path):
    failure = hub_refusal(tmp_path, token="", server_token="hf_secret")
    assert "HTTP 401" in failure.cause and "wants a token" in failure.cause
    assert failure.fix.startswith("set HF_TOKEN") and "https://huggingface.co/settings/tokens" in failure.fix


def test_a_401_with_a_token_says_the_token_was_refused(hub_names, tmp_path):
    failure = hub_refusal(tmp_path, token="hf_expired", server_token="hf_secret")
    assert "refused the token in HF_TOKEN" in failure.cause and "create a new one" in failure.fix


def test_a_403_with_a_token_names_the_model_page_whose_licence_to_accept(hub_names, tmp_path):
    failure = hub_refusal(tmp_path, token="hf_secret", server_token="hf_secret", statuses=[403])
    assert "HTTP 403" in failure.cause and "gated" in failure.cause
    assert failure.fix.startswith("open https://huggingface.co/acme/gated-model signed in with the account that owns")


def test_a_403_without_a_token_says_to_set_hf_token(hub_names, tmp_path):
    failure = hub_refusal(tmp_path, token="", statuses=[403])
    assert "gated" in failure.cause and "https://huggingface.co/acme/gated-model" in failure.fix
    assert "set HF_TOKEN" in failure.fix


def test_a_401_from_another_host_does_not_ask_for_hf_token(artifact_server, tmp_path):
    artifact_server.add("/model.bin", payload(1000), Fault(statuses=[401]))
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/model.bin", payload(1000), tmp_path / "m.bin", token="hf_secret")
    assert "sends a token only to Hugging Face" in failure.value.cause and "HF_TOKEN" not in failure.value.fix
    assert artifact_server.authorizations == [("/model.bin", None)]


def test_the_token_appears_in_no_message_failure_or_state_file(hub_names, tmp_path):
    data = payload(16 * TEST_CHUNK)
    dest = tmp_path / "m.bin"
    reporter, seen = recording_reporter()
    with ArtifactServer(token="hf_secret") as hub:
        hub.add(HUB_PATH, data)
        with pytest.raises(Paused):
            fetch(hub, HUB_PATH, data, dest, host="huggingface.co", token="hf_secret", progress=reporter,
                  control=pause_after(seen, 4 * TEST_CHUNK))
        written = state_path(dest).read_text()
        hub.faults[HUB_PATH].statuses.append(403)
        with pytest.raises(Failure) as failure:
            fetch(hub, HUB_PATH, data, dest, host="huggingface.co", token="hf_secret", progress=reporter)
    assert hub.authorizations[0] == (HUB_PATH, "Bearer hf_secret") and json.loads(written)["bytes"] > 0
    texts = [written, failure.value.cause, failure.value.fix] + [state["message"] for state in seen]
    assert not [text for text in texts if "hf_secret" in text]


def test_a_redirect_loop_fails_clearly(artifact_server, tmp_path):
    artifact_server.redirect("/loop", "/loop")
    with pytest.raises(Failure) as failure:
        fetch(artifact_server, "/loop", payload(10), tmp_path / "m.bin")
    assert "redirects more than 10 times" in failure.value.cause and "manifest" in failure.value.fix
    assert len(artifact_server.requests) == download.MAX_REDIRECTS + 1
