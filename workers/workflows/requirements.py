"""What a workflow needs (model files and node classes) and what a ComfyUI has (its inventory).

Both sides are read with one table, `MODEL_INPUTS`: for each loader node of ComfyUI 0.8.0, the
inputs that name a model file and the model folder ComfyUI lists them from
(`folder_paths.get_filename_list(<folder>)` in nodes.py / comfy_extras). Folder names are
ComfyUI's own (`GET /models`): `text_encoders` also covers the legacy `models/clip`,
`diffusion_models` the legacy `models/unet`.

Pure functions on plain data: no Django, no HTTP.
"""
from dataclasses import dataclass, field
from typing import Iterable, Optional

MODEL_INPUTS: dict[str, dict[str, str]] = {
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CheckpointLoader": {"ckpt_name": "checkpoints", "config_name": "configs"},
    "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "TripleCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders",
                         "clip_name3": "text_encoders"},
    "QuadrupleCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders",
                            "clip_name3": "text_encoders", "clip_name4": "text_encoders"},
    "VAELoader": {"vae_name": "vae"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "CreateHookModelAsLora": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLoraModelOnly": {"ckpt_name": "checkpoints"},
    "UpscaleModelLoader": {"model_name": "upscale_models"},
    "LatentUpscaleModelLoader": {"model_name": "latent_upscale_models"},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    "HypernetworkLoader": {"hypernetwork_name": "hypernetworks"},
    "DiffusersLoader": {"model_path": "diffusers"},
    "ModelPatchLoader": {"name": "model_patches"},
    "PhotoMakerLoader": {"photomaker_model_name": "photomaker"},
    "AudioEncoderLoader": {"audio_encoder_name": "audio_encoders"},
}

# Values a loader lists that are built into ComfyUI, not files (VAELoader: nodes.py vae_list).
BUILT_IN_VALUES = {"vae_name": {"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"}}

# Output nodes whose files Comfy Hybrid downloads and keeps (history `type: "output"`).
# PreviewImage writes temp files; SaveLatent's `latents` and SaveImageWebsocket's frames are
# not files a user can open here.
STORABLE_OUTPUT_NODES = frozenset({
    "SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo", "SaveAudio",
    "SaveAudioMP3", "SaveAudioOpus", "SaveGLB", "VHS_VideoCombine",
})


@dataclass(frozen=True)
class Requirements:
    """Model files as (folder, filename) pairs and node classes a workflow needs."""

    models: frozenset = frozenset()
    nodes: frozenset = frozenset()


@dataclass(frozen=True)
class Inventory:
    """What one ComfyUI can run. `nodes` is None when unknown (declared models only)."""

    models: dict = field(default_factory=dict)  # folder -> frozenset of file names
    nodes: Optional[frozenset] = None

    @classmethod
    def from_json(cls, data: Optional[dict]) -> Optional["Inventory"]:
        """From a Backend's stored `inventory` (or a declared config one); None when there is none."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return None
        nodes = data.get("nodes")
        return cls(models={str(k): frozenset(v or ()) for k, v in data["models"].items()},
                   nodes=frozenset(nodes) if isinstance(nodes, list) else None)

    def lacks(self, needs: Requirements) -> list[str]:
        """What of `needs` is missing here, as `folder/file` and `node <Class>` strings."""
        missing = [f"{folder}/{name}" for folder, name in sorted(needs.models)
                   if name not in self.models.get(folder, ())]
        if self.nodes is not None:
            missing += [f"node {name}" for name in sorted(needs.nodes - self.nodes)]
        return missing


def requirements_of(workflow: dict) -> Requirements:
    """Every model file and node class an API-format workflow names."""
    models, nodes = set(), set()
    for node in workflow.values():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            continue
        nodes.add(node["class_type"])
        for name, folder in MODEL_INPUTS.get(node["class_type"], {}).items():
            value = (node.get("inputs") or {}).get(name)
            if isinstance(value, str) and value and value not in BUILT_IN_VALUES.get(name, ()):
                models.add((folder, value))
    return Requirements(models=frozenset(models), nodes=frozenset(nodes))


def inventory_from_object_info(object_info: dict) -> dict:
    """A storable inventory from ComfyUI's `GET /object_info`: the files each loader lists,
    by folder, and every node class the server has."""
    models: dict[str, set] = {}
    for class_type, inputs in MODEL_INPUTS.items():
        spec = object_info.get(class_type) or {}
        for name, folder in inputs.items():
            options = combo_options(_input_spec(spec, name))
            models.setdefault(folder, set()).update(
                value for value in options if value not in BUILT_IN_VALUES.get(name, ()))
    return {"models": {folder: sorted(files) for folder, files in sorted(models.items())},
            "nodes": sorted(object_info)}


def combo_options(spec) -> list:
    """The choices of a combo input in either schema: `[[a, b], {...}]` (classic nodes) or
    `["COMBO", {"options": [a, b]}]` (v3 nodes)."""
    if not isinstance(spec, list) or not spec:
        return []
    if isinstance(spec[0], list):
        return [v for v in spec[0] if isinstance(v, str)]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [v for v in spec[1].get("options") or [] if isinstance(v, str)]
    return []


def _input_spec(node_spec: dict, name: str):
    inputs = node_spec.get("input") or {}
    return (inputs.get("required") or {}).get(name) or (inputs.get("optional") or {}).get(name)


def stored_outputs(workflow: dict) -> list[str]:
    """Ids of the nodes whose results Comfy Hybrid can store."""
    return [str(node_id) for node_id, node in workflow.items()
            if isinstance(node, dict) and node.get("class_type") in STORABLE_OUTPUT_NODES]


def model_input_folder(class_type: str, input_name: str) -> Optional[str]:
    return MODEL_INPUTS.get(class_type, {}).get(input_name)


def describe(missing: Iterable[str], limit: int = 3) -> str:
    missing = list(missing)
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return ", ".join(missing[:limit]) + more
