"""Bundled workflow templates that prompt jobs fill in, and workflow validation.

The templates' model files come from one place, `deploy/comfyui-manifest.json`: each model
names the loader input that loads it (`loads_with`) and the templates that use it, so the
installer, the templates and the routing inventory check cannot drift apart.

Validation runs at submit (a clear form error) and again in the worker before anything is
sent, so a workflow that reaches a backend is always well-formed.
"""
import copy
import json
from functools import cache
from pathlib import Path

from workers.installer.manifest import DEFAULT_MANIFEST, load_manifest

from .requirements import STORABLE_OUTPUT_NODES, stored_outputs

HERE = Path(__file__).parent
VIDEO_FPS = 16
TEMPLATES = {"image": "txt2img", "video": "txt2video"}


class WorkflowError(ValueError):
    """The workflow is not a valid ComfyUI API-format workflow; the message says why."""


@cache
def _template(name: str) -> dict:
    """The template with its model files filled in from the manifest."""
    workflow = json.loads((HERE / f"{name}.json").read_text())
    for model in load_manifest(DEFAULT_MANIFEST).models:
        if name not in model.templates or not model.loads_with:
            continue
        class_type, input_name = model.loads_with.split(".")
        for node in workflow.values():
            if node["class_type"] == class_type:
                node["inputs"][input_name] = model.filename
    return workflow


def build_workflow(*, kind: str, prompt: str, negative_prompt: str, width: int, height: int,
                   seed: int, duration_seconds: int) -> dict:
    """A ComfyUI API workflow for a prompt job (txt2img or txt2video)."""
    workflow = copy.deepcopy(_template(TEMPLATES[kind]))
    workflow["6"]["inputs"]["text"] = prompt
    workflow["7"]["inputs"]["text"] = negative_prompt
    workflow["3"]["inputs"]["seed"] = seed
    latent = workflow["5"]["inputs"]
    latent["width"], latent["height"] = width, height
    if kind == "video":
        # Wan/Hunyuan latents take 4n+1 frames.
        frames = max(1, duration_seconds) * VIDEO_FPS
        latent["length"] = frames - frames % 4 + 1
    return workflow


def validate_workflow(workflow, *, max_nodes: int, allowed_classes=None) -> None:
    """Raise WorkflowError naming the node and the problem; return None when it is valid."""
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError("The workflow must be a JSON object of nodes in ComfyUI's API format "
                            "(in ComfyUI: Workflow → Export (API)).")
    if "nodes" in workflow and "links" in workflow:
        raise WorkflowError("This is a UI-format workflow. Export it with Workflow → Export (API) instead.")
    if len(workflow) > max_nodes:
        raise WorkflowError(f"The workflow has {len(workflow)} nodes; at most {max_nodes} are allowed.")
    for node_id, node in workflow.items():
        _validate_node(workflow, str(node_id), node, allowed_classes)
    if not stored_outputs(workflow):
        raise WorkflowError(NOTHING_STORED)


NOTHING_STORED = (
    "This workflow saves nothing Comfy Hybrid can keep: add a Save Image or Save Video node "
    "(PreviewImage only shows a temporary preview and SaveLatent writes a latent file). "
    f"Nodes that save results: {', '.join(sorted(STORABLE_OUTPUT_NODES))}.")


def _validate_node(workflow: dict, node_id: str, node, allowed_classes) -> None:
    if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
        raise WorkflowError(f"Node {node_id} has no class_type.")
    if allowed_classes and node["class_type"] not in allowed_classes:
        raise WorkflowError(f"Node {node_id}: node type {node['class_type']} is not allowed here.")
    inputs = node.get("inputs", {})
    if not isinstance(inputs, dict):
        raise WorkflowError(f"Node {node_id} ({node['class_type']}): inputs must be an object.")
    for name, value in inputs.items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], (str, int)):
            if str(value[0]) not in workflow:
                raise WorkflowError(f"Node {node_id} ({node['class_type']}): input {name} links to "
                                    f"node {value[0]}, which does not exist.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 2**64:
            raise WorkflowError(f"Node {node_id} ({node['class_type']}): input {name} is out of range.")
