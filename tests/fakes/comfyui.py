"""A fake ComfyUI server for tests, speaking the 0.3.64 HTTP + WebSocket protocol.

Shapes, ordering and quirks follow /work/shared/reference/external-apis.md section 1 and the real
responses recorded in comfyui-capture.json ("the capture" below). Where the capture has no example,
the logic is a small port of the named ComfyUI function (server.py, execution.py, folder_paths.py).

In-process use::

    with FakeComfyUI(steps=3, step_delay=0.01) as fake:
        requests.post(fake.url + "/prompt", json={"prompt": workflow, "client_id": "c1"})

As a process (tests kill -9 it)::

    python -m tests.fakes.comfyui --port 8188 --steps 5
    # prints "listening on http://127.0.0.1:8188" once ready
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import ipaddress
import json
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

from aiohttp import WSCloseCode, WSMsgType, web
from tests.fakes.loopback import serve_until_terminated

# server.py registers these too, so /view answers with the same Content-Type as the real server.
mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/mp4", ".mp4")

FAIL_MODES = (None, "http500", "garbage", "hang", "runtime_error", "drop_ws")
DEFAULT_MODELS = ["v1-5-pruned-emaonly.safetensors"]
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}  # capture: features
MAX_SIDE = 64  # generated images are capped at 64x64 so tests stay fast
MAX_HISTORY = 10000  # execution.py MAXIMUM_HISTORY_SIZE
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")  # stripped before storing
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's own 500 body
GARBAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>not JSON at all</body></html>"
SAMPLER_NODES = {"KSampler"}  # nodes that report `progress` per step
OUTPUT_NODES = {"SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveWEBM", "SaveVideo"}
MODEL_FOLDERS = ["checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                 "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers"]
SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
            "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
            "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
            "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
            "ipndm", "ipndm_v", "deis", "res_multistep", "gradient_estimation", "er_sde", "seeds_2",
            "seeds_3", "sa_solver", "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]


# --------------------------------------------------------------------------- node schemas

def _int(default, lo, hi, step=None, **extra):
    opts = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    return ["INT", {**opts, **extra}]


def _float(default, lo, hi, step, **extra):
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def _str(default, **extra):
    return ["STRING", {"default": default, **extra}]


def _node(name, display, category, required, outputs=(), *, optional=None, hidden=None,
          output_node=False, description="", module="nodes"):
    """One /object_info entry, keys in the order server.py:node_info writes them (capture)."""
    inputs = {"required": required}
    if optional:
        inputs["optional"] = optional
    if hidden:
        inputs["hidden"] = hidden
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(outputs), "output_is_list": [False] * len(outputs),
            "output_name": list(outputs), "name": name, "display_name": display,
            "description": description, "python_module": module, "category": category,
            "output_node": output_node}


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_PREFIX_TIP = ("The prefix for the file to save. This may include formatting information such as "
               "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")
_SAVES_DESC = "Saves the input images to your ComfyUI output directory."


def node_table(models, input_files):
    """Every node class the fake knows. EmptyImage/SaveImage are copied from the capture."""
    video, anim = "comfy_extras.nodes_video", "comfy_extras.nodes_images"
    nodes = [
        _node("EmptyImage", "EmptyImage", "image", {
            "width": _int(512, 1, 16384, 1), "height": _int(512, 1, 16384, 1),
            "batch_size": _int(1, 1, 4096), "color": _int(0, 0, 16777215, 1, display="color")},
            ["IMAGE"]),
        _node("SaveImage", "Save Image", "image", {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": _str("ComfyUI", tooltip=_PREFIX_TIP)},
            hidden=_SAVE_HIDDEN, output_node=True, description=_SAVES_DESC),
        _node("PreviewImage", "Preview Image", "image", {"images": ["IMAGE"]},
              hidden=_SAVE_HIDDEN, output_node=True, description=_SAVES_DESC),
        _node("LoadImage", "Load Image", "image",
              {"image": [sorted(input_files), {"image_upload": True}]}, ["IMAGE", "MASK"]),
        _node("CheckpointLoaderSimple", "Load Checkpoint", "loaders", {
            "ckpt_name": [list(models), {"tooltip": "The name of the checkpoint (model) to load."}]},
            ["MODEL", "CLIP", "VAE"],
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents."),
        _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning", {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]},
            ["CONDITIONING"]),
        _node("EmptyLatentImage", "Empty Latent Image", "latent", {
            "width": _int(512, 16, 16384, 8), "height": _int(512, 16, 16384, 8),
            "batch_size": _int(1, 1, 4096)}, ["LATENT"]),
        _node("EmptyHunyuanLatentVideo", "EmptyHunyuanLatentVideo", "latent/video", {
            "width": _int(848, 16, 16384, 16), "height": _int(480, 16, 16384, 16),
            "length": _int(25, 1, 16384, 4), "batch_size": _int(1, 1, 4096)},
            ["LATENT"], module="comfy_extras.nodes_hunyuan"),
        _node("KSampler", "KSampler", "sampling", {
            "model": ["MODEL"], "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
            "steps": _int(20, 1, 10000), "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
            "sampler_name": [SAMPLERS], "scheduler": [SCHEDULERS], "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
            "denoise": _float(1.0, 0.0, 1.0, 0.01)}, ["LATENT"]),
        _node("VAEDecode", "VAE Decode", "latent", {"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
        _node("SaveAnimatedWEBP", "SaveAnimatedWEBP", "image/animation", {
            "images": ["IMAGE"], "filename_prefix": _str("ComfyUI"), "fps": _float(6.0, 0.01, 1000.0, 0.01),
            "lossless": ["BOOLEAN", {"default": True}], "quality": _int(80, 0, 100),
            "method": [["default", "fastest", "slowest"]]},
            hidden=_SAVE_HIDDEN, output_node=True, module=anim),
        _node("CreateVideo", "Create Video", "image/video", {
            "images": ["IMAGE"], "fps": _float(30.0, 1.0, 120.0, 1.0)}, ["VIDEO"],
            optional={"audio": ["AUDIO"]}, module=video),
        _node("SaveVideo", "Save Video", "image/video", {
            "video": ["VIDEO"], "filename_prefix": _str("video/ComfyUI"),
            "format": [["auto", "mp4"], {"default": "auto"}], "codec": [["auto", "h264"], {"default": "auto"}]},
            hidden=_SAVE_HIDDEN, output_node=True, module=video),
        _node("SaveWEBM", "SaveWEBM", "image/video", {
            "images": ["IMAGE"], "filename_prefix": _str("ComfyUI"), "codec": [["vp9", "av1"]],
            "fps": _float(24.0, 0.01, 1000.0, 0.01), "crf": _float(32.0, 0, 63.0, 1)},
            hidden=_SAVE_HIDDEN, output_node=True, module=video),
    ]
    return {n["name"]: n for n in nodes}


# --------------------------------------------------------------------------- validation
# A port of execution.py:validate_prompt / validate_inputs, producing the capture's 400 shapes.

def _err(type_, message, details="", extra_info=None):
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def _is_link(value):
    return isinstance(value, list)


def _type_name(cls):
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def validate_prompt(prompt, defs, targets, input_exists):
    """Return (ok, error, good_outputs, node_errors) exactly like execution.py:validate_prompt."""
    outputs = []
    for nid, node in prompt.items():
        if "class_type" not in node:
            return False, _err("invalid_prompt", "Cannot execute because a node is missing the "
                               "class_type property.", f"Node ID '#{nid}'"), [], {}
        if node["class_type"] not in defs:
            return False, _err("invalid_prompt", f"Cannot execute because node {node['class_type']} "
                               "does not exist.", f"Node ID '#{nid}'"), [], {}
        if defs[node["class_type"]]["output_node"] and (targets is None or nid in targets):
            outputs.append(nid)
    if not outputs:
        return False, _err("prompt_no_outputs", "Prompt has no outputs"), [], {}
    good, failed, node_errors, validated = [], [], {}, {}
    for out in outputs:
        try:
            ok, reasons = _validate_node(prompt, out, defs, validated, input_exists)
        except Exception as ex:  # e.g. a link to a node id that is not in the prompt
            ok, reasons = False, [_err("exception_during_validation", "Exception when validating node",
                                       str(ex), {"exception_type": _type_name(type(ex)),
                                                 "traceback": traceback.format_tb(ex.__traceback__)})]
            validated[out] = (False, reasons)
        if ok:
            good.append(out)
            continue
        failed += reasons
        for nid, (valid, node_reasons) in validated.items():  # real quirk: all failed nodes so far
            if not valid and node_reasons:
                entry = node_errors.setdefault(nid, {"errors": node_reasons, "dependent_outputs": [],
                                                     "class_type": prompt[nid]["class_type"]})
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for r in failed)
        return False, _err("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                           details), [], node_errors
    return True, None, good, node_errors


def _validate_node(prompt, nid, defs, validated, input_exists):
    if nid in validated:
        return validated[nid]
    inputs, class_type = prompt[nid]["inputs"], prompt[nid]["class_type"]
    spec = defs[class_type]["input"]
    errors, valid = [], True
    for category in ("required", "optional"):
        for name, info in spec.get(category, {}).items():
            if name not in inputs:
                if category == "required":
                    errors.append(_err("required_input_missing", "Required input is missing", name,
                                       {"input_name": name}))
                continue
            value = inputs[name]
            if _is_link(value):
                error, upstream_ok = _check_link(prompt, name, info, value, defs, validated, input_exists)
                valid = valid and upstream_ok
            else:
                error = _check_value(class_type, name, info, value, input_exists)
            if error:
                errors.append(error)
    result = (not errors and valid, errors)
    validated[nid] = result
    return result


def _check_link(prompt, name, info, link, defs, validated, input_exists):
    """Returns (error or None, upstream_valid). KeyError/IndexError escape on purpose (real does)."""
    if len(link) != 2:
        return _err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name, {"input_name": name, "input_config": info, "received_value": link}), True
    received = defs[prompt[link[0]]["class_type"]]["output"][link[1]]
    wanted = info[0]
    if isinstance(wanted, str) and "*" not in (wanted, received) and received != wanted:
        return _err("return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({wanted})",
                    {"input_name": name, "input_config": info, "received_type": received,
                     "linked_node": link}), True
    try:
        ok, _ = _validate_node(prompt, link[0], defs, validated, input_exists)
    except Exception as ex:
        reasons = [_err("exception_during_inner_validation", "Exception when validating inner node",
                        str(ex), {"input_name": name, "input_config": info, "exception_message": str(ex),
                                  "exception_type": _type_name(type(ex)),
                                  "traceback": traceback.format_tb(ex.__traceback__), "linked_node": link})]
        validated[link[0]] = (False, reasons)
        ok = False
    return None, ok


_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_value(class_type, name, info, value, input_exists):
    wanted, opts = info[0], (info[1] if len(info) > 1 else {})
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    try:
        if isinstance(wanted, str) and wanted in _CONVERT:
            value = _CONVERT[wanted](value)
    except Exception as ex:
        return _err("invalid_input_type", f"Failed to convert an input value to a {wanted} value",
                    f"{name}, {value}, {ex}", {"input_name": name, "input_config": info,
                                               "received_value": value, "exception_message": str(ex)})
    extra = {"input_name": name, "input_config": info, "received_value": value}
    if class_type == "LoadImage":  # nodes.py LoadImage.VALIDATE_INPUTS replaces the combo check
        if not input_exists(value):
            return _err("custom_validation_failed", "Custom validation failed for node",
                        f"LoadImage - Invalid image file: {value}", extra)
        return None
    if "min" in opts and value < opts["min"]:
        return _err("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}", name, extra)
    if "max" in opts and value > opts["max"]:
        return _err("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}", name, extra)
    if isinstance(wanted, list) and value not in wanted:
        # Long lists (many model files) are not echoed back: input_config becomes null.
        listing = f"(list of length {len(wanted)})" if len(wanted) > 20 else str(wanted)
        return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                    {**extra, "input_config": None if len(wanted) > 20 else info})
    return None


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


# --------------------------------------------------------------------------- the server

class FakeComfyUI:
    """Fake ComfyUI on 127.0.0.1. Knobs are plain attributes and may be changed while running."""

    def __init__(self, *, port=0, host="127.0.0.1", steps=3, step_delay=0.02, latency=0.0,
                 fail_mode=None, models=None, gpu_name=None, vram_total=None, extra_queue=0,
                 cache=False, base_dir=None):
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}")
        self.host, self.port = host, port
        self.steps = steps  # progress steps per sampler node; None = use the workflow's `steps`
        self.step_delay = step_delay
        self.latency = latency
        self.fail_mode = fail_mode
        self.models = list(DEFAULT_MODELS if models is None else models)
        self.gpu_name, self.vram_total = gpu_name, vram_total
        self.extra_queue = extra_queue
        self.cache = cache  # True = ComfyUI's classic cache (identical reruns write no new file)
        self.received = []  # (method, path) of every HTTP request, including /ws
        self.prompts = {}  # prompt_id -> workflow, for every accepted POST /prompt
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="fake-comfyui-")
            weakref.finalize(self, shutil.rmtree, base_dir, True)
        base_dir = os.path.realpath(base_dir)
        self.output_dir, self.input_dir, self.temp_dir = (
            os.path.join(base_dir, d) for d in ("output", "input", "temp"))
        for d in (self.output_dir, self.input_dir, self.temp_dir):
            os.makedirs(d, exist_ok=True)
        self._thread = self._loop = None
        self._reset_state()

    # ---- lifecycle

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

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
                ("GET", "/models", self._models), ("GET", "/models/{folder}", self._models_in),
                ("GET", "/embeddings", self._empty_list), ("GET", "/extensions", self._empty_list)]

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
            prompt, self._defs(), body.get("partial_execution_targets"), self._input_exists)
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra.pop(key, None)
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
        name, base = self._annotated(str(name))
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
        ram_total, ram_free = 25276063744, 23849340928  # the capture's --cpu box
        argv = ["main.py", "--listen", self.host, "--port", str(self.port), "--disable-auto-launch"]
        if self.gpu_name:
            total = int(self.vram_total or 25757220864)
            name = self.gpu_name if self.gpu_name.startswith("cuda:") else f"cuda:0 {self.gpu_name} : cudaMallocAsync"
            device = {"name": name, "type": "cuda", "index": 0, "vram_total": total,
                      "vram_free": int(total * 0.96), "torch_vram_total": 0, "torch_vram_free": 0}
            torch_version = "2.13.0+cu130"
        else:
            total = int(self.vram_total or ram_total)
            device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                      "vram_free": min(ram_free, total), "torch_vram_total": total,
                      "torch_vram_free": min(ram_free, total)}
            torch_version, argv = "2.13.0+cpu", argv[:1] + ["--cpu"] + argv[1:]
        system = {"os": os.name, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": "0.3.64",
                  "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                  "required_templates_version": "0.1.95", "python_version": sys.version,
                  "pytorch_version": torch_version, "embedded_python": False, "argv": argv}
        return web.json_response({"system": system, "devices": [device]})

    def _defs(self):
        files = [f for f in os.listdir(self.input_dir) if os.path.isfile(os.path.join(self.input_dir, f))
                 and (mimetypes.guess_type(f)[0] or "").startswith("image/")]
        return node_table(self.models, files)

    async def _object_info(self, request):
        return web.json_response(self._defs())

    async def _object_info_one(self, request):
        defs, name = self._defs(), request.match_info["node_class"]
        return web.json_response({name: defs[name]} if name in defs else {})  # unknown -> {}

    async def _models(self, request):
        return web.json_response(MODEL_FOLDERS)

    async def _models_in(self, request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list(self.models) if folder == "checkpoints" else [])

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
        args = {}
        try:
            args = {k: (values[v[0]][v[1]] if _is_link(v) else v) for k, v in run.prompt[nid]["inputs"].items()}
            if self.fail_mode == "runtime_error" and cls in OUTPUT_NODES:
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
        if self._defs()[cls]["input"].get("hidden"):
            inputs.update(prompt=[str(run.prompt)], extra_pnginfo=[run.extra.get("extra_pnginfo")])
        return {"node_id": nid, "node_type": cls, "executed": list(run.executed),
                "exception_message": str(ex), "exception_type": _type_name(type(ex)),
                "traceback": traceback.format_tb(ex.__traceback__), "current_inputs": inputs,
                "current_outputs": list(values)}

    async def _sample(self, run, nid, args):
        """KSampler: one `progress` (+ progress_state) per step; interrupts land between steps."""
        steps = int(self.steps if self.steps is not None else args.get("steps", 20))
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_delay)
            if self._interrupt:
                raise _Interrupted()
            self._set_progress(run, nid, step, steps, "running")
            await self._progress_state(run)
            await self._to_client(run, "progress", {"value": step, "max": steps, "prompt_id": run.pid, "node": nid})
            await self._maybe_drop(run)

    async def _maybe_drop(self, run):
        if self.fail_mode == "drop_ws" and not run.dropped and run.client_id is not None:
            run.dropped = True
            self._drop_socket(run.client_id)
            await asyncio.sleep(0)  # let the socket's handler notice before we send more

    # ---- what each node "computes": small dicts standing in for tensors

    def _compute(self, run, cls, a):
        """Returns (output tuple, ui dict or None)."""
        if cls == "EmptyImage":
            c = int(a["color"])
            return ({"w": int(a["width"]), "h": int(a["height"]), "n": int(a["batch_size"]),
                     "rgb": ((c >> 16) & 255, (c >> 8) & 255, c & 255)},), None
        if cls == "LoadImage":
            return self._load_image(a["image"]), None
        if cls == "CheckpointLoaderSimple":
            return ("MODEL:" + a["ckpt_name"], "CLIP:" + a["ckpt_name"], "VAE:" + a["ckpt_name"]), None
        if cls == "CLIPTextEncode":
            return ({"text": str(a["text"])},), None
        if cls in ("EmptyLatentImage", "EmptyHunyuanLatentVideo"):
            return ({"w": int(a["width"]), "h": int(a["height"]), "n": int(a["batch_size"]),
                     "frames": int(a.get("length", 1))},), None
        if cls == "KSampler":
            return ({**a["latent_image"], "rgb": _rgb(a["seed"], a["positive"], a["negative"])},), None
        if cls == "VAEDecode":
            lat = a["samples"]
            return ({"w": lat["w"], "h": lat["h"], "n": lat["n"] * lat["frames"],
                     "rgb": lat.get("rgb", (128, 128, 128))},), None
        if cls == "CreateVideo":
            return ({"images": a["images"], "fps": a["fps"]},), None
        return (), self._save(run, cls, a)

    def _load_image(self, name):
        name, base = self._annotated(str(name))
        with open(os.path.join(base or self.input_dir, name), "rb") as f:
            data = f.read()
        w, h = struct.unpack(">II", data[16:24]) if data[:8] == b"\x89PNG\r\n\x1a\n" else (64, 64)
        image = {"w": w, "h": h, "n": 1, "rgb": _rgb(hashlib.sha1(data).hexdigest())}
        return image, {"w": w, "h": h, "n": 1}

    def _save(self, run, cls, a):
        if cls in ("SaveImage", "PreviewImage"):
            return self._save_pngs(run, a["images"], a.get("filename_prefix", "ComfyUI"), cls == "PreviewImage")
        img = a["video"]["images"] if cls == "SaveVideo" else a["images"]
        if cls == "SaveAnimatedWEBP":
            return self._save_blob(a["filename_prefix"], img, "webp", img["n"] != 1,
                                   lambda seed, w, h: make_webp(seed, w, h, img["n"] != 1))
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
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--gpu-name", default=None)
    p.add_argument("--vram-total", type=int, default=None)
    p.add_argument("--extra-queue", type=int, default=0)
    p.add_argument("--cache", action="store_true")
    p.add_argument("--base-dir", default=None)
    args = p.parse_args(argv)
    fake = FakeComfyUI(host=args.host, port=args.port, steps=args.steps, step_delay=args.step_delay,
                       latency=args.latency, fail_mode=args.fail_mode, models=args.models,
                       gpu_name=args.gpu_name, vram_total=args.vram_total, extra_queue=args.extra_queue,
                       cache=args.cache, base_dir=args.base_dir).start()
    serve_until_terminated(fake)


if __name__ == "__main__":
    main()
