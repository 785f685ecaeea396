"""From a Backend row to what it needs: its effective URL, whether it is configured, its client.

Secrets (API keys) come from settings only and are handed to clients here; they are never
stored on rows, put in task arguments or shown anywhere.
"""
from django.conf import settings

from workers.clients import Client, client_class

from .models import Backend

# What each kind needs from settings before it can run anything.
REQUIRED_SETTINGS = {
    Backend.Kind.COMFYUI: (),
    Backend.Kind.POD: ("RUNPOD_API_KEY", "RUNPOD_POD_IMAGE"),
    Backend.Kind.RUNPOD: ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID"),
    Backend.Kind.GEMINI: ("GEMINI_API_KEY",),
}


def backend_url(backend: Backend) -> str:
    if backend.url:
        return backend.url
    if backend.kind == Backend.Kind.COMFYUI:
        return settings.COMFYUI_URL
    return ""


def missing_settings(backend: Backend) -> list[str]:
    return [name for name in REQUIRED_SETTINGS.get(backend.kind, ()) if not getattr(settings, name, "")]


def client_for_backend(backend: Backend) -> Client:
    return client_class(backend.kind).for_backend(backend, backend_url(backend))
