"""The RunPod serverless client against the fake RunPod: every status, every error class."""
import base64
import json
import time

import pytest
import runpod

from tests.fakes.comfyui import make_mp4
from tests.fakes.runpod import ENDPOINT_ID, FakeRunPod, png_b64
from workers.clients import BackendError, Done, Failed, Progress
from workers.clients.runpod import API_KEY_REJECTED, RunPodClient

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
SPEC = {"attempt_id": "a1", "job_id": "j1", "workflow": WORKFLOW}


@pytest.fixture
def fake():
    with FakeRunPod(queue_delay=0.05, run_delay=0.05) as server:
        yield server


def client_for(fake, **kwargs):
    options = {"api_key": "test-key", "endpoint_id": ENDPOINT_ID, "base_url": fake.serverless_url,
               "timeout": 2.0, "poll_interval": 0.05, **kwargs}
    return RunPodClient(**options)


def finish(client, handle, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.poll(handle)
        if not isinstance(result, Progress):
            return result
        time.sleep(result.next_poll)
    raise AssertionError("the job never finished")


def test_it_submits_the_workflow_in_the_worker_comfyui_shape(fake):
    client = client_for(fake, execution_timeout=120)

    handle = client.submit(SPEC)

    job = fake.jobs[handle["job_id"]]
    assert job.input == {"workflow": WORKFLOW}
    assert job.policy == {"executionTimeout": 120000}
    assert handle == {"job_id": job.id, "endpoint_id": ENDPOINT_ID}
    assert ("POST", f"/v2/{ENDPOINT_ID}/run") in fake.received


def test_it_reports_a_queued_job_as_waiting_then_running(fake):
    fake.queue_delay, fake.run_delay = 0.3, 5
    client = client_for(fake)
    handle = client.submit(SPEC)

    queued = client.poll(handle)
    time.sleep(0.35)
    running = client.poll(handle)

    assert isinstance(queued, Progress) and not queued.running and queued.next_poll == 0.05
    assert isinstance(running, Progress) and running.running


def running(client, handle, timeout=5.0):
    """The first poll that finds the job running (the fake holds it there when told to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.poll(handle)
        if isinstance(result, Progress) and result.running:
            return result
        time.sleep(0.02)
    raise AssertionError("the job never ran")


def test_a_running_job_reports_the_percent_its_worker_last_sent_then_finishes(fake):
    fake.script({"status": "COMPLETED", "hold": True, "progress": {"percent": 42, "node": "3", "step": "8/20"},
                 "output": {"images": [{"filename": "a.png", "type": "base64", "data": png_b64()}]}})
    client = client_for(fake)
    handle = client.submit(SPEC)

    progress = running(client, handle)
    fake.release(handle["job_id"])
    done = finish(client, handle)

    assert progress.percent == 42 and progress.next_poll == 0.05
    assert isinstance(done, Done) and done.outputs[0].filename == "a.png"


@pytest.mark.parametrize("sent, percent", [
    ({"percent": 42}, 42), ({"percent": "42"}, 42), ({"percent": 42.9}, 42), ({"percent": "42.5%"}, 42),
    ({"progress": "4/10"}, 40), ({"progress": 7}, 7), (55, 55), ("55%", 55), ("3/4", 75),
    ({"percent": 100}, 99), ({"percent": 250}, 99), ({"percent": -3}, 0),
    (None, 0), ({}, 0), ({"percent": None}, 0), ({"percent": [1, 2]}, 0), ({"progress": "4/0"}, 0),
    ("Update 1/3", 0), ("NaN", 0), ({"percent": "inf"}, 0), (True, 0), ([42], 0),
])
@pytest.mark.slow
def test_progress_in_any_shape_gives_a_percent_within_0_to_99_and_never_fails_the_poll(fake, sent, percent):
    fake.script({"status": "COMPLETED", "hold": True, "progress": sent})
    client = client_for(fake)

    progress = running(client, client.submit(SPEC))

    assert progress.percent == percent


def test_it_returns_every_image_and_video_with_the_execution_seconds(fake):
    video = make_mp4("seed")
    fake.script({"status": "COMPLETED", "run_delay": 0.25, "output": {
        "images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": png_b64()}],
        "videos": [{"filename": "clip_00001_.mp4", "type": "base64",
                    "data": "data:video/mp4;base64," + base64.b64encode(video).decode()},
                   {"filename": "clip_00002_.webm", "type": "s3_url", "data": fake.bucket_url("c2.webm", b"WEBM")}]}})
    client = client_for(fake)

    done = finish(client, client.submit(SPEC))

    assert isinstance(done, Done)
    assert [(o.filename, o.mime) for o in done.outputs] == [
        ("ComfyUI_00001_.png", "image/png"), ("clip_00001_.mp4", "video/mp4"), ("clip_00002_.webm", "video/webm")]
    files = [client.download(output) for output in done.outputs]
    assert files[0].startswith(b"\x89PNG") and files[1] == video and files[2] == b"WEBM"
    assert done.seconds == pytest.approx(0.25, abs=0.01)


def test_it_reads_the_pre_5_worker_comfyui_message_output(fake):
    fake.script({"status": "COMPLETED", "output": {"message": png_b64(), "status": "success"}})
    client = client_for(fake)

    done = finish(client, client.submit(SPEC))

    assert client.download(done.outputs[0]).startswith(b"\x89PNG")


def test_a_runtime_failure_in_the_worker_fails_over_with_its_message(fake):
    error = json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "CUDA out of memory",
                        "error_traceback": "Traceback ...", "hostname": "h", "worker_id": "w",
                        "runpod_version": "1.12.0"})
    fake.script({"status": "FAILED", "error": error})
    client = client_for(fake)

    failed = finish(client, client.submit(SPEC))

    assert isinstance(failed, Failed) and failed.retryable
    assert "CUDA out of memory" in failed.error and "Traceback" not in failed.error
    assert failed.seconds == pytest.approx(fake.run_delay, abs=0.002)  # executionTime: RunPod bills it


def test_a_workflow_comfyui_rejects_fails_the_job_at_once_with_comfyuis_words(fake):
    fake.script({"status": "FAILED", "error": "Workflow validation failed:\n• Node 1 (errors): width: Value 0 "
                                              "smaller than min of 1"})
    client = client_for(fake)

    failed = finish(client, client.submit(SPEC))

    assert not failed.retryable
    assert "Value 0 smaller than min of 1" in failed.error


@pytest.mark.slow
def test_our_handlers_error_kind_decides_over_the_wording(fake):
    kinds = {"validation": False, "execution": False, "model_missing": True, "runtime": True}
    fake.script(*({"status": "FAILED", "error": f"ComfyUI rejected the workflow: {kind}",
                   "output": {"error_kind": kind}} for kind in kinds))
    client = client_for(fake)

    results = {kind: finish(client, client.submit(SPEC)) for kind in kinds}

    assert {kind: failed.retryable for kind, failed in results.items()} == kinds


def test_a_missing_checkpoint_is_the_workers_fault_and_fails_over(fake):
    fake.script({"status": "FAILED", "error": "Workflow validation failed\n\nThis usually means a required model "
                                              "or parameter is not available."})
    client = client_for(fake)

    assert finish(client, client.submit(SPEC)).retryable


def test_a_timed_out_job_fails_over_and_a_cancelled_one_does_not(fake):
    fake.script({"status": "TIMED_OUT"}, {"status": "CANCELLED"})
    client = client_for(fake, execution_timeout=30)

    timed_out = finish(client, client.submit(SPEC))
    cancelled = finish(client, client.submit(SPEC))

    assert timed_out.retryable and "execution timeout (30s)" in timed_out.error
    assert not cancelled.retryable and "cancelled on RunPod" in cancelled.error


def test_it_cancels_the_job_on_runpod(fake):
    fake.run_delay = 30
    client = client_for(fake)
    handle = client.submit(SPEC)

    client.cancel(handle)

    assert fake.cancelled == [handle["job_id"]]
    assert fake.jobs[handle["job_id"]].status == "CANCELLED"


def test_after_a_cancel_it_reads_the_seconds_runpod_bills_for_the_run(fake):
    fake.run_delay = 30
    client = client_for(fake)
    ran, never = client.submit(SPEC), client.submit(SPEC)
    fake.jobs[never["job_id"]].created += 3600  # still queued at RunPod
    finish_by = time.monotonic() + 5
    while client.poll(ran).running is False and time.monotonic() < finish_by:
        time.sleep(0.02)

    assert client.ran_seconds(ran) is None  # still running: RunPod has not settled its time
    client.cancel(ran), client.cancel(never)

    billed = fake.jobs[ran["job_id"]].as_status()["executionTime"] / 1000
    assert client.ran_seconds(ran) == billed > 0
    assert client.ran_seconds(never) == 0.0


def test_a_job_runpod_no_longer_keeps_fails_over(fake):
    client = client_for(fake)

    result = client.poll({"job_id": "gone-u1", "endpoint_id": ENDPOINT_ID})

    assert isinstance(result, Failed) and result.retryable and "30 minutes" in result.error


def test_a_rejected_key_is_permanent_and_names_the_setting_but_never_the_key(fake):
    client = client_for(fake, api_key="sk-wrong-secret")

    with pytest.raises(BackendError) as caught:
        client.submit(SPEC)

    assert caught.value.message == API_KEY_REJECTED and not caught.value.retryable
    assert "sk-wrong-secret" not in caught.value.message
    assert client.health().ok is False and client.health().detail == API_KEY_REJECTED


def test_rate_limits_and_server_errors_are_retryable_without_slow_sdk_back_off(fake):
    fake.http_errors.extend([429, 503, 400])
    client = client_for(fake)
    started = time.monotonic()

    errors = []
    for _ in range(3):
        with pytest.raises(BackendError) as caught:
            client.submit(SPEC)
        errors.append(caught.value)

    assert [e.retryable for e in errors] == [True, True, False]
    assert "HTTP 429" in errors[0].message and "HTTP 503" in errors[1].message
    assert time.monotonic() - started < 2


def test_a_status_read_is_retried_by_the_sdks_session_a_run_is_not(fake):
    client = client_for(fake)
    handle = client.submit(SPEC)
    fake.http_errors.extend([429, 503])  # both absorbed by the session's retry of the GET
    started = time.monotonic()
    assert not isinstance(client.poll(handle), Failed)
    reads = [path for method, path in fake.received if method == "GET" and "/status/" in path]
    assert len(reads) == 3 and time.monotonic() - started < 2

    fake.http_errors.extend([503, 503, 503])  # one more than the retries: the poll sees it, retryable
    with pytest.raises(BackendError) as caught:
        client.poll(handle)
    assert caught.value.retryable and "HTTP 503" in caught.value.message

    fake.http_errors.append(503)  # /run is never sent twice: it has no idempotency key
    runs_before = sum(1 for method, path in fake.received if path.endswith("/run"))
    with pytest.raises(BackendError):
        client.submit(SPEC)
    assert sum(1 for method, path in fake.received if path.endswith("/run")) == runs_before + 1


def test_every_call_has_a_timeout(fake):
    fake.http_errors.append("hang")
    client = client_for(fake, timeout=0.3)

    with pytest.raises(BackendError) as caught:
        client.submit(SPEC)

    assert caught.value.retryable and "did not answer in time" in caught.value.message


def test_an_unreachable_runpod_is_retryable():
    client = RunPodClient(api_key="k", endpoint_id="e", base_url="http://127.0.0.1:9/v2", timeout=1)

    with pytest.raises(BackendError) as caught:
        client.poll({"job_id": "x", "endpoint_id": "e"})

    assert caught.value.retryable and "not reachable" in caught.value.message


def test_health_reports_the_endpoint_queue(fake):
    fake.queue_delay = 30
    client = client_for(fake)
    client.submit(SPEC)
    client.submit(SPEC)

    health = client.health()

    assert health.ok and health.queue_depth == 2 and "idle" in health.detail


def test_it_leaves_the_sdk_module_globals_alone(fake):
    before = (runpod.api_key, runpod.endpoint_url_base)

    client_for(fake).submit(SPEC)

    assert (runpod.api_key, runpod.endpoint_url_base) == before
