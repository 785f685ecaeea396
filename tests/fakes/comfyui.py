"""A fake ComfyUI server for tests, speaking the ComfyUI 0.8.0 HTTP + WebSocket protocol.

Shapes, ordering and quirks follow the real responses recorded in
/work/shared/reference/comfyui-0.8.0-capture.json ("the capture" below; its companion .md says how
it was taken). Where the capture has no example, the logic is a small port of the named ComfyUI
0.8.0 function (server.py, execution.py, folder_paths.py, nodes.py, comfy_api/latest/_io.py).

Node schemas are the capture's full /object_info body (545 nodes, vendored as
tests/data/comfyui-0.8.0-object_info.json.gz, see `vendor_object_info`). Every combo that the real
nodes fill from the disk (model folders, the input folder) is filled at request time from
`FakeComfyUI.models` and the fake's input folder, so changing `models` while the server runs is
seen by the next /object_info, /models/{folder} and POST /prompt, as the real server rescans.
POST /prompt validates like execution.py:validate_prompt (v1 and v3 schemas, dynamic inputs,
custom VALIDATE_INPUTS / validate_inputs) with the capture's exact error bodies. Execution simulates
the nodes of the project's templates (KSampler reports `progress` per step, savers write real
PNG/WEBP/WEBM/MP4 files) and runs every other node generically (opaque placeholder outputs; an
IMAGE output is a small image), so any valid workflow runs to the end.

In-process use::

    with FakeComfyUI(steps=3, step_delay=0.01) as fake:
        requests.post(fake.url + "/prompt", json={"prompt": workflow, "client_id": "c1"})

    FakeComfyUI()                                   # a fully installed ComfyUI: the manifest's models
    FakeComfyUI(models={})                          # no model files at all (the capture's "no models")
    FakeComfyUI(models=["sd15.safetensors"])        # a list: checkpoints only, every other folder empty
    FakeComfyUI(models={"checkpoints": [...], "loras": [...]})
    fake.models["diffusion_models"] = []            # takes effect on the next request

As a process (tests kill -9 it)::

    python -m tests.fakes.comfyui --port 8188 --steps 5
    # prints "listening on http://127.0.0.1:8188" once ready
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import hashlib
import heapq
import ipaddress
import json
import math
import mimetypes
import os
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
import weakref
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from aiohttp import WSCloseCode, WSMsgType, web
from tests.fakes.loopback import serve_until_terminated

# server.py registers these too, so /view answers with the same Content-Type as the real server.
mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/mp4", ".mp4")

REPO_ROOT = Path(__file__).resolve().parents[2]
OBJECT_INFO_PATH = REPO_ROOT / "tests" / "data" / "comfyui-0.8.0-object_info.json.gz"
CAPTURE_PATH = REPO_ROOT.parent / "shared" / "reference" / "comfyui-0.8.0-capture.json"
MANIFEST_PATH = REPO_ROOT / "deploy" / "comfyui-manifest.json"

FAIL_MODES = (None, "http500", "garbage", "hang", "runtime_error", "drop_ws")
DEFAULT_MODELS = ["v1-5-pruned-emaonly.safetensors"]  # the default checkpoints (kept for bench/)
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600,
            "extension": {"manager": {"supports_v4": True}}}  # capture: features
MAX_SIDE = 64  # generated images are capped at 64x64 so tests stay fast
MAX_HISTORY = 10000  # execution.py MAXIMUM_HISTORY_SIZE
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")  # stripped before storing
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's own 500 body
GARBAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>not JSON at all</body></html>"
SAMPLER_NODES = {"KSampler", "KSamplerAdvanced"}  # nodes that report `progress` per step


# --------------------------------------------------------------------------- node schemas

@functools.cache
def object_info():
    """The vendored 0.8.0 /object_info body (no model files). Shared: never mutate it."""
    with gzip.open(OBJECT_INFO_PATH, "rt", encoding="utf-8") as f:
        return json.load(f)


def vendor_object_info(capture=CAPTURE_PATH, target=OBJECT_INFO_PATH):
    """Write the capture's object_info body to `target` (gzip, reproducible). Run once by hand:

        python -c "from tests.fakes.comfyui import vendor_object_info; vendor_object_info()"
    """
    with open(capture, encoding="utf-8") as f:
        body = json.load(f)["object_info"]["body"]
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)


def is_v3(entry):
    """v3 (comfy_api) nodes report every NodeInfoV1 field; server.py's v1 node_info never has this one."""
    return "output_matchtypes" in entry


# --------------------------------------------------------------------------- model folders
# folder_paths.py: the folders ComfyUI knows (GET /models lists them in this order), the
# directories behind each one and the file extensions get_filename_list keeps.

MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                 "upscale_models", "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker",
                 "classifiers", "model_patches", "audio_encoders"]  # capture: models_folders
PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
FOLDER_EXTENSIONS = {"configs": {".yaml"}, "diffusers": {"folder"}, "custom_nodes": set(), "classifiers": {""}}
FOLDER_DIRS = {"text_encoders": ["text_encoders", "clip"], "diffusion_models": ["unet", "diffusion_models"],
               "controlnet": ["controlnet", "t2i_adapter"]}  # a folder may read several directories
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}  # folder_paths.map_legacy
# What a fresh ComfyUI checkout already has in its folders (a folder missing from `models` holds this).
SHIPPED_FILES = {
    "configs": ["anything_v3.yaml", "v1-inference.yaml", "v1-inference_clip_skip_2.yaml",
                "v1-inference_clip_skip_2_fp16.yaml", "v1-inference_fp16.yaml", "v1-inpainting-inference.yaml",
                "v2-inference-v.yaml", "v2-inference-v_fp32.yaml", "v2-inference.yaml", "v2-inference_fp32.yaml",
                "v2-inpainting-inference.yaml"],
    "custom_nodes": ["example_node.py.example", "websocket_image_save.py"],
}


def manifest_model_folders(path=MANIFEST_PATH):
    """{folder: [file]} of deploy/comfyui-manifest.json: dest "models/checkpoints" -> "checkpoints"."""
    folders = {}
    for model in json.loads(Path(path).read_text(encoding="utf-8"))["models"]:
        parts = model["dest"].strip("/").split("/")
        parts = parts[1:] if parts[0] == "models" else parts
        folder = LEGACY_FOLDERS.get(parts[0], parts[0])
        folders.setdefault(folder, []).append("/".join(parts[1:] + [model["filename"]]))
    return folders


def model_folders(models=None):
    """FakeComfyUI(models=...) as {folder: [file]}: None = the manifest, a list = checkpoints only."""
    if models is None:
        return manifest_model_folders()
    if isinstance(models, Mapping):
        return {folder: list(files) for folder, files in models.items()}
    return {"checkpoints": list(models)}


def filename_list(models, folder):
    """folder_paths.get_filename_list: the folder's files with a known extension, sorted, no duplicates."""
    folder = LEGACY_FOLDERS.get(folder, folder)
    extensions = FOLDER_EXTENSIONS.get(folder, PT_EXTENSIONS)
    files = set()
    for directory in FOLDER_DIRS.get(folder, [folder]):
        files.update(models.get(directory, SHIPPED_FILES.get(directory, [])))
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def vae_list(models):
    """nodes.py VAELoader.vae_list: vae files, video TAEs, complete TAESD pairs, then pixel_space."""
    vaes, found = filename_list(models, "vae"), set()
    for name in filename_list(models, "vae_approx"):
        prefix = next((p for p in TAESD_PARTS if name.startswith(p)), None)
        if prefix is not None:
            found.add(TAESD_PARTS[prefix])
        elif any(name.startswith(tae) for tae in VIDEO_TAES):
            vaes.append(name)
    vaes += [tae for tae in IMAGE_TAES if {(tae, "enc"), (tae, "dec")} <= found]
    return vaes + ["pixel_space"]


VIDEO_TAES = ["taehv", "lighttaew2_2", "lighttaew2_1", "lighttaehy1_5"]
IMAGE_TAES = ["taesd", "taesdxl", "taesd3", "taef1"]
TAESD_PARTS = {f"{tae}_{part}.": (tae, part[:3]) for tae in IMAGE_TAES for part in ("decoder", "encoder")}


# --------------------------------------------------------------------------- combos read from disk
# Every node input whose list the real node builds from a folder when its schema is asked for.

def _folder(name, *extra):
    return lambda src: filename_list(src.models, name) + list(extra)


def _input_files(keep):
    """Files directly in the input folder that `keep(name, path)` accepts, sorted (nodes.py LoadImage)."""
    def options(src):
        if not src.input_dir or not os.path.isdir(src.input_dir):
            return []
        paths = ((f, os.path.join(src.input_dir, f)) for f in os.listdir(src.input_dir))
        return sorted(f for f, path in paths if os.path.isfile(path) and keep(f, path))
    return options


