"""The fake ComfyUI, driven with requests + websocket-client exactly as a real client would.

Expected shapes are copied from /work/shared/reference/comfyui-0.8.0-capture.json (ComfyUI 0.8.0);
tests/fakes/test_comfyui_capture.py replays that capture's validation cases and schemas.
"""
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from tests.fakes.comfyui import FakeComfyUI

ROOT = Path(__file__).resolve().parents[2]
MODEL = "v1-5-pruned-emaonly.safetensors"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def minimal(prefix="apiref", color=16746496, batch_size=1):
    """The capture's EmptyImage -> SaveImage workflow."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch_size,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def txt2img(ckpt=MODEL, seed=1, steps=20, prefix="txt2img"):
    """ComfyUI's script_examples/basic_api_example.py shape (reference 1.8)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def text_to_video():
    wf = txt2img(prefix="unused")
    wf["5"] = {"class_type": "EmptyHunyuanLatentVideo",
               "inputs": {"width": 848, "height": 480, "length": 9, "batch_size": 1}}
    wf["10"] = {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 24.0}}
    wf["9"] = {"class_type": "SaveVideo", "inputs": {"video": ["10", 0], "filename_prefix": "video/clip",
                                                     "format": "auto", "codec": "auto"}}
    return wf


@pytest.fixture
def fake():
    server = FakeComfyUI(step_delay=0.01)
    server.start()
    yield server
    server.stop()


def connect(fake, client_id):
    """Open /ws and wait for the first status: after it, the server knows our client id."""
    ws = websocket.create_connection(f"{fake.ws_url}?clientId={client_id}", timeout=5)
    first = json.loads(ws.recv())
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
    return ws


def post_prompt(fake, workflow, **body):
    return requests.post(f"{fake.url}/prompt", json={"prompt": workflow, **body}, timeout=5)


def submit(fake, workflow, **body):
    response = post_prompt(fake, workflow, **body)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def events_until_done(ws, prompt_id):
    events = []
    while True:
        event = json.loads(ws.recv())
        events.append(event)
        if event == {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}:
            return events


def run(fake, workflow):
    """Submit with a websocket attached; return (prompt_id, events, history entry)."""
    client_id = f"client-{uuid.uuid4().hex[:8]}"
    ws = connect(fake, client_id)
    try:
        prompt_id = submit(fake, workflow, client_id=client_id)
        events = events_until_done(ws, prompt_id)
    finally:
        ws.close()
    return prompt_id, events, history(fake, prompt_id)


def history(fake, prompt_id):
    return requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json().get(prompt_id)


