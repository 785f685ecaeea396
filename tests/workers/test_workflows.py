"""workers.workflows: templates filled from the manifest, what a workflow needs, what a ComfyUI has."""
import gzip
import json
from pathlib import Path

import pytest

from workers.installer.manifest import DEFAULT_MANIFEST, load_manifest
from workers.workflows import WorkflowError, build_workflow, validate_workflow
from workers.workflows.requirements import (
    MODEL_INPUTS,
    Inventory,
    combo_options,
    inventory_from_object_info,
    requirements_of,
)

ROOT = Path(__file__).resolve().parents[2]
OBJECT_INFO = ROOT / "tests" / "data" / "comfyui-0.8.0-object_info.json.gz"
CAPTURE = ROOT.parent / "shared" / "reference" / "comfyui-0.8.0-capture.json"


def _build(kind):
    return build_workflow(kind=kind, prompt="a fox", negative_prompt="", width=512, height=512, seed=3,
                          duration_seconds=2)


def _object_info():
    return json.loads(gzip.decompress(OBJECT_INFO.read_bytes()))


@pytest.mark.parametrize("kind, template", [("image", "txt2img"), ("video", "txt2video")])
def test_each_template_needs_exactly_the_models_the_manifest_installs_for_it(kind, template):
    manifest = {(m.dest.removeprefix("models/"), m.filename) for m in load_manifest(DEFAULT_MANIFEST).models
                if template in m.templates}
    assert manifest and requirements_of(_build(kind)).models == manifest


def test_the_video_template_loads_wan_with_its_own_loaders_and_saves_an_mp4():
    classes = {node["class_type"] for node in _build("video").values()}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "SaveVideo"} <= classes
    assert "CheckpointLoaderSimple" not in classes
    save = next(node for node in _build("video").values() if node["class_type"] == "SaveVideo")
    assert save["inputs"]["format"] == "mp4"


def test_every_manifest_loader_input_is_in_the_model_inputs_table():
    for model in load_manifest(DEFAULT_MANIFEST).models:
        class_type, name = model.loads_with.split(".")
        assert MODEL_INPUTS[class_type][name] == model.dest.removeprefix("models/")


def test_every_model_input_of_the_table_exists_in_comfyui_080():
    info = _object_info()
    for class_type, inputs in MODEL_INPUTS.items():
        if class_type not in info:
            continue  # a node of a later release or a custom pack: harmless here
        spec = info[class_type]["input"]
        for name in inputs:
            assert name in {**spec.get("required", {}), **spec.get("optional", {})}, f"{class_type}.{name}"


def test_requirements_name_every_loader_file_and_every_node_class():
    workflow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5.safetensors", "clip_name2": "l.safetensors"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "style.safetensors"}},
        "5": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
        "6": {"class_type": "MyCustomNode", "inputs": {"x": 1}},
    }
    needs = requirements_of(workflow)
    assert needs.models == {("diffusion_models", "flux.safetensors"), ("text_encoders", "t5.safetensors"),
                            ("text_encoders", "l.safetensors"), ("loras", "style.safetensors"),
                            ("upscale_models", "4x.pth")}  # pixel_space is built in
    assert needs.nodes == {"UNETLoader", "DualCLIPLoader", "VAELoader", "LoraLoaderModelOnly",
                           "UpscaleModelLoader", "MyCustomNode"}


def test_the_inventory_reads_both_combo_formats_of_comfyui_080():
    assert combo_options([["a.safetensors", "b.safetensors"], {}]) == ["a.safetensors", "b.safetensors"]
    assert combo_options(["COMBO", {"options": ["c.safetensors"], "multiselect": False}]) == ["c.safetensors"]
    assert combo_options(["STRING", {}]) == []


@pytest.mark.skipif(not CAPTURE.exists(), reason="the shared capture is not beside this checkout")
def test_the_inventory_of_the_captured_server_lists_the_manifest_files_by_folder():
    capture = json.loads(CAPTURE.read_text())
    info = {**capture["object_info"]["body"], **capture["object_info_loaders_with_manifest_models"]["body"]}
    inventory = inventory_from_object_info(info)
    assert inventory["models"]["checkpoints"] == ["v1-5-pruned-emaonly.safetensors"]
    assert inventory["models"]["diffusion_models"] == ["wan2.1_t2v_1.3B_fp16.safetensors"]
    assert inventory["models"]["text_encoders"] == ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"]
    assert inventory["models"]["vae"] == ["wan_2.1_vae.safetensors"]
    assert len(inventory["nodes"]) == capture["object_info"]["node_count"]
    assert Inventory.from_json(inventory).lacks(requirements_of(_build("video"))) == []


def test_an_inventory_says_what_it_lacks_by_folder_and_node():
    inventory = Inventory.from_json({"models": {"checkpoints": ["v1-5-pruned-emaonly.safetensors"]},
                                     "nodes": ["CheckpointLoaderSimple"]})
    lacks = inventory.lacks(requirements_of(_build("video")))
    assert "diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors" in lacks and "node UNETLoader" in lacks
    assert Inventory.from_json({"models": {}}).lacks(requirements_of(_build("image"))) == [
        "checkpoints/v1-5-pruned-emaonly.safetensors"]  # nodes unknown: only models are checked
    assert Inventory.from_json({}) is None


@pytest.mark.parametrize("outputs", [
    {"2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
    {"2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}},
])
def test_a_workflow_that_saves_nothing_storable_is_refused(outputs):
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                **outputs}
    with pytest.raises(WorkflowError, match="saves nothing Comfy Hybrid can keep"):
        validate_workflow(workflow, max_nodes=50)


def test_both_templates_pass_validation():
    for kind in ("image", "video"):
        validate_workflow(_build(kind), max_nodes=50)
