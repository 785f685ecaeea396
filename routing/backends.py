"""From a Backend row to what it needs: its effective URL, whether it is configured, its client.

Secrets (API keys) come from settings only and are handed to clients here; they are never
stored on rows, put in task arguments or shown anywhere.
"""
from django.conf import settings

from workers.clients import Client, client_for

from .models import Backend

# What each kind needs from settings before it can run anything.
REQUIRED_SETTINGS = {
    Backend.Kind.COMFYUI: (),
    Backend.Kind.POD: ("RUNPOD_API_KEY",),
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
    if backend.kind == Backend.Kind.COMFYUI:
        return client_for(
            "comfyui",
            url=backend_url(backend),
            timeout=settings.COMFYUI_HTTP_TIMEOUT,
            health_timeout=settings.COMFYUI_HEALTH_TIMEOUT,
            watch_seconds=settings.COMFYUI_WATCH_SECONDS,
            poll_interval=settings.COMFYUI_POLL_INTERVAL,
        )
    return client_for(backend.kind)


def checkpoint_for(backend: Backend, kind: str) -> str:
    key = "video_checkpoint" if kind == "video" else "checkpoint"
    default = settings.COMFYUI_VIDEO_CHECKPOINT if kind == "video" else settings.COMFYUI_CHECKPOINT
    return backend.config.get(key) or default
