"""Backends every installation starts with (created after migrate, never overwritten).

The local ComfyUI is free and on by default; its URL comes from COMFYUI_URL unless staff set
one in the admin. Paid backends exist from the start but stay "not configured" (and unused)
until their API keys are set; their prices come from billing/prices.py until staff set one in the
admin.
"""
from .models import Backend


def default_backends() -> list[dict]:
    return [
        {"name": "local", "kind": "comfyui", "category": "local", "priority": 0,
         "expected_image_seconds": 15.0, "expected_video_seconds": 240.0},
        {"name": "runpod", "kind": "runpod", "category": "cloud", "priority": 10,  # price: billing.prices
         "expected_image_seconds": 25.0, "expected_video_seconds": 300.0},
        {"name": "pods", "kind": "pod", "category": "cloud", "priority": 15,
         "expected_image_seconds": 20.0, "expected_video_seconds": 240.0},
        {"name": "gemini", "kind": "gemini", "category": "gemini", "priority": 20,
         "supports_workflows": False,  # prices: billing.prices, for the configured models
         "expected_image_seconds": 12.0, "expected_video_seconds": 120.0},
    ]


def ensure_default_backends(**kwargs):
    for spec in default_backends():
        Backend.objects.get_or_create(name=spec["name"], defaults={k: v for k, v in spec.items() if k != "name"})
