"""The fake ComfyUI against the recorded ComfyUI 0.8.0 server (comfyui-0.8.0-capture.json).

The capture lives beside the checkout (../shared/reference); tests that replay it skip without it.
The rest need only the vendored schema and the project's own templates and manifest.
"""
import copy
import gzip
import json
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from tests.fakes.comfyui import (CAPTURE_PATH, OBJECT_INFO_PATH, FakeComfyUI, manifest_model_folders,
                                 object_info, validate_node_input)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "workers" / "workflows"
MODEL_INPUTS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name": "text_encoders",
                "vae_name": "vae"}  # the template inputs the project fills from the manifest
needs_capture = pytest.mark.skipif(not CAPTURE_PATH.exists(), reason=f"no capture at {CAPTURE_PATH}")


@pytest.fixture(scope="module")
def capture():
    with open(CAPTURE_PATH, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def fake():
    with FakeComfyUI(step_delay=0) as server:
        yield server


@pytest.fixture
def bare():
    """A ComfyUI with no model files, like the capture's server before the dummy files."""
    with FakeComfyUI(models={}, step_delay=0) as server:
        yield server


def get(fake, path):
    return requests.get(f"{fake.url}{path}", timeout=10)


def post_prompt(fake, prompt, **body):
    return requests.post(f"{fake.url}/prompt", json={"prompt": prompt, **body}, timeout=10)


def without_environment(body, fake):
    """What cannot match a recording: our paths in tracebacks, and the server's random id / counter."""
    text = json.dumps(body).replace(fake.base_dir, "<comfyui>")
    body = json.loads(text)
    if "prompt_id" in body:
        assert isinstance(body.pop("prompt_id"), str) and isinstance(body.pop("number"), (int, float))
    return body


def recorded(entry):
    body = copy.deepcopy(entry["body"])
    body.pop("prompt_id", None), body.pop("number", None)
    return body


def replay(fake, case):
    response = post_prompt(fake, case["prompt"]) if "prompt" in case else \
        requests.post(f"{fake.url}/prompt", json={"client_id": "capture"}, timeout=10)
    return response.status_code, without_environment(response.json(), fake)


def template(name):
    """A project template with its empty model names filled from the manifest, as the project does."""
    workflow = json.loads((TEMPLATES / f"{name}.json").read_text())
    models = manifest_model_folders()
    for node in workflow.values():
        for key, folder in MODEL_INPUTS.items():
            if node["inputs"].get(key) == "":
                node["inputs"][key] = models[folder][0]
    return workflow


def node_of(workflow, class_type):
    """The id of the template's (only) node of that class: the tests do not hard-code template ids."""
    [nid] = [nid for nid, node in workflow.items() if node["class_type"] == class_type]
    return nid


def run(fake, workflow):
    """Submit with a websocket attached; return (events, history entry)."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"{fake.ws_url}?clientId={client_id}", timeout=10)
    try:
        ws.recv()
        response = post_prompt(fake, workflow, client_id=client_id)
        assert response.status_code == 200, response.text
        prompt_id, events = response.json()["prompt_id"], []
        while not events or events[-1] != {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}:
            events.append(json.loads(ws.recv()))
    finally:
        ws.close()
    return events, get(fake, f"/history/{prompt_id}").json()[prompt_id]


# ---------------------------------------------------------------- the vendored schema


@needs_capture
def test_the_vendored_object_info_is_the_captures_body_node_for_node(capture):
    with gzip.open(OBJECT_INFO_PATH, "rt", encoding="utf-8") as f:
        vendored = json.load(f)
    body = capture["object_info"]["body"]
    assert vendored == body and list(vendored) == list(body) and len(vendored) == 545


@needs_capture
def test_object_info_equals_the_capture_when_the_folders_match_its_server(bare, capture):
    for name in ("example.png", "red.png"):  # what the recorded server's input folder held
        Path(bare.input_dir, name).write_bytes(b"\x89PNG\r\n\x1a\n")
    served = get(bare, "/object_info").json()
    assert served == capture["object_info"]["body"]
    assert get(bare, "/object_info/CheckpointLoaderSimple").json() == capture["object_info_one_node"]["body"]


@needs_capture
def test_loader_entries_with_the_default_folders_equal_the_captures_with_manifest_models(fake, capture):
    served = get(fake, "/object_info").json()
    loaders = capture["object_info_loaders_with_manifest_models"]["body"]
    assert {name: served[name] for name in loaders} == loaders
    for name in capture["object_info_loaders_with_manifest_models"]["nodes_changed_by_dummy_files"]:
        assert served[name] != capture["object_info"]["body"][name]


@needs_capture
def test_models_routes_answer_like_the_capture(fake, bare, capture):
    assert get(fake, "/models").json() == capture["models_folders"]["body"]
    assert get(bare, "/models/checkpoints").json() == capture["models_checkpoints_no_models"]["body"]
    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae"):
        assert get(fake, f"/models/{folder}").json() == capture[f"models_{folder}_with_manifest_models"]["body"]
    assert get(bare, "/embeddings").json() == capture["embeddings"]["body"]
    assert get(fake, "/models/unet").status_code == 404  # a legacy directory name, not a folder


def test_the_default_folders_are_the_manifests_four_files(fake):
    assert fake.models == {"checkpoints": ["v1-5-pruned-emaonly.safetensors"],
                           "diffusion_models": ["wan2.1_t2v_1.3B_fp16.safetensors"],
                           "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
                           "vae": ["wan_2.1_vae.safetensors"]}


# ---------------------------------------------------------------- validation replays


@needs_capture
@pytest.mark.parametrize("case", [k for k in json.loads(CAPTURE_PATH.read_text())["validation_errors"]
                                  if k != "note"] if CAPTURE_PATH.exists() else [])
def test_it_answers_every_recorded_validation_error_without_models_exactly(bare, capture, case):
    entry = capture["validation_errors"][case]
    assert replay(bare, entry) == (entry["status"], recorded(entry))


@needs_capture
@pytest.mark.parametrize("case", [k for k in json.loads(CAPTURE_PATH.read_text())[
    "validation_errors_with_manifest_models"] if k != "note"] if CAPTURE_PATH.exists() else [])
def test_it_answers_every_recorded_validation_error_with_manifest_models_exactly(fake, capture, case):
    entry = capture["validation_errors_with_manifest_models"][case]
    assert replay(fake, entry) == (entry["status"], recorded(entry))


@needs_capture
def test_it_accepts_the_recorded_wan_graph_with_the_manifest_models(fake, capture):
    entry = capture["wan21_t2v_diffusion_model_graph_accepted"]
    response = post_prompt(fake, entry["prompt"])
    assert response.status_code == 200 and response.json()["node_errors"] == {}


@needs_capture
@pytest.mark.parametrize("run_name", ["ws_a_fresh_run", "ws_e_create_video_save_video", "ws_e_save_webm",
                                      "ws_e_save_animated_webp", "ws_e_save_animated_png", "ws_f_binary_text_frame"])
def test_it_runs_the_recorded_workflows_to_the_recorded_outputs(fake, capture, run_name):
    recording = capture[run_name]
    pid = recording["post_prompt"]["body"]["prompt_id"]
    _, entry = run(fake, recording["request_body"]["prompt"])
    assert entry["outputs"] == recording["history"]["body"][pid]["outputs"]
    assert entry["status"]["status_str"] == "success"


# ---------------------------------------------------------------- the project's templates


@pytest.mark.parametrize("name", ["txt2img", "txt2video"])
def test_it_accepts_the_built_in_templates_filled_with_the_manifests_models(fake, name):
    response = post_prompt(fake, template(name))
    assert response.status_code == 200 and response.json()["node_errors"] == {}


def test_it_runs_the_txt2img_template_to_a_png(fake):
    fake.steps, workflow = 3, template("txt2img")
    saver = workflow[node_of(workflow, "SaveImage")]["inputs"]["filename_prefix"]
    events, entry = run(fake, workflow)
    assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    image = entry["outputs"][node_of(workflow, "SaveImage")]["images"][0]
    assert image == {"filename": f"{saver}_00001_.png", "subfolder": "", "type": "output"}
    assert get(fake, f"/view?filename={image['filename']}&type=output").content[:8] == b"\x89PNG\r\n\x1a\n"


def test_it_runs_the_txt2video_template_to_an_mp4_listed_as_animated_images(fake):
    fake.steps, workflow = 2, template("txt2video")
    saver = node_of(workflow, "SaveVideo")
    subfolder, name = workflow[saver]["inputs"]["filename_prefix"].rsplit("/", 1)  # "video/comfy-hybrid"
    events, entry = run(fake, workflow)
    assert [e["data"]["node"] for e in events if e["type"] == "progress"] == [node_of(workflow, "KSampler")] * 2
    assert entry["outputs"] == {saver: {"images": [{"filename": f"{name}_00001_.mp4", "subfolder": subfolder,
                                                    "type": "output"}], "animated": [True]}}
    view = get(fake, f"/view?filename={name}_00001_.mp4&subfolder={subfolder}&type=output")
    assert view.headers["Content-Type"] == "video/mp4" and view.content[4:8] == b"ftyp"
    assert Path(fake.output_dir, subfolder, f"{name}_00001_.mp4").is_file()


OLD_VIDEO_TEMPLATE = {  # workers/workflows/txt2video.json before the Wan 2.1 split loaders
    "3": {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "seed": 0,
        "steps": 30, "cfg": 6.0, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "wan2.1_t2v_1.3B_fp16.safetensors"}},
    "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 480, "length": 33,
                                                               "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "comfy-hybrid-video",
                                                       "fps": 16.0, "lossless": False, "quality": 90,
                                                       "method": "default"}},
}


def test_it_rejects_the_old_checkpoint_video_template_like_the_real_server(fake):
    response = post_prompt(fake, OLD_VIDEO_TEMPLATE)
    assert response.status_code == 400
    assert response.json() == {  # capture: validation_errors_with_manifest_models.ckpt_name_is_a_diffusion_models_file
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"4": {"errors": [{
            "type": "value_not_in_list", "message": "Value not in list",
            "details": "ckpt_name: 'wan2.1_t2v_1.3B_fp16.safetensors' not in ['v1-5-pruned-emaonly.safetensors']",
            "extra_info": {"input_name": "ckpt_name", "input_config": [
                ["v1-5-pruned-emaonly.safetensors"], {"tooltip": "The name of the checkpoint (model) to load."}],
                "received_value": "wan2.1_t2v_1.3B_fp16.safetensors"}}],
            "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}}


# ---------------------------------------------------------------- folders change while it runs


def test_it_rejects_a_model_removed_from_its_folder_while_running_and_object_info_follows(fake):
    assert post_prompt(fake, template("txt2video")).status_code == 200
    fake.models["diffusion_models"] = []
    response = post_prompt(fake, template("txt2video"))
    assert response.status_code == 400
    assert response.json()["node_errors"][node_of(template("txt2video"), "UNETLoader")]["errors"] == [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "unet_name: 'wan2.1_t2v_1.3B_fp16.safetensors' not in []",
        "extra_info": {"input_name": "unet_name", "input_config": [[], {}],
                       "received_value": "wan2.1_t2v_1.3B_fp16.safetensors"}}]
    assert get(fake, "/object_info/UNETLoader").json()["UNETLoader"]["input"]["required"]["unet_name"] == [[]]
    assert get(fake, "/models/diffusion_models").json() == []
    fake.models = {**fake.models, "diffusion_models": ["wan2.1_t2v_1.3B_fp16.safetensors"]}  # put back
    assert post_prompt(fake, template("txt2video")).status_code == 200


def test_a_plain_list_of_models_means_checkpoints_only():
    fake = FakeComfyUI(models=["a.safetensors", "notes.txt"])
    assert fake.models == {"checkpoints": ["a.safetensors", "notes.txt"]}
    with fake:
        assert get(fake, "/models/checkpoints").json() == ["a.safetensors"]  # only model extensions count
        assert get(fake, "/models/vae").json() == []
        vae = get(fake, "/object_info/VAELoader").json()["VAELoader"]["input"]["required"]["vae_name"]
        assert vae == [["pixel_space"]]


def test_vae_loader_lists_taesd_only_when_both_halves_are_there():
    fake = FakeComfyUI(models={"vae": ["b.safetensors", "a.pt"],
                               "vae_approx": ["taesd_decoder.pth", "taesd_encoder.pth", "taesdxl_decoder.pth",
                                              "taehv.pth"]})
    with fake:
        vae = get(fake, "/object_info/VAELoader").json()["VAELoader"]["input"]["required"]["vae_name"]
    assert vae == [["a.pt", "b.safetensors", "taehv.pth", "taesd", "pixel_space"]]


def test_v3_loaders_list_their_folder_in_the_combo_format(fake):
    fake.models["upscale_models"] = ["4x.pth"]
    spec = get(fake, "/object_info/UpscaleModelLoader").json()["UpscaleModelLoader"]["input"]["required"]
    assert spec["model_name"] == ["COMBO", {"multiselect": False, "options": ["4x.pth"]}]


# ---------------------------------------------------------------- validation details beyond the capture


def test_it_converts_widget_values_in_the_queued_prompt_like_the_real_server(fake):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": "64", "height": 64.9, "batch_size": 1,
                                                             "color": {"__value__": 0}}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": 7}}}
    pid = post_prompt(fake, workflow).json()["prompt_id"]
    deadline = time.monotonic() + 5
    while not (entry := get(fake, f"/history/{pid}").json()) and time.monotonic() < deadline:
        time.sleep(0.02)
    stored = entry[pid]["prompt"][2]
    assert stored["1"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1, "color": 0}
    assert stored["2"]["inputs"]["filename_prefix"] == "7"


def test_it_rejects_a_long_combo_value_without_echoing_the_list(fake):
    workflow = {"1": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "bogus"}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    error = post_prompt(fake, workflow).json()["node_errors"]["1"]["errors"][0]
    assert error["details"] == "sampler_name: 'bogus' not in (list of length 44)"
    assert error["extra_info"]["input_config"] is None


def test_it_expands_v3_autogrow_inputs_and_checks_each_grown_slot(fake):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "3": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0],
                                                                  "images.image1": ["1", 0]}},
                "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "grown"}}}
    assert post_prompt(fake, workflow).status_code == 200
    workflow["3"]["inputs"]["images.image2"] = ["2", 0]
    error = post_prompt(fake, workflow).json()["node_errors"]["3"]["errors"][0]
    assert error["type"] == "return_type_mismatch" and error["extra_info"]["input_name"] == "images.image2"


def test_it_expands_a_v3_dynamic_combo_and_names_a_missing_nested_input_by_its_last_part(fake):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "ResizeImageMaskNode", "inputs": {
                    "input": ["1", 0], "resize_type": "scale dimensions", "resize_type.width": 16,
                    "scale_method": "nearest-exact"}},
                "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    errors = post_prompt(fake, workflow).json()["node_errors"]["2"]["errors"]
    assert [(e["type"], e["details"], e["extra_info"]["input_name"]) for e in errors] == [
        ("required_input_missing", "height", "resize_type.height"),
        ("required_input_missing", "crop", "resize_type.crop")]


def test_it_lets_a_custom_combo_validator_accept_any_choice(fake):
    workflow = {"1": {"class_type": "CustomCombo", "inputs": {"choice": "made up"}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    assert post_prompt(fake, workflow).json()["node_errors"] == {}


def test_it_reports_a_validator_that_cannot_be_called_as_an_exception(fake):
    workflow = {"1": {"class_type": "LoadImage", "inputs": {}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    node_errors = post_prompt(fake, workflow).json()["node_errors"]
    assert list(node_errors) == ["1"]  # the exception replaces node 1's own required_input_missing
    error = node_errors["1"]["errors"][0]
    assert error["type"] == "exception_during_inner_validation" and error["extra_info"]["exception_type"] == "TypeError"
    assert error["details"] == "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'"


def test_it_matches_types_like_validate_node_input():
    assert validate_node_input("IMAGE", "IMAGE") and validate_node_input("LATENT", "*")
    assert validate_node_input("INT", "STRING,INT") and validate_node_input("IMAGE", "COMFY_MATCHTYPE_V3")
    assert validate_node_input(["a", "b"], "COMBO") and not validate_node_input("STRING", ["a", "b"])
    assert not validate_node_input("IMAGE", "MASK") and not validate_node_input("STRING,BOOLEAN", "INT")


def test_it_runs_a_valid_workflow_of_nodes_it_does_not_simulate(fake):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 2, "color": 9}},
                "2": {"class_type": "ImageFlip", "inputs": {"image": ["1", 0], "flip_method": "x-axis: vertically"}},
                "3": {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}},
                "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
                "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "generic"}}}
    _, entry = run(fake, workflow)
    assert entry["status"]["status_str"] == "success"
    assert [i["filename"] for i in entry["outputs"]["5"]["images"]] == ["generic_00001_.png"]
    assert all(name in object_info() for name in ("ImageFlip", "ImageToMask", "MaskToImage"))


# ---------------------------------------------------------------- checked against a real server
# tests/data/comfyui-0.8.0-session-checks.json: prompts this project sent to a real ComfyUI 0.8.0
# (CPU, empty files named like the manifest's models) and what it answered.
SESSION_CHECKS = ROOT / "tests" / "data" / "comfyui-0.8.0-session-checks.json"


def session_checks():
    return json.loads(SESSION_CHECKS.read_text())["cases"]


@pytest.mark.parametrize("name", sorted(session_checks()))
def test_it_answers_each_prompt_checked_on_a_real_server_as_that_server_did(fake, name):
    case = session_checks()[name]
    response = post_prompt(fake, case["prompt"])
    assert response.status_code == case["status"]
    body = response.json()
    if case["status"] == 200:  # prompt_id and number differ from run to run
        assert set(body) == set(case["body"]) and body["node_errors"] == case["body"]["node_errors"]
    else:
        assert body == case["body"]


@pytest.mark.parametrize("kind, name", [("image", "img"), ("video", "vid")])
def test_the_templates_are_still_the_ones_the_real_server_accepted(kind, name):
    from workers.workflows import build_workflow

    built = build_workflow(kind=kind, prompt="a red fox", negative_prompt="", width=256, height=256, seed=42,
                           duration_seconds=1)
    assert built == session_checks()[name]["prompt"]  # a template change needs a new real-server check


# ---------------------------------------------------------------- binary preview frames


def _sampler_frames(fake, flags: bool):
    """A sampler run on one socket: the text events' types and the binary frames, in order."""
    from workers.workflows import build_workflow

    workflow = build_workflow(kind="image", prompt="p", negative_prompt="", width=512, height=512, seed=1,
                              duration_seconds=0)  # the SD 1.5 template: KSampler, with the manifest's model
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"{fake.ws_url}?clientId={client_id}", timeout=10)
    try:
        ws.recv()  # status
        if flags:
            ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            assert json.loads(ws.recv())["type"] == "feature_flags"
        response = post_prompt(fake, workflow, client_id=client_id)
        assert response.status_code == 200, response.text
        prompt_id, seen = response.json()["prompt_id"], []
        while seen[-1:] != [("executing", None)]:
            frame = ws.recv()
            if isinstance(frame, bytes):
                seen.append(("binary", frame))
            else:
                event = json.loads(frame)
                seen.append((event["type"], (event.get("data") or {}).get("node", "-")))
    finally:
        ws.close()
    return prompt_id, seen