def content_type(name):
    """folder_paths.filter_files_content_types: the MIME major type of a file name ("image", ...)."""
    extension = name.split(".")[-1]
    if extension in ("webp", "fbx"):
        return {"webp": "image", "fbx": "model"}[extension]
    mime = mimetypes.guess_type(name, strict=False)[0]
    return mime.split("/")[0] if mime else None


def _text_or_pdf(limit):
    return lambda name, path: name.endswith((".txt", ".pdf")) and os.path.getsize(path) < limit


def _models_3d(src):
    """nodes_load_3d Load3D: model files anywhere under input/3d, as paths relative to input/."""
    if not src.input_dir:
        return []
    base = Path(src.input_dir)
    found = [p.relative_to(base).as_posix() for p in (base / "3d").rglob("*")
             if p.suffix.lower() in {".gltf", ".glb", ".obj", ".fbx", ".stl"}]
    return sorted(found)


def _input_subfolders(src):
    """folder_paths.get_input_subfolders: every folder below input/, relative, sorted."""
    if not src.input_dir:
        return []
    return sorted(os.path.relpath(root, src.input_dir).replace(os.sep, "/")
                  for root, _, _ in os.walk(src.input_dir) if root != src.input_dir)


def _diffusers(src):
    """nodes.py DiffusersLoader: model folders under models/diffusers (names in models["diffusers"])."""
    return sorted(src.models.get("diffusers", []))


_CKPT, _TE, _LORA = _folder("checkpoints"), _folder("text_encoders"), _folder("loras")
LIVE_COMBOS = {
    "CheckpointLoaderSimple": {"ckpt_name": _CKPT}, "unCLIPCheckpointLoader": {"ckpt_name": _CKPT},
    "CheckpointLoader": {"config_name": _folder("configs"), "ckpt_name": _CKPT},
    "ImageOnlyCheckpointLoader": {"ckpt_name": _CKPT}, "CreateHookModelAsLora": {"ckpt_name": _CKPT},
    "CreateHookModelAsLoraModelOnly": {"ckpt_name": _CKPT},
    "UNETLoader": {"unet_name": _folder("diffusion_models")},
    "CLIPLoader": {"clip_name": _TE}, "DualCLIPLoader": {"clip_name1": _TE, "clip_name2": _TE},
    "TripleCLIPLoader": {f"clip_name{i}": _TE for i in (1, 2, 3)},
    "QuadrupleCLIPLoader": {f"clip_name{i}": _TE for i in (1, 2, 3, 4)},
    "VAELoader": {"vae_name": lambda src: vae_list(src.models)},
    "LoraLoader": {"lora_name": _LORA}, "LoraLoaderModelOnly": {"lora_name": _LORA},
    "CreateHookLora": {"lora_name": _LORA}, "CreateHookLoraModelOnly": {"lora_name": _LORA},
    "TrainLoraNode": {"existing_lora": _folder("loras", "[None]")},
    "ControlNetLoader": {"control_net_name": _folder("controlnet")},
    "DiffControlNetLoader": {"control_net_name": _folder("controlnet")},
    "CLIPVisionLoader": {"clip_name": _folder("clip_vision")},
    "StyleModelLoader": {"style_model_name": _folder("style_models")},
    "GLIGENLoader": {"gligen_name": _folder("gligen")},
    "HypernetworkLoader": {"hypernetwork_name": _folder("hypernetworks")},
    "UpscaleModelLoader": {"model_name": _folder("upscale_models")},
    "LatentUpscaleModelLoader": {"model_name": _folder("latent_upscale_models")},
    "ModelPatchLoader": {"name": _folder("model_patches")},
    "PhotoMakerLoader": {"photomaker_model_name": _folder("photomaker")},
    "DiffusersLoader": {"model_path": _diffusers},
    "LoadImage": {"image": _input_files(lambda name, path: content_type(name) == "image")},
    "LoadImageMask": {"image": _input_files(lambda name, path: True)},
    "LoadLatent": {"latent": _input_files(lambda name, path: name.endswith(".latent"))},
    "LoadVideo": {"file": _input_files(lambda name, path: content_type(name) == "video")},
    "GeminiInputFiles": {"file": _input_files(_text_or_pdf(20 * 1024 * 1024))},
    "OpenAIInputFiles": {"file": _input_files(_text_or_pdf(32 * 1024 * 1024))},
    "Load3D": {"model_file": _models_3d},
    "LoadImageDataSetFromFolder": {"folder": _input_subfolders},
    "LoadImageTextDataSetFromFolder": {"folder": _input_subfolders},
}


def _with_options(spec, options):
    """A combo input spec with new options, in its own format: v3 ["COMBO", {..."options"}] or v1 [[...], ...]."""
    if spec[0] == "COMBO":
        return ["COMBO", {**spec[1], "options": options}]
    return [options, *spec[1:]]


class NodeSchemas(Mapping):
    """The live /object_info: the vendored schema, combos read from `models` and `input_dir` on lookup."""

    def __init__(self, models, input_dir):
        self.models, self.input_dir = models, input_dir

    def __getitem__(self, name):
        entry = object_info()[name]
        live = LIVE_COMBOS.get(name)
        if not live:
            return entry
        inputs = {category: dict(specs) for category, specs in entry["input"].items()}
        for input_name, options in live.items():
            for specs in inputs.values():
                if input_name in specs:
                    specs[input_name] = _with_options(specs[input_name], options(self))
        return {**entry, "input": inputs}

    def __iter__(self):
        return iter(object_info())

    def __len__(self):
        return len(object_info())


def node_table(models=None, input_files=()):
    """Every node class the fake knows, {name: /object_info entry} (input_files: ignored, kept for bench/)."""
    return dict(NodeSchemas(model_folders(models), None))


# --------------------------------------------------------------------------- validation
# A port of execution.py (0.8.0) validate_prompt / validate_inputs with the capture's 400 shapes.
# Where the real code iterates a set (the inputs of a node, the output nodes) the fake uses the
# schema's / prompt's order; the real order is arbitrary.

def _err(type_, message, details="", extra_info=None):
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def _is_link(value):
    """validate_inputs' test: any list input is a link (its shape is checked separately)."""
    return isinstance(value, list)


