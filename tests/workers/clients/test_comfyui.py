"""The ComfyUI client against the fake ComfyUI, which speaks the real protocol on loopback."""
import json
import struct
import threading
import time

import pytest

from tests.fakes.comfyui import CAPTURE_PATH, FakeComfyUI
from workers.clients import BackendError, Done, Failed, Progress
from workers.clients.comfyui import ComfyUIClient, ProgressTracker, decode_preview
from workers.workflows import build_workflow

TINY = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "unit"}}}


@pytest.fixture
def fake():
    with FakeComfyUI(step_delay=0.01, steps=3) as server:
        yield server


def _client(fake, **options):
    return ComfyUIClient(fake.url, **{"timeout": 2, "watch_seconds": 5, "poll_interval": 0.05, **options})


def _spec(workflow=TINY, attempt_id="a-1"):
    return {"attempt_id": attempt_id, "workflow": workflow}


def _run_to_end(client, handle, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.poll(handle)
        if not isinstance(result, Progress):
            return result
    raise AssertionError("the job never finished")


def _watch_whole_run(fake, client, spec):
    """Submit and watch the run from before its first node with one poll: the fake holds the
    prompt until the watch's socket is registered, so every event reaches it however busy the
    machine. Returns (result, every Progress seen)."""
    fake.node_budget = 0  # before the submit: not even the first node may run unwatched
    try:
        handle = client.submit(spec)
        seen, ended = [], []
        watcher = threading.Thread(target=lambda: ended.append(client.poll(handle, on_progress=seen.append)))
        watcher.start()
        _until(lambda: fake.listening(handle["client_id"]), "the watch's socket is registered")
    finally:
        fake.node_budget = None
    watcher.join(30)
    return ended[0], seen


def _until(condition, what, tries=2000):
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_it_submits_and_gets_the_png_back(fake):
    client = _client(fake)
    handle = client.submit(_spec())
    assert handle["prompt_id"] == "a-1"
    result = _run_to_end(client, handle)
    assert isinstance(result, Done) and len(result.outputs) == 1
    output = result.outputs[0]
    assert output.mime == "image/png"
    assert client.download(output).startswith(b"\x89PNG")


def test_it_reports_progress_from_the_websocket_and_finishes_there(fake):
    fake.steps, fake.step_delay = 5, 0.01
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=1,
                              duration_seconds=0)
    client = _client(fake, watch_seconds=120)  # one watch sees the whole run; the run's end ends it
    result, seen = _watch_whole_run(fake, client, _spec(template))
    assert isinstance(result, Done)
    assert seen[0].running and seen[0].percent == 0  # "running" is said at once, before any step
    percents = [p.percent for p in seen if p.preview is None]
    assert percents == sorted(percents) and all(0 <= p < 100 for p in percents)
    assert len({p for p in percents if 0 < p < 100}) >= 3  # it moves through the nodes and the steps


def test_a_redelivered_submit_does_not_queue_the_prompt_twice(fake):
    client = _client(fake)
    client.submit(_spec())
    client.submit(_spec())
    assert sum(1 for method, path in fake.received if method == "POST" and path.endswith("/prompt")) == 1


def test_prompts_wait_in_the_order_their_jobs_were_accepted_whichever_reaches_comfyui_first(fake):
    """Two workers submit jobs accepted a moment apart; the later job's worker is faster. ComfyUI
    still runs the earlier one first: `number` is the acceptance time. A high-priority job goes
    to the front (ComfyUI's own `front`)."""
    client, hold = _client(fake, watch_seconds=0), {"attempt_id": "running", "workflow": TINY, "order": 0.0}
    fake.node_budget = 0  # the first prompt holds the GPU before its first node
    running = client.submit(hold)
    later = client.submit({"attempt_id": "later", "workflow": TINY, "order": 2000.0})
    earlier = client.submit({"attempt_id": "earlier", "workflow": TINY, "order": 1000.0})
    urgent = client.submit({"attempt_id": "urgent", "workflow": TINY, "order": 3000.0, "priority": 2})
    positions = {name: client.poll(handle).position for name, handle in
                 [("urgent", urgent), ("earlier", earlier), ("later", later)]}
    assert positions == {"urgent": 1, "earlier": 2, "later": 3}  # behind the running one
    fake.node_budget = None
    assert isinstance(_run_to_end(client, running), Done)


def test_a_validation_error_is_permanent_and_names_the_node(fake):
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec(bad))
    assert not caught.value.retryable
    assert "node 1 (EmptyImage)" in caught.value.message and "smaller than min" in caught.value.message


def test_an_unknown_node_type_is_what_this_comfyui_lacks_so_another_may_run_it(fake):
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec(bad))
    assert caught.value.retryable and not caught.value.outage and caught.value.lacks == ("node NoSuchNode",)
    assert "NoSuchNode does not exist" in caught.value.message