def wait_for_history(fake, prompt_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = history(fake, prompt_id)
        if entry:
            return entry
        time.sleep(0.02)
    raise AssertionError(f"no history for {prompt_id}")


def wait_until_running(fake, prompt_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = requests.get(f"{fake.url}/queue", timeout=5).json()["queue_running"]
        if running and running[0][1] == prompt_id:
            return
        time.sleep(0.01)
    raise AssertionError(f"{prompt_id} never started")


def types(events):
    return [e["type"] for e in events]


# ---------------------------------------------------------------- the happy path


def test_a_websocket_gets_status_with_its_sid_on_connect(fake):
    connect(fake, "client-a81ada06").close()
    ws = websocket.create_connection(fake.ws_url, timeout=5)  # no clientId: server makes a hex one
    sid = json.loads(ws.recv())["data"]["sid"]
    ws.close()
    assert len(sid) == 32 and int(sid, 16) >= 0


def test_a_minimal_workflow_streams_the_same_events_as_real_comfyui(fake):
    prompt_id, events, _ = run(fake, minimal())
    # The capture's first run, after the connect-time status.
    assert types(events) == ["status", "status", "execution_start", "execution_cached", "progress_state",
                             "executing", "progress_state", "progress_state", "executing", "executed",
                             "progress_state", "execution_success", "status", "executing"]
    assert events[0]["data"] == {"status": {"exec_info": {"queue_remaining": 1}}}
    assert events[5]["data"] == {"node": "1", "display_node": "1", "prompt_id": prompt_id}
    assert events[9]["data"] == {"node": "2", "display_node": "2", "prompt_id": prompt_id, "output": {
        "images": [{"filename": "apiref_00001_.png", "subfolder": "", "type": "output"}]}}
    assert events[4]["data"]["nodes"]["1"] == {
        "value": 0.0, "max": 1.0, "state": "running", "node_id": "1", "prompt_id": prompt_id,
        "display_node_id": "1", "parent_node_id": None, "real_node_id": "1"}
    assert events[-2]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}


def test_history_is_already_written_when_executing_null_arrives(fake):
    ws = connect(fake, "c1")
    prompt_id = submit(fake, minimal(), client_id="c1")
    events_until_done(ws, prompt_id)
    entry = history(fake, prompt_id)  # no polling: the real server writes history first
    ws.close()
    create_time = entry["prompt"][3].pop("create_time")  # 0.8.0: epoch ms of the POST
    assert abs(create_time - time.time() * 1000) < 60_000
    assert entry["prompt"] == [0, prompt_id, minimal(), {"client_id": "c1"}, ["2"]]
    assert entry["outputs"] == {"2": {"images": [{"filename": "apiref_00001_.png", "subfolder": "",
                                                  "type": "output"}]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert set(entry["status"]["messages"][0][1]) == {"prompt_id", "timestamp"}
    assert entry["meta"] == {"2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}}


def test_it_returns_empty_history_until_done(fake):
    fake.step_delay = 0.1
    prompt_id = submit(fake, txt2img())
    wait_until_running(fake, prompt_id)
    assert requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json() == {}
    assert requests.get(f"{fake.url}/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 1}}
    assert wait_for_history(fake, prompt_id)["status"]["status_str"] == "success"
    assert requests.get(f"{fake.url}/history/nope", timeout=5).json() == {}


def test_view_returns_the_saved_png(fake):
    _, _, entry = run(fake, minimal())
    image = entry["outputs"]["2"]["images"][0]
    response = requests.get(f"{fake.url}/view", params=image | {"type": "output"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == 'filename="apiref_00001_.png"'
    assert response.content[:8] == PNG_MAGIC
    assert struct.unpack(">II", response.content[16:24]) == (64, 64)
    assert Path(fake.output_dir, "apiref_00001_.png").read_bytes() == response.content


def test_file_names_increment_like_comfyui(fake):
    first = run(fake, minimal(color=1))[2]["outputs"]["2"]["images"]
    second = run(fake, minimal(color=2, batch_size=2))[2]["outputs"]["2"]["images"]
    assert [i["filename"] for i in first] == ["apiref_00001_.png"]
    assert [i["filename"] for i in second] == ["apiref_00002_.png", "apiref_00003_.png"]


def test_txt2img_reports_one_progress_event_per_sampler_step(fake):
    prompt_id, events, entry = run(fake, txt2img())
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress == [{"value": v, "max": 3, "prompt_id": prompt_id, "node": "3"} for v in (1, 2, 3)]
    assert entry["outputs"]["9"]["images"][0]["filename"] == "txt2img_00001_.png"
    executing = [e["data"]["node"] for e in events if e["type"] == "executing"]
    assert executing.index("4") < executing.index("3") < executing.index("8") < executing.index("9")


def test_steps_none_uses_the_workflows_own_step_count(fake):
    fake.steps, fake.step_delay = None, 0
    _, events, _ = run(fake, txt2img(steps=5))
    assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4, 5]


def test_a_text_to_video_workflow_saves_an_mp4_reported_as_animated(fake):
    _, _, entry = run(fake, text_to_video())
    assert entry["outputs"]["9"] == {"images": [{"filename": "clip_00001_.mp4", "subfolder": "video",
                                                 "type": "output"}], "animated": [True]}
    response = requests.get(f"{fake.url}/view", timeout=5,
                            params={"filename": "clip_00001_.mp4", "subfolder": "video", "type": "output"})
    assert response.headers["Content-Type"] == "video/mp4"
    assert response.content[4:8] == b"ftyp"


def test_animated_webp_and_webm_savers_report_under_images(fake):
    wf = minimal(batch_size=4)
    wf["2"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "anim",
               "fps": 6.0, "lossless": False, "quality": 80, "method": "default"}}
    wf["3"] = {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "clip",
               "codec": "vp9", "fps": 24.0, "crf": 32.0}}
    _, _, entry = run(fake, wf)
    assert entry["outputs"]["2"]["animated"] == [True] and entry["outputs"]["3"]["animated"] == [True]
    webp = Path(fake.output_dir, entry["outputs"]["2"]["images"][0]["filename"]).read_bytes()
    webm = Path(fake.output_dir, entry["outputs"]["3"]["images"][0]["filename"]).read_bytes()
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP" and webm[:4] == b"\x1a\x45\xdf\xa3"


def test_preview_image_goes_to_temp_with_a_temp_prefix(fake):
    wf = minimal()
    wf["2"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    image = run(fake, wf)[2]["outputs"]["2"]["images"][0]
    assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
    response = requests.get(f"{fake.url}/view", params=image, timeout=5)
    assert response.content[:8] == PNG_MAGIC


def test_cache_mode_reuses_the_first_file_for_an_identical_rerun(fake):
    fake.cache = True
    run(fake, minimal())
    _, events, entry = run(fake, minimal())
    assert [e["data"]["nodes"] for e in events if e["type"] == "execution_cached"] == [["1", "2"]]
    assert "executing" not in types(events)[:-1]
    assert entry["outputs"]["2"]["images"][0]["filename"] == "apiref_00001_.png"
    assert sorted(os.listdir(fake.output_dir)) == ["apiref_00001_.png"]


# ---------------------------------------------------------------- POST /prompt details


def test_client_prompt_id_extra_data_and_front_are_honoured(fake):
    fake.step_delay = 0.05
    first = submit(fake, txt2img(), prompt_id="mine-1", extra_data={"extra_pnginfo": {"workflow": {"x": 1}},
                                                                   "api_key_comfy_org": "secret"})
    assert first == "mine-1"
    assert post_prompt(fake, minimal(), front=True).json()["number"] == -1
    wait_for_history(fake, first)
    extra_data = history(fake, first)["prompt"][3]
    assert extra_data == {"extra_pnginfo": {"workflow": {"x": 1}}, "create_time": extra_data["create_time"]}
    assert fake.prompts["mine-1"] == txt2img()


def test_prompt_numbers_count_rejected_prompts_too(fake):
    assert requests.post(f"{fake.url}/prompt", json={}, timeout=5).status_code == 400
    assert post_prompt(fake, minimal()).json()["number"] == 1


def test_a_body_without_prompt_gets_no_prompt(fake):
    response = requests.post(f"{fake.url}/prompt", json={"client_id": "x"}, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                         "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}


def test_an_unknown_class_type_gets_invalid_prompt(fake):
    response = post_prompt(fake, {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert response.status_code == 400
    assert response.json() == {"error": {"type": "invalid_prompt", "message": "Cannot execute because node "
                                         "NoSuchNode does not exist.", "details": "Node ID '#1'",
                                         "extra_info": {}}, "node_errors": {}}


def test_a_workflow_without_outputs_gets_prompt_no_outputs(fake):
    response = post_prompt(fake, {"1": minimal()["1"]})
    assert response.status_code == 400
    assert response.json() == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                         "details": "", "extra_info": {}}, "node_errors": {}}


def test_bad_inputs_get_node_errors_exactly_like_the_capture(fake):
    wf = minimal()
    wf["1"]["inputs"] = {"width": 0, "batch_size": 1, "color": 16746496}
    response = post_prompt(fake, wf)
    assert response.status_code == 400
    assert response.json() == {  # capture: err_inputs
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"1": {"errors": [
            {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width",
             "extra_info": {"input_name": "width", "input_config": ["INT", {"default": 512, "min": 1,
                            "max": 16384, "step": 1}], "received_value": 0}},
            {"type": "required_input_missing", "message": "Required input is missing", "details": "height",
             "extra_info": {"input_name": "height"}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}}


def test_a_missing_checkpoint_gets_value_not_in_list_like_the_capture(fake):
    fake.models = []
    response = post_prompt(fake, txt2img())
    assert response.status_code == 400
    assert response.json()["node_errors"] == {"4": {"errors": [{  # capture: err_missing_ckpt
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in []",
        "extra_info": {"input_name": "ckpt_name", "input_config": [[], {"tooltip": "The name of the "
                       "checkpoint (model) to load."}], "received_value": MODEL}}],
        "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}
    fake.models = ["sdxl.safetensors"]
    error = post_prompt(fake, txt2img()).json()["node_errors"]["4"]["errors"][0]
    assert error["details"] == "ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in ['sdxl.safetensors']"


def test_a_link_to_a_missing_node_gets_exception_during_validation(fake):
    wf = minimal()
    wf["2"]["inputs"]["images"] = ["99", 0]
    errors = post_prompt(fake, wf).json()["node_errors"]["2"]["errors"]
    assert errors[0]["type"] == "exception_during_validation" and errors[0]["details"] == "'99'"


def test_malformed_json_gets_a_500_like_aiohttp(fake):
    response = requests.post(f"{fake.url}/prompt", data=b"{not json", timeout=5)
    assert response.status_code == 500


# ---------------------------------------------------------------- queue, interrupt, history


def test_interrupt_stops_the_running_prompt_with_execution_interrupted(fake):
    fake.steps, fake.step_delay = 50, 0.05
    ws = connect(fake, "c1")
    prompt_id = submit(fake, txt2img(), client_id="c1")
    while json.loads(ws.recv())["type"] != "progress":
        pass
    assert requests.post(f"{fake.url}/interrupt", json={"prompt_id": prompt_id}, timeout=5).status_code == 200
    events = events_until_done(ws, prompt_id)
    ws.close()
    interrupted = [e["data"] for e in events if e["type"] == "execution_interrupted"][0]
    assert interrupted["node_id"] == "3" and interrupted["node_type"] == "KSampler"
    assert sorted(interrupted["executed"]) == ["4", "5", "6", "7"]
    entry = history(fake, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["outputs"] == {} and entry["meta"] == {}


def test_interrupt_for_another_prompt_id_is_ignored(fake):
    fake.step_delay = 0.05
    prompt_id = submit(fake, txt2img())
    wait_until_running(fake, prompt_id)
    requests.post(f"{fake.url}/interrupt", json={"prompt_id": "someone-else"}, timeout=5).raise_for_status()
    assert wait_for_history(fake, prompt_id)["status"]["status_str"] == "success"


def test_interrupt_without_a_body_is_global_and_a_no_op_when_idle(fake):
    fake.step_delay = 0.05
    prompt_id = submit(fake, txt2img())
    wait_until_running(fake, prompt_id)
    requests.post(f"{fake.url}/interrupt", timeout=5).raise_for_status()
    assert wait_for_history(fake, prompt_id)["status"]["messages"][-1][0] == "execution_interrupted"
    requests.post(f"{fake.url}/interrupt", timeout=5).raise_for_status()  # idle: must not hit the next one
    assert wait_for_history(fake, submit(fake, minimal()))["status"]["status_str"] == "success"


def test_queue_lists_running_and_pending_and_delete_removes_pending(fake):
    fake.step_delay = 0.1
    running = submit(fake, txt2img(), client_id="c1")
    pending = submit(fake, minimal())
    wait_until_running(fake, running)
    queue = requests.get(f"{fake.url}/queue", timeout=5).json()
    assert isinstance(queue["queue_running"][0][3].pop("create_time"), int)
    assert queue["queue_running"] == [[0, running, txt2img(), {"client_id": "c1"}, ["9"]]]
    assert [item[1] for item in queue["queue_pending"]] == [pending]
    response = requests.post(f"{fake.url}/queue", json={"delete": [pending]}, timeout=5)
    assert response.status_code == 200 and response.content == b""
    assert requests.get(f"{fake.url}/queue", timeout=5).json()["queue_pending"] == []
    requests.post(f"{fake.url}/queue", json={"clear": True}, timeout=5).raise_for_status()
    wait_for_history(fake, running)
    assert history(fake, pending) is None


def test_post_history_deletes_and_clears(fake):
    first, second = (run(fake, minimal(color=c))[0] for c in (1, 2))
    assert list(requests.get(f"{fake.url}/history", timeout=5).json()) == [first, second]
    assert list(requests.get(f"{fake.url}/history?max_items=1", timeout=5).json()) == [second]
    requests.post(f"{fake.url}/history", json={"delete": [first]}, timeout=5).raise_for_status()
    assert list(requests.get(f"{fake.url}/history", timeout=5).json()) == [second]
    requests.post(f"{fake.url}/history", json={"clear": True}, timeout=5).raise_for_status()
    assert requests.get(f"{fake.url}/history", timeout=5).json() == {}


def test_extra_queue_adds_to_queue_remaining(fake):
    fake.extra_queue = 7
    assert requests.get(f"{fake.url}/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 7}}


# ---------------------------------------------------------------- fail modes


def test_http500_mode_fails_every_route(fake):
    fake.fail_mode = "http500"
    for path in ("/prompt", "/api/prompt", "/system_stats", "/history/x"):
        assert requests.get(f"{fake.url}{path}", timeout=5).status_code == 500
    assert post_prompt(fake, minimal()).status_code == 500
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(fake.ws_url, timeout=5)
    fake.fail_mode = None  # flipped back mid-run
    assert requests.get(f"{fake.url}/prompt", timeout=5).status_code == 200
    assert fake.prompts == {}


def test_garbage_mode_answers_200_with_a_body_that_is_not_json(fake):
    fake.fail_mode = "garbage"
    response = post_prompt(fake, minimal())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_hang_mode_never_answers_and_stop_is_still_quick():
    fake = FakeComfyUI(fail_mode="hang").start()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{fake.url}/system_stats", timeout=0.3)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0


def test_runtime_error_mode_ends_with_execution_error_like_the_capture(fake):
    fake.fail_mode = "runtime_error"
    prompt_id, events, entry = run(fake, minimal())
    assert types(events)[-4:] == ["executing", "execution_error", "status", "executing"]
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    name, error = entry["status"]["messages"][-1]
    assert name == "execution_error"
    assert set(error) == {"prompt_id", "node_id", "node_type", "executed", "exception_message",
                          "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert (error["node_id"], error["node_type"], error["executed"]) == ("2", "SaveImage", ["1"])
    assert error["current_inputs"]["filename_prefix"] == ["apiref"]


def test_a_filename_prefix_outside_the_output_folder_fails_at_runtime(fake):
    _, _, entry = run(fake, minimal(prefix="../escape"))  # the capture's real runtime error
    error = entry["status"]["messages"][-1][1]
    assert error["exception_type"] == "Exception"
    assert error["exception_message"].startswith("**** ERROR: Saving image outside the output folder")


def test_drop_ws_mode_closes_the_socket_after_the_first_progress_but_history_fills(fake):
    fake.fail_mode = "drop_ws"
    ws = connect(fake, "c1")
    prompt_id = submit(fake, txt2img(), client_id="c1")
    seen = []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            seen.append(json.loads(ws.recv())["type"])
    assert seen.count("progress") == 1 and seen[-1] == "progress"
    assert wait_for_history(fake, prompt_id)["status"]["status_str"] == "success"


def test_latency_delays_every_response(fake):
    fake.latency = 0.2
    started = time.monotonic()
    requests.get(f"{fake.url}/features", timeout=5)
    assert time.monotonic() - started >= 0.2


# ---------------------------------------------------------------- lifecycle


def test_restart_keeps_the_port_and_forgets_history(fake):
    prompt_id, _, _ = run(fake, minimal())
    url = fake.url
    ws = connect(fake, "c1")
    fake.restart()
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            ws.recv()
    assert fake.url == url
    assert requests.get(f"{url}/history/{prompt_id}", timeout=5).json() == {}
    assert run(fake, minimal())[2]["outputs"]["2"]["images"][0]["filename"] == "apiref_00002_.png"


def test_stop_is_quick_with_an_open_websocket_and_a_running_prompt():
    fake = FakeComfyUI(steps=100, step_delay=0.05).start()
    ws = connect(fake, "c1")
    submit(fake, txt2img(), client_id="c1")
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/prompt", timeout=1)
    ws.close()


@pytest.mark.slow
def test_it_runs_as_a_subprocess_that_can_be_killed(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.comfyui", "--port", str(port), "--steps", "2",
                             "--step-delay", "0", "--base-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 15)[0], "fake never said it was listening"
        assert proc.stdout.readline().strip() == f"listening on http://127.0.0.1:{port}"
        fake_url = f"http://127.0.0.1:{port}"
        prompt_id = requests.post(f"{fake_url}/prompt", json={"prompt": txt2img()}, timeout=5).json()["prompt_id"]
        deadline = time.monotonic() + 5
        while not requests.get(f"{fake_url}/history/{prompt_id}", timeout=5).json():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake_url}/prompt", timeout=1)


# ---------------------------------------------------------------- info routes


def test_system_stats_look_like_the_capture_and_can_report_a_gpu(fake):
    stats = requests.get(f"{fake.url}/system_stats", timeout=5).json()
    assert stats["system"]["comfyui_version"] == "0.8.0" and stats["system"]["os"] == "linux"
    assert stats["devices"][0] == {"name": "cpu", "type": "cpu", "index": None, "vram_total": 25275973632,
                                   "vram_free": 23460638720, "torch_vram_total": 25275973632,
                                   "torch_vram_free": 23460638720}
    fake.gpu_name, fake.vram_total = "NVIDIA GeForce RTX 4090", 25757220864
    device = requests.get(f"{fake.url}/system_stats", timeout=5).json()["devices"][0]
    assert device["name"] == "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"
    assert (device["type"], device["index"], device["vram_total"]) == ("cuda", 0, 25757220864)


def test_object_info_lists_the_fake_models_and_unknown_classes_are_empty(fake):
    everything = requests.get(f"{fake.url}/object_info", timeout=5).json()
    for name in ("EmptyImage", "SaveImage", "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage",
                 "KSampler", "VAEDecode", "SaveAnimatedWEBP", "SaveVideo", "SaveWEBM", "CreateVideo",
                 "EmptyHunyuanLatentVideo", "LoadImage", "PreviewImage"):
        assert everything[name]["name"] == name
    assert everything["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [MODEL]
    empty_image = requests.get(f"{fake.url}/object_info/EmptyImage", timeout=5).json()
    assert empty_image["EmptyImage"]["input_order"] == {"required": ["width", "height", "batch_size", "color"]}
    assert requests.get(f"{fake.url}/object_info/NoSuchNode", timeout=5).json() == {}
    assert requests.get(f"{fake.url}/features", timeout=5).json() == {
        "supports_preview_metadata": True, "max_upload_size": 104857600,
        "extension": {"manager": {"supports_v4": True}}}


def test_every_route_is_mirrored_under_api(fake):
    prompt_id = submit(fake, minimal())
    wait_for_history(fake, prompt_id)
    for path in ("/prompt", "/queue", "/history", f"/history/{prompt_id}", "/system_stats",
                 "/object_info/SaveImage", "/features"):
        assert requests.get(f"{fake.url}/api{path}", timeout=5).json() == \
            requests.get(f"{fake.url}{path}", timeout=5).json()
    ws = websocket.create_connection(f"ws://127.0.0.1:{fake.port}/api/ws?clientId=x", timeout=5)
    assert json.loads(ws.recv())["data"]["sid"] == "x"
    ws.close()


def test_upload_image_can_be_loaded_by_a_workflow(fake):
    upload = {"image": ("upload_test.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 8 + b"IHDR" + struct.pack(">II", 8, 4))}
    response = requests.post(f"{fake.url}/upload/image", files=upload, timeout=5)
    assert response.json() == {"name": "upload_test.png", "subfolder": "", "type": "input"}  # capture
    same = requests.post(f"{fake.url}/upload/image", files=upload, timeout=5).json()
    other = requests.post(f"{fake.url}/upload/image", files={"image": ("upload_test.png", b"other")}, timeout=5)
    assert same["name"] == "upload_test.png" and other.json()["name"] == "upload_test (1).png"
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "upload_test.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}
    assert run(fake, wf)[2]["status"]["status_str"] == "success"
    wf["1"]["inputs"]["image"] = "missing.png"
    assert post_prompt(fake, wf).json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert requests.post(f"{fake.url}/upload/image", data={"x": "1"}, timeout=5).status_code == 400


def test_view_rejects_escapes_and_404s_missing_files(fake):
    view = f"{fake.url}/view"
    assert requests.get(view, params={"filename": "nope.png"}, timeout=5).status_code == 404
    assert requests.get(view, params={"filename": "../secret.png"}, timeout=5).status_code == 400
    assert requests.get(view, params={"filename": "/etc/passwd"}, timeout=5).status_code == 400
    assert requests.get(view, params={"filename": "a.png", "type": "bogus"}, timeout=5).status_code == 400
    assert requests.get(view, params={"filename": "a.png", "subfolder": "../.."}, timeout=5).status_code == 403


def test_received_records_every_request(fake):
    requests.get(f"{fake.url}/api/system_stats", timeout=5)
    connect(fake, "c1").close()
    assert ("GET", "/api/system_stats") in fake.received and ("GET", "/ws") in fake.received