def is_link(value):
    """comfy_execution/graph_utils.is_link: what get_input_data treats as a connection."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)))


def _type_name(cls):
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Site(NamedTuple):
    """One traceback frame of the real execution.py (0.8.0, Python 3.11 format)."""
    line: int
    function: str
    code: str
    tildes: str  # the part of `code` Python 3.11 underlines with ~ (may be empty), then ^ for the rest
    marked: str

    def format(self, root):
        start = self.code.index(self.tildes + self.marked) + 4
        carets = " " * start + "~" * len(self.tildes) + "^" * len(self.marked) + "\n"
        return f'  File "{root}/execution.py", line {self.line}, in {self.function}\n    {self.code}\n{carets}'


SITES = {
    "output": _Site(1043, "validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)", "",
                    "await validate_inputs(prompt_id, prompt, o, validated)"),
    "inner": _Site(838, "validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)", "",
                   "await validate_inputs(prompt_id, prompt, o_id, validated)"),
    "inputs": _Site(755, "validate_inputs", "inputs = prompt[unique_id]['inputs']", "prompt[unique_id]",
                    "['inputs']"),
    "link_node": _Site(818, "validate_inputs", "o_class_type = prompt[o_id]['class_type']", "prompt", "[o_id]"),
    "link_slot": _Site(820, "validate_inputs", "received_type = r[val[1]]", "r", "[val[1]]"),
    "custom": _Site(965, "validate_inputs", "ret = await _async_map_node_over_list(prompt_id, unique_id, obj_class, "
                    "input_filtered, validate_function_name, v3_data=v3_data)", "",
                    "await _async_map_node_over_list(prompt_id, unique_id, obj_class, input_filtered, "
                    "validate_function_name, v3_data=v3_data)"),
}


def _at(site, action):
    """Run `action`; an exception it raises remembers the real frame it would come from."""
    try:
        return action()
    except Exception as ex:
        if not hasattr(ex, "comfy_sites"):
            ex.comfy_sites = [site]
        raise


def _traceback(ctx, caller, ex):
    return [SITES[s].format(ctx.root) for s in [caller, *getattr(ex, "comfy_sites", [])]]


class _Validation:
    """One validate_prompt call: the prompt, the live schemas, the `validated` memo, the input folder."""

    def __init__(self, prompt, defs, input_exists, root):
        self.prompt, self.defs, self.input_exists, self.root = prompt, defs, input_exists, root
        self.validated = {}


def validate_prompt(prompt, defs, targets, input_exists, root="<comfyui>"):
    """Return (ok, error, good_outputs, node_errors) exactly like execution.py:validate_prompt."""
    outputs = []
    for nid in prompt:
        if "class_type" not in prompt[nid]:
            return False, _err("invalid_prompt", "Cannot execute because a node is missing the "
                               "class_type property.", f"Node ID '#{nid}'"), [], {}
        entry = defs.get(prompt[nid]["class_type"])
        if entry is None:
            return False, _err("invalid_prompt", f"Cannot execute because node {prompt[nid]['class_type']} "
                               "does not exist.", f"Node ID '#{nid}'"), [], {}
        if entry["output_node"] is True and (targets is None or nid in targets):
            outputs.append(nid)
    if not outputs:
        return False, _err("prompt_no_outputs", "Prompt has no outputs"), [], {}
    ctx = _Validation(prompt, defs, input_exists, root)
    good, failed, node_errors = [], [], {}
    for out in outputs:
        valid, reasons = _validate_output(ctx, out)
        if valid is True:
            good.append(out)
            continue
        failed.append((out, reasons))
        _collect_node_errors(ctx, out, node_errors)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
        return False, _err("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                           details), [], node_errors
    return True, None, good, node_errors


def _validate_output(ctx, out):
    try:
        return _validate_inputs(ctx, out)[:2]
    except Exception as ex:
        reasons = [_err("exception_during_validation", "Exception when validating node", str(ex),
                        {"exception_type": _type_name(type(ex)), "traceback": _traceback(ctx, "output", ex)})]
        ctx.validated[out] = (False, reasons, out)
        return False, reasons


def _collect_node_errors(ctx, out, node_errors):
    """Real quirk: every failed node validated so far gets this output, related or not."""
    for nid, (valid, reasons, _) in ctx.validated.items():
        if valid is not True and reasons:
            entry = node_errors.setdefault(nid, {"errors": reasons, "dependent_outputs": [],
                                                 "class_type": ctx.prompt[nid]["class_type"]})
            entry["dependent_outputs"].append(out)


def _validate_inputs(ctx, nid):
    """execution.py validate_inputs: (valid, errors, nid), memoised in ctx.validated."""
    if nid in ctx.validated:
        return ctx.validated[nid]
    inputs = _at("inputs", lambda: ctx.prompt[nid]["inputs"])
    entry = ctx.defs[ctx.prompt[nid]["class_type"]]
    validator = VALIDATORS.get(entry["name"])
    args = validator.args if validator else ()
    errors, valid, received_types = [], True, {}
    for name, category, spec in finalized_inputs(entry, inputs):
        if name not in inputs:
            if category == "required":
                details = name.split(".")[-1] if is_v3(entry) else name
                errors.append(_err("required_input_missing", "Required input is missing", details,
                                   {"input_name": name}))
            continue
        info = [spec[0], spec[1] if len(spec) > 1 else {}]
        if isinstance(inputs[name], list):
            error, upstream_ok = _check_link(ctx, name, info, inputs[name], args, received_types)
            valid = valid and upstream_ok
        else:
            error = _check_value(name, info, inputs, args)
        if error:
            errors.append(error)
    if validator:
        errors += _custom_validation(ctx, nid, entry, inputs, validator, received_types)
    result = (False, errors, nid) if errors or valid is not True else (True, [], nid)
    ctx.validated[nid] = result
    return result


def _check_link(ctx, name, info, link, args, received_types):
    """Returns (error or None, upstream valid). A missing node / bad slot raises, as the real one does."""
    if len(link) != 2:
        return _err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name, {"input_name": name, "input_config": info, "received_value": link}), True
    o_id = link[0]
    o_class = _at("link_node", lambda: ctx.prompt[o_id]["class_type"])
    returns = return_types(ctx.defs[o_class])
    received = _at("link_slot", lambda: returns[link[1]])
    received_types[name] = received
    if "input_types" not in args and not validate_node_input(received, info[0]):
        return _err("return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({info[0]})",
                    {"input_name": name, "input_config": info, "received_type": received,
                     "linked_node": link}), True
    try:
        return None, _validate_inputs(ctx, o_id)[0] is not False
    except Exception as ex:
        ctx.validated[o_id] = (False, [_err(
            "exception_during_inner_validation", "Exception when validating inner node", str(ex),
            {"input_name": name, "input_config": info, "exception_message": str(ex),
             "exception_type": _type_name(type(ex)), "traceback": _traceback(ctx, "inner", ex),
             "linked_node": link})], o_id)
        return None, False


def return_types(entry):
    """RETURN_TYPES: a tuple on v1 nodes, a list on v3 ones (so a bad slot's IndexError reads alike)."""
    return list(entry["output"]) if is_v3(entry) else tuple(entry["output"])


def validate_node_input(received, wanted):
    """comfy_execution/validation.py validate_node_input (non-strict)."""
    if received == wanted or "*" in (received, wanted) or "COMFY_MATCHTYPE_V3" in (received, wanted):
        return True
    if isinstance(received, list) and wanted == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    got, accepted = {t.strip() for t in received.split(",")}, {t.strip() for t in wanted.split(",")}
    return "*" in got or "*" in accepted or bool(got & accepted)


_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_value(name, info, inputs, args):
    """Convert a widget value in place (the queued prompt keeps it), then min/max and combo checks."""
    wanted, opts, value = info[0], info[1], inputs[name]
    try:
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        if isinstance(wanted, str) and wanted in _CONVERT:
            value = inputs[name] = _CONVERT[wanted](value)
    except Exception as ex:
        return _err("invalid_input_type", f"Failed to convert an input value to a {wanted} value",
                    f"{name}, {value}, {ex}", {"input_name": name, "input_config": info,
                                               "received_value": value, "exception_message": str(ex)})
    if name in args:  # the node's own validator checks this input instead
        return None
    extra = {"input_name": name, "input_config": info, "received_value": value}
    if "min" in opts and value < opts["min"]:
        return _err("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}", name, extra)
    if "max" in opts and value > opts["max"]:
        return _err("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}", name, extra)
    if isinstance(wanted, list) or wanted == "COMBO":
        return _check_combo(name, info, value, wanted if isinstance(wanted, list) else opts.get("options", []))
    return None


def _check_combo(name, info, value, options):
    if value in options:
        return None
    long_list = len(options) > 20  # gigantic lists (scanned model files) are not echoed back
    listing = f"(list of length {len(options)})" if long_list else str(options)
    return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                {"input_name": name, "input_config": None if long_list else info, "received_value": value})


# ---- v3 dynamic inputs (comfy_api/latest/_io.py get_finalized_class_inputs)

def finalized_inputs(entry, live_inputs):
    """[(name, category, spec)] a node validates: required first; v3 dynamic inputs expanded."""
    spec = entry["input"]
    if is_v3(entry):
        out = {"required": {}, "optional": {}}
        _parse_class_inputs(out, live_inputs, {k: v for k, v in spec.items() if k != "hidden"})
        spec = out
    required = spec.get("required", {})
    return ([(name, "required", s) for name, s in required.items()]
            + [(name, "optional", s) for name, s in spec.get("optional", {}).items() if name not in required])


def _prefixed(prefix, name=None):
    """_io.finalize_prefix: "images.image0" style ids of nested inputs."""
    if prefix is None:
        return name
    return ".".join(prefix + ([name] if name is not None else []))


def _parse_class_inputs(out, live, current, prefix=None):
    for category, specs in current.items():
        for name, value in specs.items():
            expand = DYNAMIC_INPUTS.get(value[0])
            if expand:
                expand(out, live, value, category, (prefix or []) + [name])
            else:
                out.setdefault(category, {})[_prefixed(prefix, name)] = value


def _expand_autogrow(out, live, value, category, prefix):
    template = value[1]["template"]
    if "names" in template:
        names = template["names"]
    else:
        names = [f"{template['prefix']}{i}" for i in range(template["max"])]
    item = [next(iter(specs.values())) for specs in template["input"].values()][-1]
    grown = {}
    for i, name in enumerate(names):
        if _prefixed(prefix, name) in live:
            grown.setdefault("required" if i < template["min"] else "optional", {})[name] = item
    _parse_class_inputs(out, live, grown, prefix)


def _expand_dynamic_combo(out, live, value, category, prefix):
    own_id = _prefixed(prefix)
    if own_id in live:
        option = next((o for o in value[1]["options"] if o["key"] == live[own_id]), None)
        if option is not None:
            _parse_class_inputs(out, live, option["inputs"], prefix)
            out.setdefault(category, {})[own_id] = value