def test_a_missing_model_is_the_backends_fault_so_it_is_retryable_and_named(fake):
    fake.models = {"checkpoints": []}
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=1,
                              duration_seconds=0)
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec(template))
    assert caught.value.retryable and not caught.value.outage
    assert caught.value.lacks == ("checkpoints/v1-5-pruned-emaonly.safetensors",)
    assert caught.value.message.startswith("This ComfyUI lacks checkpoints/v1-5-pruned-emaonly.safetensors.")


@pytest.mark.parametrize("folder", ["diffusion_models", "text_encoders", "vae"])
def test_any_missing_model_of_the_video_template_is_named_with_its_folder(fake, folder):
    fake.models = {**fake.models, folder: []}
    template = build_workflow(kind="video", prompt="p", negative_prompt="", width=512, height=512, seed=1,
                              duration_seconds=1)
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec(template))
    assert caught.value.retryable and len(caught.value.lacks) == 1 and caught.value.lacks[0].startswith(folder + "/")


def test_the_inventory_lists_model_files_by_folder_and_every_node_class(fake):
    inventory = _client(fake).inventory()
    assert inventory["models"]["diffusion_models"] == ["wan2.1_t2v_1.3B_fp16.safetensors"]
    assert inventory["models"]["vae"] == ["wan_2.1_vae.safetensors"]  # pixel_space is built in, not a file
    assert {"UNETLoader", "SaveVideo", "KSampler"} <= set(inventory["nodes"]) and len(inventory["nodes"]) > 500


def test_a_5xx_is_retryable(fake):
    fake.fail_mode = "http500"
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec())
    assert caught.value.retryable and "HTTP 500" in caught.value.message


def test_garbage_json_is_retryable(fake):
    fake.fail_mode = "garbage"
    with pytest.raises(BackendError) as caught:
        _client(fake).submit(_spec())
    assert caught.value.retryable and "not JSON" in caught.value.message


@pytest.mark.slow
def test_a_hanging_server_times_out(fake):
    fake.fail_mode = "hang"
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        _client(fake, timeout=0.5).submit(_spec())
    assert caught.value.retryable and "did not answer in time" in caught.value.message
    assert time.monotonic() - started < 5


def test_a_stopped_server_is_not_reachable():
    client = ComfyUIClient("http://127.0.0.1:9", timeout=1)
    with pytest.raises(BackendError) as caught:
        client.submit(_spec())
    assert caught.value.retryable and "not reachable" in caught.value.message
    assert not client.health().ok


def test_completion_is_found_by_polling_history_when_the_socket_drops(fake):
    fake.fail_mode, fake.steps, fake.step_delay = "drop_ws", 6, 0.05
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=2,
                              duration_seconds=0)
    client = _client(fake)
    handle = client.submit(_spec(template))
    result = _run_to_end(client, handle)
    assert isinstance(result, Done) and result.outputs


def test_a_runtime_error_fails_with_comfyuis_message(fake):
    fake.fail_mode = "runtime_error"
    client = _client(fake)
    result = _run_to_end(client, client.submit(_spec()))
    assert isinstance(result, Failed) and "ComfyUI failed" in result.error


def test_a_queued_prompt_reports_its_position(fake):
    fake.steps, fake.step_delay, fake.step_budget = 20, 0.01, 0  # the first is held mid-run
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=3,
                              duration_seconds=0)
    client = _client(fake, watch_seconds=0.2)
    client.submit(_spec(template, "first"))
    second = client.submit(_spec(dict(template), "second"))
    try:
        result = client.poll(second)
    finally:
        fake.step_budget = None
    assert isinstance(result, Progress) and not result.running and result.position == 1


def test_cancel_interrupts_the_running_prompt(fake):
    fake.steps, fake.step_delay = 50, 0.05
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=4,
                              duration_seconds=0)
    client = _client(fake, watch_seconds=0.2)
    handle = client.submit(_spec(template))
    time.sleep(0.3)
    client.cancel(handle)
    result = _run_to_end(client, handle)
    assert isinstance(result, Failed) and "interrupted" in result.error and not result.retryable


def test_health_reports_queue_and_gpu(fake):
    health = _client(fake).health()
    assert health.ok and health.queue_depth == 0 and health.gpu and health.latency_ms is not None


def test_a_video_workflow_returns_the_animated_output(fake):
    template = build_workflow(kind="video", prompt="waves", negative_prompt="", width=832, height=480, seed=5,
                              duration_seconds=2)
    assert template["5"]["inputs"]["length"] == 33
    client = _client(fake)
    result = _run_to_end(client, client.submit(_spec(template)))
    assert isinstance(result, Done)
    assert result.outputs[0].filename.endswith(".mp4") and result.outputs[0].mime == "video/mp4"


def test_a_first_submit_goes_straight_to_prompt_and_a_resubmit_looks_first(fake):
    client = _client(fake)
    client.submit({**_spec(attempt_id="fresh"), "resubmit": False})
    assert [p for m, p in fake.received if m == "GET"] == []
    client.submit({**_spec(attempt_id="fresh"), "resubmit": True})
    assert ("GET", "/history/fresh") in fake.received
    assert sum(1 for m, p in fake.received if m == "POST" and p == "/prompt") == 1


