"""Queue names, declared once. Every task names its queue from here (DESIGN.md, Queues)."""

CONTROL = "control"  # routing, health checks, reaper, autoscaler, sweeper
LOCAL = "local"  # the first machine's ComfyUI (backend "local") and the installer, on that machine
CLOUD = "cloud"  # RunPod serverless and pods
GEMINI = "gemini"  # Google Gemini requests and long-running operation polls
# Job webhooks, by their own worker: a receiver is the user's server, as slow as it likes; on
# `control` sixty slow deliveries held everyone's routing for minutes.
WEBHOOKS = "webhooks"

ALL = (CONTROL, LOCAL, CLOUD, GEMINI, WEBHOOKS)

# The backend every installation starts with; its queue keeps the plain name, so a single-GPU
# setup (and every worker started before fleets existed) needs no change.
FIRST_COMFYUI = "local"


def for_comfyui(backend_name: str) -> str:
    """The queue of one ComfyUI backend (each machine, each GPU of a fleet): only the worker next
    to that ComfyUI consumes it, so a submit can never reach another machine's worker."""
    return LOCAL if backend_name == FIRST_COMFYUI else f"{LOCAL}.{backend_name}"