def _expand_dynamic_slot(out, live, value, category, prefix):
    own_id = _prefixed(prefix)
    if own_id in live:
        _parse_class_inputs(out, live, value[1]["inputs"], prefix)
        out.setdefault(category, {})[own_id] = value


DYNAMIC_INPUTS = {"COMFY_AUTOGROW_V3": _expand_autogrow, "COMFY_DYNAMICCOMBO_V3": _expand_dynamic_combo,
                  "COMFY_DYNAMICSLOT_V3": _expand_dynamic_slot}


# ---- custom validation (VALIDATE_INPUTS on v1 nodes, validate_inputs on v3 ones)

class _Validator(NamedTuple):
    qualname: str  # what Python names the function in a TypeError
    args: tuple  # inspect.getfullargspec(...).args, `s`/`cls` included like the real one
    check: object  # check(ctx, **kwargs) -> True, False or a message


def _custom_validation(ctx, nid, entry, inputs, validator, received_types):
    """Call the node's validator with its literal inputs (links arrive as None); one error per argument."""
    data = _validation_input_data(entry, inputs, nid)
    given = {name: values[0] for name, values in data.items() if name in validator.args}
    if "input_types" in validator.args:
        given["input_types"] = received_types
    result = _at("custom", lambda: _call_validator(ctx, validator, given))
    if result is True:
        return []
    suffix = "" if result is False else f" - {result}"
    return [_err("custom_validation_failed", "Custom validation failed for node", f"{name}{suffix}",
                 {"input_name": name}) for name in given]


def _validation_input_data(entry, inputs, nid):
    """execution.py get_input_data without an execution list: links are missing (None)."""
    known = {name for name, _, _ in finalized_inputs(entry, inputs)}
    if not is_v3(entry):
        known |= set(entry["input"].get("hidden", {}))
    data = {}
    for name, value in inputs.items():
        if is_link(value):
            data[name] = (None,)
        elif name in known:
            data[name] = [value]
    if not is_v3(entry):
        hidden = {"PROMPT": {}, "DYNPROMPT": None, "EXTRA_PNGINFO": None, "UNIQUE_ID": nid}
        data.update({name: [hidden[kind]] for name, kind in entry["input"].get("hidden", {}).items()
                     if kind in hidden})
    return data


def _call_validator(ctx, validator, given):
    missing = [f"'{a}'" for a in validator.args[1:] if a not in given]
    if missing:
        names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + \
            ("," if len(missing) > 2 else "") + " and " + missing[-1]
        plural = "s" if len(missing) > 1 else ""
        raise TypeError(f"{validator.qualname}() missing {len(missing)} required positional argument{plural}: {names}")
    return validator.check(ctx, **given)


def _file_exists(message):
    return lambda ctx, **kw: True if ctx.input_exists(*kw.values()) else message.format(*kw.values())


def _camera_controls(ctx, **values):
    if any(not math.isclose(v, 0.0) for v in values.values()):
        return True
    return "Invalid camera control configs: at least one of the values must be non-zero"


def _aspect_ratio_1_4_to_4_1(ctx, aspect_ratio):
    """comfy_api_nodes validate_aspect_ratio_string(aspect_ratio, (1, 4), (4, 1)): raises ValueError."""
    parts = aspect_ratio.split(":")
    if len(parts) != 2:
        raise ValueError(f"Aspect ratio must be 'X:Y' (e.g., 16:9), got '{aspect_ratio}'.")
    try:
        a, b = int(parts[0].strip()), int(parts[1].strip())
    except ValueError as exc:
        raise ValueError(f"Aspect ratio must contain integers separated by ':', got '{aspect_ratio}'.") from exc
    if a <= 0 or b <= 0:
        raise ValueError(f"Aspect ratio parts must be positive integers, got {a}:{b}.")
    for bound, outside in ((0.25, a / b < 0.25), (4.0, a / b > 4.0)):
        if outside:
            raise ValueError(f"Aspect ratio `{a / b:.2g}` must be ≤ {bound:.2g}.")
    return True


def _tripo_task_id(ctx, input_types):
    if input_types["original_model_task_id"] not in ("MODEL_TASK_ID", "RIG_TASK_ID", "RETARGET_TASK_ID"):
        return "original_model_task_id must be MODEL_TASK_ID, RIG_TASK_ID or RETARGET_TASK_ID type"
    return True


_IMAGE_FILE = _file_exists("Invalid image file: {}")
_CAMERA = ("horizontal_movement", "vertical_movement", "pan", "tilt", "roll", "zoom")
VALIDATORS = {  # every node of the 545 with its own validator (nodes.py, comfy_extras, comfy_api_nodes)
    "LoadImage": _Validator("LoadImage.VALIDATE_INPUTS", ("s", "image"), _IMAGE_FILE),
    "LoadImageOutput": _Validator("LoadImage.VALIDATE_INPUTS", ("s", "image"), _IMAGE_FILE),  # inherited
    "LoadImageMask": _Validator("LoadImageMask.VALIDATE_INPUTS", ("s", "image"), _IMAGE_FILE),
    "LoadLatent": _Validator("LoadLatent.VALIDATE_INPUTS", ("s", "latent"), _file_exists("Invalid latent file: {}")),
    "LoadVideo": _Validator("LoadVideo.validate_inputs", ("s", "file"), _file_exists("Invalid video file: {}")),
    "CustomCombo": _Validator("CustomComboNode.validate_inputs", ("cls", "choice"), lambda ctx, **kw: True),
    "KlingCameraControls": _Validator("KlingCameraControls.validate_inputs", ("cls", *_CAMERA), _camera_controls),
    "FluxProUltraImageNode": _Validator("FluxProUltraImageNode.validate_inputs", ("cls", "aspect_ratio"),
                                        _aspect_ratio_1_4_to_4_1),
    "TripoConversionNode": _Validator("TripoConversionNode.validate_inputs", ("cls", "input_types"),
                                      _tripo_task_id),
}


# --------------------------------------------------------------------------- files

def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def make_png(width, height, rgb, text=None):
    """A real RGB PNG; `text` becomes tEXt chunks like SaveImage's prompt/workflow metadata."""
    rows = (b"\x00" + bytes(rgb) * width) * height
    meta = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
                    for k, v in (text or {}).items())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + meta + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b""))


def _filler(seed, size=512):
    return (hashlib.sha256(seed.encode()).digest() * (size // 32 + 1))[:size]


def make_mp4(seed):
    """Placeholder ISO-BMFF: starts with a real `ftyp` box, then free + mdat."""
    box = lambda tag, data: struct.pack(">I", 8 + len(data)) + tag + data  # noqa: E731
    return (box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
            + box(b"free", b"") + box(b"mdat", _filler(seed)))


def make_webm(seed):
    """Placeholder Matroska: a valid EBML header with DocType webm, then an unknown-size Segment."""
    header = bytes.fromhex("4286810142f7810142f2810442f381084282847765626d4287810442858102")
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(header)]) + header + \
        bytes.fromhex("1853806701ffffffffffffff") + _filler(seed)


def make_webp(seed, width, height, animated):
    """Placeholder RIFF/WEBP with a VP8X chunk (animation flag + canvas size)."""
    vp8x = bytes([0x02 if animated else 0, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    body = b"WEBP" + _chunk_riff(b"VP8X", vp8x) + _chunk_riff(b"ANIM", b"\0\0\0\0\0\0") + \
        _chunk_riff(b"ANMF", _filler(seed, 256))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk_riff(tag, data):
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _rgb(*parts):
    """A stable colour for generated (non-EmptyImage) pictures, from seed/prompt text."""
    return tuple(hashlib.sha1(repr(parts).encode()).digest()[:3])


def save_path(prefix, output_dir, width=0, height=0):
    """Port of folder_paths.get_save_image_path: (folder, name, counter, subfolder)."""
    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    subfolder = os.path.dirname(os.path.normpath(prefix))
    name = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(folder)))
    if common != output_dir:  # the capture's runtime error (filename_prefix "../escape")
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed."
                        f"\n full_output_folder: {os.path.abspath(folder)}"
                        f"\n         output_dir: {output_dir}\n         commonpath: {common}")
    os.makedirs(folder, exist_ok=True)
    counters = []
    for f in os.listdir(folder):  # `<name>_<digits>_...`: next counter is max + 1
        if f[:len(name) + 1] == name + "_":
            digits = f[len(name) + 1:].split("_")[0]
            counters.append(int(digits) if digits.isdigit() else 0)
    return folder, name, max(counters, default=0) + 1, subfolder