# --- progress and previews, held to the 0.8.0 capture -------------------------------------------
needs_capture = pytest.mark.skipif(not CAPTURE_PATH.exists(), reason=f"no capture at {CAPTURE_PATH}")


@needs_capture
def test_progress_moves_through_a_model_free_workflow_as_the_real_server_reports_it():
    run = json.loads(CAPTURE_PATH.read_text())["ws_a_fresh_run"]  # EmptyImage → ImageBlur → ImageInvert → SaveImage
    prompt_id = run["request_body"]["prompt_id"]
    tracker = ProgressTracker(len(run["request_body"]["prompt"]))
    percents = [tracker.update(m["type"], m["data"]) for m in run["messages"]
                if isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id]
    said = [p for p in percents if p is not None]

    assert said[0] == 0 and said == sorted(said) and max(said) == 99  # 4 of 4 finished, capped until history
    assert {25, 50, 75} <= set(said)  # each finished node moves it: no sampler is needed


def _capture_frames():
    capture = json.loads(CAPTURE_PATH.read_text())
    return [(name, {**m["decoded"], "head": bytes.fromhex(m["first_8_bytes_hex"])},
             capture[name]["request_body"]["prompt_id"])
            for name in ("ws_f_binary_preview_no_feature_flags", "ws_f_binary_preview_with_feature_flags")
            for m in capture[name]["messages"] if m.get("binary")]


@needs_capture
@pytest.mark.slow
def test_preview_frames_are_decoded_in_both_layouts_of_the_capture():
    png = b"\x89PNG\r\n\x1a\n" + b"rest-of-image"
    frames = _capture_frames()
    assert {decoded["event_type"] for _, decoded, _ in frames} == {1, 4}
    for _, decoded, prompt_id in frames:
        if decoded["event_type"] == 4:
            meta = json.dumps(decoded["metadata"]).encode()
            assert len(meta) == decoded["metadata_length"]  # the server's json.dumps, key order kept
            frame = struct.pack(">II", 4, len(meta)) + meta + png
            assert decode_preview(frame, prompt_id) == ("image/png", png)
            assert decode_preview(frame, "another-prompt") is None  # another prompt's preview
        else:  # the capture's own first 8 bytes: type 1, format 2 (PNG)
            assert decode_preview(decoded["head"] + png, prompt_id) == ("image/png", png)
    text = struct.pack(">II", 3, 1) + b"2" + b"width: 40, height: 30"
    for bad in (text, b"", b"\x00\x00\x00\x04\xff\xff\xff\xff{", struct.pack(">II", 1, 9) + png):
        assert decode_preview(bad, "p") is None


def test_a_sampler_run_streams_previews_that_the_client_hands_on(fake):
    fake.steps, fake.step_delay, fake.preview_method = 4, 0.01, "auto"
    template = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=9,
                              duration_seconds=0)
    client = _client(fake, watch_seconds=120)
    result, seen = _watch_whole_run(fake, client, _spec(template, "with-previews"))

    assert isinstance(result, Done)
    previews = [p for p in seen if p.preview]
    assert len(previews) == 4 and all(p.preview_mime == "image/png" and p.preview.startswith(b"\x89PNG")
                                      for p in previews)
    fake.preview_method = None


MODEL_FREE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
              "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "mf"}}}


def test_progress_moves_on_a_model_free_workflow_that_sends_no_progress_events(fake):
    fake.node_budget = 0  # the run starts and waits before its first node: each node is given on cue
    client = _client(fake, watch_seconds=120)  # one watch sees the whole run; states end it, not the clock
    handle = client.submit(_spec(MODEL_FREE, "model-free"))
    seen, ended = [], []
    watcher = threading.Thread(target=lambda: ended.append(client.poll(handle, on_progress=seen.append)))
    watcher.start()
    try:
        _until(lambda: fake.listening(handle["client_id"]), "the watch's socket is registered")
        assert seen[0].running and seen[0].percent == 0
        for percent in (25, 50, 75):
            fake.node_budget += 1  # one more node runs and finishes; the next one waits
            _until(lambda: any(p.percent == percent for p in seen), f"progress {percent}")
    finally:
        fake.node_budget = None
        watcher.join(30)
    assert isinstance(ended[0], Done)
    percents = [p.percent for p in seen]
    assert percents == sorted(percents) and {0, 25, 50, 75} <= set(percents)  # a step per finished node


@pytest.mark.parametrize("value, top", [(10**400, 20), (1, 10**400), (float("nan"), 1), (float("inf"), float("inf")),
                                        ("7", "x"), (None, 20), (3, 0), ([1], 2)])
def test_progress_numbers_that_are_not_numbers_count_as_nothing_and_never_raise(value, top):
    tracker = ProgressTracker(2)
    assert tracker.update("progress", {"node": "1", "value": value, "max": top}) == 0