@needs_capture
@pytest.mark.parametrize("flags", [False, True])
def test_sampler_previews_have_the_captures_frame_layout_and_follow_each_progress_event(capture, flags):
    name = "ws_f_binary_preview_with_feature_flags" if flags else "ws_f_binary_preview_no_feature_flags"
    recorded = next(m for m in capture[name]["messages"] if m.get("binary"))
    with FakeComfyUI(step_delay=0, steps=3, preview_method="auto") as fake:
        prompt_id, seen = _sampler_frames(fake, flags)
    frames = [frame for kind, frame in seen if kind == "binary"]
    assert len(frames) == 3  # one per sampler step
    for index, (kind, _) in enumerate(seen):
        if kind == "binary":
            assert seen[index - 1][0] == "progress"  # the preview follows its step's progress event
    for frame in frames:
        if not flags:
            assert frame[:8].hex() == recorded["first_8_bytes_hex"]  # type 1, format 2 (PNG)
        else:
            length = int.from_bytes(frame[4:8], "big")
            meta = json.loads(frame[8:8 + length])
            assert frame[:4].hex() == recorded["first_8_bytes_hex"][:8]  # type 4
            assert list(meta) == list(recorded["decoded"]["metadata"])  # the same keys, in the same order
            assert meta["prompt_id"] == prompt_id and meta["image_type"] == "image/png"
        image = frame[8:] if not flags else frame[8 + int.from_bytes(frame[4:8], "big"):]
        assert image[:8].hex() == recorded["decoded"]["image_magic_hex"]


def test_without_a_preview_method_a_sampler_sends_no_previews(fake):
    _, seen = _sampler_frames(fake, flags=True)
    assert not [kind for kind, _ in seen if kind == "binary"]  # the real default, --preview-method none