# --------------------------------------------------------------------------- execution helpers

class _Interrupted(Exception):
    pass


class _NodeFailed(Exception):
    def __init__(self, payload):
        super().__init__(payload["exception_message"])
        self.payload = payload


class _Run:
    """State of one executing prompt (what execution.py keeps on PromptExecutor)."""

    def __init__(self, item):
        self.number, self.pid, self.prompt, self.extra, self.outputs = item
        self.client_id = self.extra.get("client_id")
        self.messages, self.executed, self.ui, self.progress = [], [], {}, {}
        self.current = (None, None)
        self.success = self.dropped = False


def _execution_order(prompt, outputs, cached):
    """Dependencies first; a cached node's inputs are not needed so they are not visited."""
    order, seen = [], set()

    def visit(nid):
        if nid in seen:
            return
        seen.add(nid)
        if nid not in cached:
            for value in prompt[nid]["inputs"].values():
                if _is_link(value):
                    visit(value[0])
        order.append(nid)

    for out in outputs:
        visit(out)
    return order


def _signature(prompt, nid, memo):
    """Cache key of a node: its class, literal inputs and upstream signatures (classic cache)."""
    if nid not in memo:
        node = prompt[nid]
        inputs = {k: (["link", _signature(prompt, v[0], memo), v[1]] if _is_link(v) else v)
                  for k, v in node["inputs"].items()}
        memo[nid] = hashlib.sha1(json.dumps([node["class_type"], inputs], sort_keys=True,
                                            default=str).encode()).hexdigest()
    return memo[nid]


def _formatted(value):
    return value if value is None or isinstance(value, (int, float, bool, str)) else str(value)


def _ms():
    return int(time.time() * 1000)



# --------------------------------------------------------------------------- what nodes "compute"
# Small dicts stand in for tensors: an image {w, h, n, rgb}, a latent {w, h, n, frames[, rgb]},
# a video {images, fps}. Nodes without a simulation below run generically.

def _image(w, h, n, rgb):
    return {"w": int(w), "h": int(h), "n": int(n), "rgb": tuple(rgb)}


def _is_image(value):
    return isinstance(value, dict) and {"w", "h", "n", "rgb"} <= set(value) and "frames" not in value


def _is_latent(value):
    return isinstance(value, dict) and "frames" in value


def _as_image(value, seed=""):
    """What a saver gets: an image, the frames of a video, or a small grey stand-in for anything else."""
    if isinstance(value, dict) and _is_image(value.get("images")):
        return value["images"]
    return value if _is_image(value) else _image(64, 64, 1, _rgb(seed))


def generic_outputs(entry, nid, args):
    """Opaque placeholders per output type; IMAGE/LATENT pass an upstream one through (or a small new one)."""
    image = next((v for v in args.values() if _is_image(v)), None)
    latent = next((v for v in args.values() if _is_latent(v)), None)
    return tuple(_placeholder(t, entry["name"], nid, image, latent) for t in entry["output"])


def _placeholder(io_type, cls, nid, image, latent):
    if io_type == "IMAGE":
        return dict(image) if image else _image(64, 64, 1, _rgb(cls, nid))
    if io_type == "LATENT":
        return dict(latent) if latent else {"w": 64, "h": 64, "n": 1, "frames": 1}
    if io_type == "VIDEO":
        return {"images": image or _image(64, 64, 1, _rgb(cls, nid)), "fps": 24.0}
    return f"{io_type}:{cls}#{nid}"


def _sim_empty_image(fake, run, a):
    c = int(a["color"])
    return (_image(a["width"], a["height"], a["batch_size"], ((c >> 16) & 255, (c >> 8) & 255, c & 255)),), None


def _sim_empty_latent(fake, run, a):
    return ({"w": int(a["width"]), "h": int(a["height"]), "n": int(a["batch_size"]),
             "frames": int(a.get("length", 1))},), None


def _sim_sampler(fake, run, a):
    latent = a["latent_image"] if _is_latent(a.get("latent_image")) else {"w": 64, "h": 64, "n": 1, "frames": 1}
    return ({**latent, "rgb": _rgb(a.get("seed", a.get("noise_seed")), a.get("positive"), a.get("negative"))},), None


def _sim_vae_decode(fake, run, a):
    lat = a["samples"] if _is_latent(a.get("samples")) else {"w": 64, "h": 64, "n": 1, "frames": 1}
    return (_image(lat["w"], lat["h"], lat["n"] * lat["frames"], lat.get("rgb", (128, 128, 128))),), None


def _sim_image_invert(fake, run, a):
    img = _as_image(a["image"])
    return ({**img, "rgb": tuple(255 - c for c in img["rgb"])},), None


def _sim_preview_any(fake, run, a):
    """comfy_extras/nodes_preview_any.py: the value as text in the ui."""
    source = a.get("source")
    if isinstance(source, str):
        value = source
    elif isinstance(source, (int, float, bool)):
        value = str(source)
    else:
        value = "None" if source is None else json.dumps(source, indent=4, default=str)
    return (), {"text": [value]}


def _sim_checkpoint(fake, run, a):
    name = a["ckpt_name"]
    return ("MODEL:" + name, "CLIP:" + name, "VAE:" + name), None


SIMULATIONS = {
    "EmptyImage": _sim_empty_image,
    "LoadImage": lambda fake, run, a: (fake._load_image(a["image"]), None),
    "CheckpointLoaderSimple": _sim_checkpoint,
    "UNETLoader": lambda fake, run, a: (("MODEL:" + a["unet_name"],), None),
    "CLIPLoader": lambda fake, run, a: ((f"CLIP:{a['clip_name']}:{a['type']}",), None),
    "VAELoader": lambda fake, run, a: (("VAE:" + a["vae_name"],), None),
    "CLIPTextEncode": lambda fake, run, a: (({"text": str(a["text"])},), None),
    "EmptyLatentImage": _sim_empty_latent, "EmptyHunyuanLatentVideo": _sim_empty_latent,
    "KSampler": _sim_sampler, "KSamplerAdvanced": _sim_sampler,
    "VAEDecode": _sim_vae_decode,
    "ImageInvert": _sim_image_invert,
    "GetImageSize": lambda fake, run, a: ((lambda i: (i["w"], i["h"], i["n"]))(_as_image(a["image"])), None),
    "PreviewAny": _sim_preview_any,
    "CreateVideo": lambda fake, run, a: (({"images": _as_image(a["images"]), "fps": a["fps"]},), None),
    **{saver: (lambda cls: lambda fake, run, a: ((), fake._save(run, cls, a)))(saver)
       for saver in ("SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo")},
}


# --------------------------------------------------------------------------- the server

