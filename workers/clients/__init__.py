"""One client per backend kind, registered in one dict (DESIGN.md, Backends).

Import paths, not classes, so that a kind's SDK (runpod, google-genai) is imported only by the
workers that use it, and adding a kind touches only this dict.
"""
from django.utils.module_loading import import_string

from .base import BackendError, Client, Done, Failed, Health, Progress, RemoteOutput

CLIENTS = {
    "comfyui": "workers.clients.comfyui.ComfyUIClient",
    "pod": "workers.clients.pods.PodClient",
    "runpod": "workers.clients.runpod.RunPodClient",
    "gemini": "workers.clients.gemini.GeminiClient",
}


def client_class(kind: str):
    try:
        return import_string(CLIENTS[kind])
    except (KeyError, ImportError):
        raise BackendError(f"No client for backend kind {kind!r}", retryable=False)


__all__ = ["BackendError", "Client", "Done", "Failed", "Health", "Progress", "RemoteOutput", "client_class", "CLIENTS"]
