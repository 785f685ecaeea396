"""ComfyUI's answer to a prompt it refuses (HTTP 400), as one readable error: which node, what
is wrong, and what the server lacks (reference/comfyui-0.8.0-capture.md, the validation shapes)."""
from workers.workflows.requirements import model_input_folder

from .base import BackendError


def validation_error(body: dict, workflow: dict) -> BackendError:
    """Turn ComfyUI's 400 body into one readable sentence naming the node and the problem.
    A model file or node class the server lacks is the backend's fault (retryable, with what it
    lacks, so its inventory is corrected); the rest is the user's."""
    error = body.get("error") or {}
    problems, lacks = [], []
    for node_id, node in (body.get("node_errors") or {}).items():
        for item in node.get("errors") or []:
            detail = item.get("details") or ""
            problems.append(f"node {node_id} ({node.get('class_type', '?')}): {item.get('message')}"
                            + (f" — {detail}" if detail else ""))
            lacks += _lacked_model(node.get("class_type"), item)
    message = error.get("message") or "ComfyUI rejected the workflow"
    if error.get("type") == "invalid_prompt" and "does not exist" in message:
        lacks += _lacked_node(error.get("details") or "", workflow)
    if error.get("details") and not problems:
        message += f" ({error['details']})"
    if problems:
        message += ": " + "; ".join(problems)
    if lacks:
        message = f"This ComfyUI lacks {', '.join(lacks)}. " + message
    return BackendError(message, retryable=bool(lacks), lacks=tuple(lacks))


def _lacked_model(class_type, item: dict) -> list[str]:
    extra = item.get("extra_info") or {}
    folder = model_input_folder(class_type or "", extra.get("input_name") or "")
    if item.get("type") != "value_not_in_list" or not folder or not isinstance(extra.get("received_value"), str):
        return []
    return [f"{folder}/{extra['received_value']}"]


def _lacked_node(details: str, workflow: dict) -> list[str]:
    # "Cannot execute because node Foo does not exist." with details "Node ID '#12'"
    node_id = details.partition("#")[2].rstrip("'")
    node = workflow.get(node_id) if isinstance(workflow, dict) else None
    return [f"node {node['class_type']}"] if isinstance(node, dict) and node.get("class_type") else []