class FakeComfyUI:
    """Fake ComfyUI on 127.0.0.1. Knobs are plain attributes and may be changed while running.

    `models` is {folder: [file names]} (folders named as ComfyUI names them: checkpoints,
    diffusion_models, text_encoders, vae, loras, ...). None (the default) = the files of
    deploy/comfyui-manifest.json in their dest folders; a plain list = checkpoints only. A folder
    missing from the dict is empty (configs/ and custom_nodes/ hold what ComfyUI ships).
    """

    def __init__(self, *, port=0, host="127.0.0.1", steps=3, step_delay=0.02, latency=0.0,
                 fail_mode=None, models=None, gpu_name=None, vram_total=None, extra_queue=0,
                 cache=False, base_dir=None, preview_method=None):
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}")
        self.host, self.port = host, port
        self.steps = steps  # progress steps per sampler node; None = use the workflow's `steps`
        self.step_delay = step_delay
        self.latency = latency
        self.fail_mode = fail_mode
        self.models = models
        self.gpu_name, self.vram_total = gpu_name, vram_total
        self.extra_queue = extra_queue
        self.cache = cache  # True = ComfyUI's classic cache (identical reruns write no new file)
        # `--preview-method` (the real default is none: samplers send no previews). Set ("auto"),
        # every sampler step is followed by a binary preview frame: type 4 with its metadata to
        # a socket that asked for it with feature_flags, type 1 to any other (capture ws_f_*).
        # The image is a small PNG (format 2); real latent previews are JPEG (format 1).
        self.preview_method = preview_method
        self.node_delay = 0.0  # seconds each node takes (model-free workflows run instantly otherwise)
        # Sampler steps the fake may still take (None: any number). At 0 a running sampler waits
        # before its next step until a test gives more: a run held mid-sampling, on cue.
        self.step_budget = None
        # Nodes the fake may still start (None: any number), the same cue for any workflow: at 0
        # the run waits before its next node until a test gives more.
        self.node_budget = None
        self.received = []  # (method, path) of every HTTP request, including /ws
        self.prompts = {}  # prompt_id -> workflow, for every accepted POST /prompt
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="fake-comfyui-")
            weakref.finalize(self, shutil.rmtree, base_dir, True)
        self.base_dir = base_dir = os.path.realpath(base_dir)  # plays the ComfyUI root
        self.output_dir, self.input_dir, self.temp_dir = (
            os.path.join(base_dir, d) for d in ("output", "input", "temp"))
        for d in (self.output_dir, self.input_dir, self.temp_dir, os.path.join(self.input_dir, "3d")):
            os.makedirs(d, exist_ok=True)  # input/3d: the real Load3D node creates it at startup
        self._thread = self._loop = None
        self._reset_state()

    # ---- lifecycle

    @property
    def models(self):
        """{folder: [file]}: mutate it, or assign a dict (copied), a list (checkpoints only) or None
        (the manifest's files again); the next request sees the change."""
        return self._model_files

    @models.setter
    def models(self, models):
        self._model_files = model_folders(models)

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def listening(self, client_id: str) -> bool:
        """A WebSocket with this clientId is registered: every event sent from now on reaches it."""
        return client_id in self._sockets

    @property
    def ws_url(self):
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def history(self):
        return self._history

    def start(self):
        """Serve in a background thread; returns self once the port is listening."""
        if self._thread is not None:
            return self
        ready, self._start_error = threading.Event(), None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="FakeComfyUI", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._start_error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._start_error
        return self

    def stop(self):
        """Close sockets and cancel hanging requests; returns in well under a second."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = self._loop = None

    def restart(self):
        """Like killing and relaunching ComfyUI: same port, in-memory queue and history are lost."""
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _serve(self, ready):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as ex:  # e.g. the port was taken while we were stopped
            self._start_error = ex
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown())
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.close()

    async def _startup(self):
        self._reset_state()
        app = web.Application(middlewares=[self._middleware()], client_max_size=FEATURES["max_upload_size"])
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)  # server.py add_routes mirrors all
        # shutdown_timeout: hanging handlers are cancelled this quickly by stop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]
        self._wakeup = asyncio.Event()
        self._worker_task = asyncio.get_running_loop().create_task(self._worker())

    async def _shutdown(self):
        self._worker_task.cancel()
        closing = [asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY))
                   for ws, _ in list(self._sockets.values())]
        if closing:
            await asyncio.wait(closing, timeout=0.3)
        await self._runner.cleanup()

    def _reset_state(self):
        self._pending = []  # heap of (number, seq, item); item = [number, id, prompt, extra, outputs]
        self._seq = self._number = 0
        self._running = None
        self._history = {}
        self._sockets = {}  # client id -> (WebSocketResponse, request)
        self._preview_metadata = set()  # client ids whose first message asked for type 4 previews
        self._client_id = self._last_node = None
        self._interrupt = False
        self._cache = {}

    # ---- HTTP plumbing

    def _routes(self):
        return [("GET", "/", self._index), ("GET", "/ws", self._ws),
                ("GET", "/prompt", self._get_prompt), ("POST", "/prompt", self._post_prompt),
                ("GET", "/queue", self._get_queue), ("POST", "/queue", self._post_queue),
                ("POST", "/interrupt", self._post_interrupt), ("POST", "/free", self._post_free),
                ("GET", "/history", self._get_history), ("GET", "/history/{prompt_id}", self._get_history_one),
                ("POST", "/history", self._post_history), ("GET", "/view", self._view),
                ("POST", "/upload/image", self._upload), ("POST", "/upload/mask", self._upload),
                ("GET", "/system_stats", self._system_stats), ("GET", "/features", self._features),
                ("GET", "/object_info", self._object_info), ("GET", "/object_info/{node_class}", self._object_info_one),
                ("GET", "/models", self._model_types), ("GET", "/models/{folder}", self._models_in),
                ("GET", "/embeddings", self._embeddings), ("GET", "/extensions", self._empty_list)]

    def _middleware(self):
        @web.middleware
        async def middleware(request, handler):
            self.received.append((request.method, request.path))
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.fail_mode == "hang":
                await asyncio.Future()  # never resolves; stop() cancels it
            if self.fail_mode == "http500":
                return web.Response(status=500, text=AIOHTTP_500)
            if self.fail_mode == "garbage":
                return web.Response(status=200, body=GARBAGE, content_type="application/json")
            if _origin_mismatch(request):
                return web.Response(status=403)
            return await handler(request)
        return middleware

    # ---- WebSocket

    async def _ws(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        self._sockets[sid] = (ws, request)  # reconnecting with the same id replaces the old socket
        try:
            await self._send("status", {"status": self._queue_info(), "sid": sid}, sid)
            if self._client_id == sid and self._last_node is not None:  # server.py: resume hint
                await self._send("executing", {"node": self._last_node}, sid)
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    if isinstance(data.get("data"), dict) and data["data"].get("supports_preview_metadata"):
                        self._preview_metadata.add(sid)
                    await self._send("feature_flags", FEATURES, sid)
                first = False
        finally:
            if self._sockets.get(sid, (None,))[0] is ws:
                del self._sockets[sid]
        return ws

    async def _send(self, event, data, sid=None):
        """server.py send_json: sid None broadcasts, otherwise only that client if connected."""
        if sid is None:
            targets = [ws for ws, _ in list(self._sockets.values())]
        else:
            targets = [self._sockets[sid][0]] if sid in self._sockets else []
        for ws in targets:
            try:
                await ws.send_json({"type": event, "data": data})
            except Exception:  # a dying socket; the real server just logs and carries on
                pass

    def _drop_socket(self, sid):
        """Simulate a network drop: no close frame, the TCP connection just dies."""
        entry = self._sockets.get(sid)
        if entry and entry[1].transport is not None:
            entry[1].transport.abort()

    # ---- queue and prompt routes

    def _queue_info(self):
        remaining = len(self._pending) + (1 if self._running else 0) + int(self.extra_queue or 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _queue_updated(self):
        await self._send("status", {"status": self._queue_info()})

    async def _get_prompt(self, request):
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request):
        body = await request.json()  # malformed JSON raises -> aiohttp answers 500, like ComfyUI
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self._number if body.get("front") else self._number
            self._number += 1  # counts rejected prompts too (capture: numbers skip over the 400s)
        if "prompt" not in body:
            return web.json_response({"error": _err("no_prompt", "No prompt provided", "No prompt provided"),
                                      "node_errors": {}}, status=400)
        prompt, pid = body["prompt"], str(body.get("prompt_id") or uuid.uuid4())
        ok, error, outputs, node_errors = validate_prompt(
            prompt, self._defs(), body.get("partial_execution_targets"), self._input_exists, self.base_dir)
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra.pop(key, None)
        extra["create_time"] = _ms()  # 0.8.0: queue items and history carry it
        self.prompts[pid] = prompt
        self._seq += 1
        heapq.heappush(self._pending, (number, self._seq, [number, pid, prompt, extra, outputs]))
        self._wakeup.set()
        await self._queue_updated()
        return web.json_response({"prompt_id": pid, "number": number, "node_errors": node_errors})

    async def _get_queue(self, request):
        pending = [entry[2] for entry in sorted(self._pending)]
        return web.json_response({"queue_running": [self._running] if self._running else [],
                                  "queue_pending": pending})

    async def _post_queue(self, request):
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
            await self._queue_updated()
        for pid in body.get("delete", []):
            kept = [entry for entry in self._pending if entry[2][1] != pid]
            if len(kept) != len(self._pending):
                self._pending[:] = kept
                heapq.heapify(self._pending)
                await self._queue_updated()
        return web.Response(status=200)

    async def _post_interrupt(self, request):
        try:
            body = await request.json()
        except ValueError:
            body = {}
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        # With an id, only interrupt if that prompt is the running one (server.py post_interrupt).
        if not pid or (self._running and self._running[1] == pid):
            self._interrupt = True
        return web.Response(status=200)

    async def _post_free(self, request):
        await request.json()
        return web.Response(status=200)

    # ---- history

    async def _get_history(self, request):
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        if offset < 0 and max_items is not None:  # execution.py get_history: newest max_items
            offset = len(self._history) - max_items
        items = list(self._history.items())[max(offset, 0):]
        return web.json_response(dict(items[:max_items] if max_items is not None else items))

    async def _get_history_one(self, request):
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self._history[pid]} if pid in self._history else {})

    async def _post_history(self, request):
        body = await request.json()
        if body.get("clear"):
            self._history.clear()
        for pid in body.get("delete", []):
            self._history.pop(pid, None)
        return web.Response(status=200)

    def _store_history(self, run):
        if len(self._history) >= MAX_HISTORY:
            self._history.pop(next(iter(self._history)))
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in run.ui}
        self._history[run.pid] = {
            "prompt": [run.number, run.pid, run.prompt, run.extra, run.outputs], "outputs": run.ui,
            "status": {"status_str": "success" if run.success else "error", "completed": run.success,
                       "messages": run.messages},
            "meta": meta}

    # ---- files

    def _dir_by_type(self, kind):
        return {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}.get(kind)

    def _annotated(self, name):
        """folder_paths.annotated_filepath: "x.png [output]" picks the folder explicitly."""
        for kind in ("output", "input", "temp"):
            if name.endswith(f"[{kind}]"):
                return name[:-len(kind) - 3], self._dir_by_type(kind)
        return name, None

    def _input_exists(self, name):
        """folder_paths.exists_annotated_filepath (a non-string name raises, as there)."""
        name, base = self._annotated(name)
        return os.path.exists(os.path.join(base or self.input_dir, name))

    async def _view(self, request):
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, base = self._annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = base or self._dir_by_type(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full = os.path.join(base, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), base)) != base:
                return web.Response(status=403)
            base = full
        filename = os.path.basename(filename)
        path = os.path.join(base, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if ctype in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            ctype = "application/octet-stream"  # server.py forces a download for these
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"',
                                               "Content-Type": ctype})

    async def _upload(self, request):
        """server.py image_upload: keeps the name, ` (1)` suffix on clashes unless bytes match."""
        post = await request.post()
        image = post.get("image")
        if image is None or not getattr(image, "filename", None):
            return web.Response(status=400)
        kind = post.get("type") if post.get("type") in ("temp", "output") else "input"
        base, subfolder, filename = self._dir_by_type(kind), post.get("subfolder", ""), image.filename
        folder = os.path.join(base, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((base, path)) != base:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data, stem_ext, i = image.file.read(), os.path.splitext(filename), 1
        duplicate = False
        if post.get("overwrite") not in ("true", "1"):
            while os.path.exists(path):
                with open(path, "rb") as existing:
                    if existing.read() == data:
                        duplicate = True
                        break
                filename = f"{stem_ext[0]} ({i}){stem_ext[1]}"
                path, i = os.path.join(folder, filename), i + 1
        if not duplicate:
            with open(path, "wb") as out:
                out.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # ---- static-ish info

    async def _index(self, request):
        return web.Response(text="<!DOCTYPE html><html><head><title>ComfyUI</title></head><body></body></html>",
                            content_type="text/html")

    async def _features(self, request):
        return web.json_response(FEATURES)

    async def _system_stats(self, request):
        ram_total, ram_free = 25275973632, 23460638720  # the capture's --cpu box
        argv = ["main.py", "--listen", self.host, "--port", str(self.port), "--disable-auto-launch"]
        if self.gpu_name:
            total = int(self.vram_total or 25757220864)
            name = self.gpu_name if self.gpu_name.startswith("cuda:") else f"cuda:0 {self.gpu_name} : cudaMallocAsync"
            device = {"name": name, "type": "cuda", "index": 0, "vram_total": total,
                      "vram_free": int(total * 0.96), "torch_vram_total": 0, "torch_vram_free": 0}
            torch_version = "2.14.1+cu130"
        else:
            total = int(self.vram_total or ram_total)
            device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                      "vram_free": min(ram_free, total), "torch_vram_total": total,
                      "torch_vram_free": min(ram_free, total)}
            torch_version, argv = "2.14.1+cu130", argv[:1] + ["--cpu"] + argv[1:]  # capture: a cu130 build
        system = {"os": sys.platform, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": "0.8.0",
                  "required_frontend_version": "1.35.9", "installed_templates_version": "0.7.67",
                  "required_templates_version": "0.7.67", "python_version": sys.version,
                  "pytorch_version": torch_version, "embedded_python": False, "argv": argv}
        return web.json_response({"system": system, "devices": [device]})

    def _defs(self):
        """The live node schemas: lists rescanned from `models` and the input folder on every lookup."""
        return NodeSchemas(self.models, self.input_dir)

    async def _object_info(self, request):
        return web.json_response(dict(self._defs()))

    async def _object_info_one(self, request):
        defs, name = self._defs(), request.match_info["node_class"]
        return web.json_response({name: defs[name]} if name in defs else {})  # unknown -> {}

    async def _model_types(self, request):
        return web.json_response(MODEL_FOLDERS)

    async def _models_in(self, request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(filename_list(self.models, folder))

    async def _embeddings(self, request):
        return web.json_response(filename_list(self.models, "embeddings"))

    async def _empty_list(self, request):
        return web.json_response([])

    # ---- the worker: one prompt at a time, in queue order (main.py prompt_worker)

    async def _worker(self):
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._running = heapq.heappop(self._pending)[2]
            await self._queue_updated()
            run = await self._execute(self._running)
            self._running = None
            self._store_history(run)  # history BEFORE executing(null): the client's completion rule
            await self._queue_updated()
            if run.client_id is not None:
                await self._send("executing", {"node": None, "prompt_id": run.pid}, run.client_id)

    async def _message(self, run, event, data, broadcast=False):
        """PromptExecutor.add_message: kept for history and sent to the client (or everyone)."""
        data = {**data, "timestamp": _ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            await self._send(event, data, run.client_id)

    async def _to_client(self, run, event, data):
        if run.client_id is not None:
            await self._send(event, data, run.client_id)

    async def _progress_state(self, run):
        await self._to_client(run, "progress_state", {"prompt_id": run.pid, "nodes": json.loads(json.dumps(run.progress))})

    def _set_progress(self, run, nid, value, maximum, state):
        run.progress[nid] = {"value": value, "max": maximum, "state": state, "node_id": nid, "prompt_id": run.pid,
                             "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}

    async def _execute(self, item):
        run = _Run(item)
        self._client_id, self._interrupt = run.client_id, False  # an interrupt while idle is a no-op
        memo = {}
        cached = [nid for nid in run.prompt if self.cache and _signature(run.prompt, nid, memo) in self._cache]
        await self._message(run, "execution_start", {"prompt_id": run.pid})
        await self._message(run, "execution_cached", {"nodes": cached, "prompt_id": run.pid})
        values = {}
        try:  # _NodeFailed / _Interrupted come from _run_node; anything else is a bug in the fake
            for nid in _execution_order(run.prompt, run.outputs, set(cached)):
                if nid in cached:
                    await self._use_cached(run, nid, _signature(run.prompt, nid, memo), values)
                else:
                    await self._run_node(run, nid, values, _signature(run.prompt, nid, memo))
        except _Interrupted:
            nid, cls = run.current
            await self._message(run, "execution_interrupted", {
                "prompt_id": run.pid, "node_id": nid, "node_type": cls, "executed": list(run.executed)},
                broadcast=True)
        except _NodeFailed as failure:
            await self._message(run, "execution_error", {"prompt_id": run.pid, **failure.payload})
        else:
            run.success = True
            await self._message(run, "execution_success", {"prompt_id": run.pid})
        self._last_node = None
        return run

    async def _use_cached(self, run, nid, sig, values):
        """Cached output nodes re-send `executed` and a finished progress_state (capture, 2nd run)."""
        values[nid], ui = self._cache[sig]
        if nid in run.outputs:
            if ui:
                run.ui[nid] = ui
            await self._to_client(run, "executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": run.pid})
            self._set_progress(run, nid, 1, 1, "finished")
            await self._progress_state(run)

    async def _run_node(self, run, nid, values, sig):
        while self.node_budget is not None and self.node_budget <= 0 and not self._interrupt:
            await asyncio.sleep(0.01)
        if self.node_budget is not None:
            self.node_budget -= 1
        cls = run.prompt[nid]["class_type"]
        run.current = (nid, cls)
        self._set_progress(run, nid, 0.0, 1.0, "running")
        await self._progress_state(run)
        self._last_node = nid
        await self._to_client(run, "executing", {"node": nid, "display_node": nid, "prompt_id": run.pid})
        if not any(run.prompt[n]["class_type"] in SAMPLER_NODES for n in run.prompt):
            await self._maybe_drop(run)  # no progress events will come: drop at first executing
        if self._interrupt:  # checked between nodes, like nodes.before_node_execution
            raise _Interrupted()
        if self.node_delay:
            await asyncio.sleep(self.node_delay)
        args = {}
        try:
            args = {k: (values[v[0]][v[1]] if _is_link(v) else v) for k, v in run.prompt[nid]["inputs"].items()}
            if self.fail_mode == "runtime_error" and self._defs()[cls]["output_node"]:
                raise RuntimeError(f"fake ComfyUI: simulated failure in {cls} (fail_mode='runtime_error')")
            if cls in SAMPLER_NODES:
                await self._sample(run, nid, args)
            outputs, ui = self._compute(run, cls, args)
        except _Interrupted:
            raise
        except Exception as ex:
            raise _NodeFailed(self._error_payload(run, nid, cls, args, values, ex)) from ex
        values[nid] = outputs
        run.executed.append(nid)
        if ui:
            run.ui[nid] = ui
            await self._to_client(run, "executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": run.pid})
        if self.cache:
            self._cache[sig] = (outputs, ui)
        state = run.progress[nid]
        self._set_progress(run, nid, state["max"], state["max"], "finished")
        await self._progress_state(run)

    def _error_payload(self, run, nid, cls, args, values, ex):
        """The execution_error body of the capture's runtime error entry."""
        inputs = {k: [_formatted(v)] for k, v in args.items()}
        entry = self._defs()[cls]
        if not is_v3(entry):  # v1 nodes get their hidden inputs as inputs (v3 ones elsewhere)
            hidden = {"PROMPT": str(run.prompt), "EXTRA_PNGINFO": run.extra.get("extra_pnginfo"), "UNIQUE_ID": nid}
            inputs.update({k: [hidden[v]] for k, v in entry["input"].get("hidden", {}).items() if v in hidden})
        return {"node_id": nid, "node_type": cls, "executed": list(run.executed),
                "exception_message": str(ex), "exception_type": _type_name(type(ex)),
                "traceback": traceback.format_tb(ex.__traceback__), "current_inputs": inputs,
                "current_outputs": list(values)}

    async def _sample(self, run, nid, args):
        """KSampler: one `progress` (+ progress_state) per step; interrupts land between steps."""
        steps = int(self.steps if self.steps is not None else args.get("steps", 20))
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_delay)
            while self.step_budget is not None and self.step_budget <= 0 and not self._interrupt:
                await asyncio.sleep(0.01)
            if self.step_budget is not None:
                self.step_budget -= 1
            if self._interrupt:
                raise _Interrupted()
            self._set_progress(run, nid, step, steps, "running")
            await self._progress_state(run)
            await self._to_client(run, "progress", {"value": step, "max": steps, "prompt_id": run.pid, "node": nid})
            if self.preview_method:
                await self._send_preview(run, nid, make_png(16, 16, (40 + 200 * step // steps, 90, 160)))
            await self._maybe_drop(run)

    async def _send_preview(self, run, nid, image: bytes):
        """server.py send_image / send_image_with_metadata: all integers 4-byte big-endian."""
        meta = {"node_id": nid, "prompt_id": run.pid, "display_node_id": nid, "parent_node_id": None,
                "real_node_id": nid, "image_type": "image/png"}
        sids = [run.client_id] if run.client_id is not None else list(self._sockets)
        for sid in sids:
            if sid not in self._sockets:
                continue
            if sid in self._preview_metadata:
                header = json.dumps(meta).encode()
                frame = struct.pack(">II", 4, len(header)) + header + image
            else:
                frame = struct.pack(">II", 1, 2) + image  # 2 = PNG
            try:
                await self._sockets[sid][0].send_bytes(frame)
            except Exception:  # a dying socket
                pass

    async def _maybe_drop(self, run):
        if self.fail_mode == "drop_ws" and not run.dropped and run.client_id is not None:
            run.dropped = True
            self._drop_socket(run.client_id)
            await asyncio.sleep(0)  # let the socket's handler notice before we send more

    # ---- what each node "computes" (see SIMULATIONS)

    def _compute(self, run, cls, a):
        """Returns (output tuple, ui dict or None)."""
        simulate = SIMULATIONS.get(cls)
        if simulate is not None:
            return simulate(self, run, a)
        return generic_outputs(self._defs()[cls], run.current[0], a), None

    def _load_image(self, name):
        name, base = self._annotated(str(name))
        with open(os.path.join(base or self.input_dir, name), "rb") as f:
            data = f.read()
        w, h = struct.unpack(">II", data[16:24]) if data[:8] == b"\x89PNG\r\n\x1a\n" else (64, 64)
        return _image(w, h, 1, _rgb(hashlib.sha1(data).hexdigest())), {"w": w, "h": h, "n": 1}

    def _save(self, run, cls, a):
        img = _as_image(a["video"] if cls == "SaveVideo" else a["images"], cls)
        if cls in ("SaveImage", "PreviewImage"):
            return self._save_pngs(run, img, a.get("filename_prefix", "ComfyUI"), cls == "PreviewImage")
        if cls == "SaveAnimatedWEBP":
            return self._save_blob(a["filename_prefix"], img, "webp", img["n"] != 1,
                                   lambda seed, w, h: make_webp(seed, w, h, img["n"] != 1))
        if cls == "SaveAnimatedPNG":  # a one-frame PNG stands in for the APNG
            return self._save_blob(a["filename_prefix"], img, "png", True,
                                   lambda seed, w, h: make_png(w, h, img["rgb"]))
        ext, maker = ("webm", make_webm) if cls == "SaveWEBM" else ("mp4", make_mp4)
        return self._save_blob(a["filename_prefix"], img, ext, True, lambda seed, w, h: maker(seed))

    def _save_pngs(self, run, img, prefix, preview):
        """SaveImage/PreviewImage: one `<prefix>_00001_.png` per batch item, counter increments."""
        base, kind = self.output_dir, "output"
        if preview:  # nodes.py PreviewImage: temp folder plus a random `_temp_xxxxx` prefix
            base, kind = self.temp_dir, "temp"
            prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        folder, name, counter, subfolder = save_path(prefix, base, img["w"], img["h"])
        text = {"prompt": json.dumps(run.prompt)}
        text.update({k: json.dumps(v) for k, v in (run.extra.get("extra_pnginfo") or {}).items()})
        results = []
        for batch in range(img["n"]):
            filename = f"{name.replace('%batch_num%', str(batch))}_{counter:05}_.png"
            with open(os.path.join(folder, filename), "wb") as f:
                f.write(make_png(min(img["w"], MAX_SIDE), min(img["h"], MAX_SIDE), img["rgb"], text))
            results.append({"filename": filename, "subfolder": subfolder, "type": kind})
            counter += 1
        return {"images": results}

    def _save_blob(self, prefix, img, ext, animated, maker):
        """Animated/video savers report under `images` plus `animated` (reference 1.4)."""
        folder, name, counter, subfolder = save_path(prefix, self.output_dir, img["w"], img["h"])
        filename = f"{name}_{counter:05}_.{ext}"
        with open(os.path.join(folder, filename), "wb") as f:
            f.write(maker(filename + repr(img["rgb"]), min(img["w"], MAX_SIDE), min(img["h"], MAX_SIDE)))
        return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": [animated]}


def _is_loopback(host):
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin_mismatch(request):
    """server.py origin_only_middleware: 403 when a loopback Host and the Origin disagree."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if not host or not origin:
        return False
    parsed, host_parsed = urllib.parse.urlparse(origin), urllib.parse.urlsplit("//" + host.lower())
    host_domain, origin_domain = host.lower(), parsed.netloc.lower()
    if parsed.port is None:
        host_domain = host_parsed.hostname
    if host_parsed.port is None:
        origin_domain = parsed.hostname
    return bool(_is_loopback(host_parsed.hostname) and host_domain and origin_domain
                and host_domain != origin_domain)


# --------------------------------------------------------------------------- process mode

def main(argv=None):
    p = argparse.ArgumentParser(description="Fake ComfyUI server for tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--step-delay", type=float, default=0.02)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--fail-mode", choices=[m for m in FAIL_MODES if m], default=None)
    p.add_argument("--models", nargs="*", default=None, help="checkpoint files (every other folder empty)")
    p.add_argument("--models-json", default=None, help='{"folder": ["file", ...]} (default: the manifest)')
    p.add_argument("--gpu-name", default=None)
    p.add_argument("--vram-total", type=int, default=None)
    p.add_argument("--extra-queue", type=int, default=0)
    p.add_argument("--cache", action="store_true")
    p.add_argument("--base-dir", default=None)
    args = p.parse_args(argv)
    models = json.loads(args.models_json) if args.models_json else args.models
    fake = FakeComfyUI(host=args.host, port=args.port, steps=args.steps, step_delay=args.step_delay,
                       latency=args.latency, fail_mode=args.fail_mode, models=models,
                       gpu_name=args.gpu_name, vram_total=args.vram_total, extra_queue=args.extra_queue,
                       cache=args.cache, base_dir=args.base_dir).start()
    serve_until_terminated(fake)


if __name__ == "__main__":
    main()
