"""Backends every installation starts with (created after migrate, never overwritten).

The local ComfyUI is free and on by default; its URL comes from COMFYUI_URL unless staff set
one in the admin.
"""
DEFAULT_BACKENDS = [
    {"name": "local", "kind": "comfyui", "category": "local", "priority": 0,
     "expected_image_seconds": 15.0, "expected_video_seconds": 240.0},
]


def ensure_default_backends(**kwargs):
    from .models import Backend

    for spec in DEFAULT_BACKENDS:
        Backend.objects.get_or_create(name=spec["name"], defaults={k: v for k, v in spec.items() if k != "name"})
