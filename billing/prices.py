"""What the providers charge, per model id (USD), and where each figure comes from.

A backend row's price, when staff set one in the admin, overrides the table. The default is 0,
which means "from the table, for the model (or GPU) the backend is configured with"; a model or
GPU the table does not know falls back to the matching setting. Prices move, so
each row names its source; check them against the provider's pricing page when you update.
"""
from decimal import Decimal

from django.conf import settings

# Gemini image models: one 1K (about 1 MP) output image, the size the client asks for.
GEMINI_IMAGE = {
    # 1290 output tokens × $30/M (ai.google.dev pricing, transcribed 2026-09-20)
    "gemini-2.5-flash-image": Decimal("0.039"),
    # 1120 image tokens × $60/M ($0.045 at 512 px, $0.101 at 2K, $0.151 at 4K): AI Studio
    # pricing as transcribed by several routers and university portals, 2026
    "gemini-3.1-flash-image": Decimal("0.067"),
    "gemini-3.1-flash-image-preview": Decimal("0.067"),
    # $120/M output tokens: $0.134 per 1K/2K image, $0.24 at 4K (transcription 2026-09-20)
    "gemini-3-pro-image": Decimal("0.134"),
    "gemini-3-pro-image-preview": Decimal("0.134"),
}

# Video, per second of video Google makes: Gemini Omni Flash (the Gemini API's video model,
# billed by output tokens: 5,792 tokens per second of 720p video at about $17.50/M, i.e. about
# $0.10/s; third-party transcriptions, 2026: skills.sh gemini-omni, docs.gmicloud.ai
# gemini-omni-flash-preview) and Veo (Vertex AI only, 720p/1080p). Check against
# ai.google.dev/gemini-api/docs/pricing when you can.
VEO = {
    "gemini-omni-1.1-flash": Decimal("0.10"),
    "gemini-omni-flash-preview": Decimal("0.10"),
    "veo-3.1-generate-001": Decimal("0.40"),  # Standard, with audio (ai.google.dev pricing 2026-10-07)
    "veo-3.1-generate-preview": Decimal("0.40"),
    "veo-3.1-fast-generate-001": Decimal("0.15"),  # Fast (third-party guides, March 2026)
    "veo-3.1-fast-generate-preview": Decimal("0.15"),
    "veo-3.1-lite-generate-preview": Decimal("0.05"),  # Lite (third party)
}


def gemini_image_price(backend) -> Decimal:
    """Per image: the admin's price if set, else the table's for GEMINI_IMAGE_MODEL, else
    GEMINI_PRICE_PER_IMAGE (a model the table does not know)."""
    if backend.price_per_image:
        return backend.price_per_image
    return GEMINI_IMAGE.get(settings.GEMINI_IMAGE_MODEL, settings.GEMINI_PRICE_PER_IMAGE)


def veo_price_per_second(backend) -> Decimal:
    if backend.price_per_video_second:
        return backend.price_per_video_second
    return VEO.get(settings.GEMINI_VIDEO_MODEL, settings.GEMINI_PRICE_PER_VIDEO_SECOND)


# RunPod serverless, flex workers, $ per second by GPU class (runpod/docs
# snippets/serverless-gpu-pricing-table.mdx, last changed 2026-06-08). Active (always-on) workers
# are cheaper per second but billed around the clock; this project scales from zero, so flex.
RUNPOD_SERVERLESS = {
    **dict.fromkeys(("A4000", "A4500", "RTX 4000"), Decimal("0.00016")),
    **dict.fromkeys(("L4", "A5000", "RTX 3090"), Decimal("0.00019")),
    "RTX 4090": Decimal("0.00031"),
    **dict.fromkeys(("A6000", "A40"), Decimal("0.00034")),
    **dict.fromkeys(("L40", "L40S", "6000 Ada"), Decimal("0.00053")),
    "A100": Decimal("0.00076"),
    "H100": Decimal("0.00116"),
    "H200": Decimal("0.00155"),
    "B200": Decimal("0.00240"),
}

# RunPod on-demand pods, $ per hour by GPU type id: (secure, community). RunPod's docs no longer
# list them; third-party transcriptions of runpod.io/pricing, 2026 (reference §2.9). Only the
# estimate before RunPod names a pod's rate: a pod is billed, and charged, at the costPerHr
# RunPod returns for it.
RUNPOD_POD = {
    "NVIDIA GeForce RTX 4090": (Decimal("0.69"), Decimal("0.59")),
    "NVIDIA GeForce RTX 3090": (Decimal("0.43"), Decimal("0.39")),
    "NVIDIA A40": (Decimal("0.44"), Decimal("0.40")),
    "NVIDIA A100 80GB PCIe": (Decimal("1.39"), Decimal("1.19")),
    "NVIDIA A100-SXM4-80GB": (Decimal("1.59"), Decimal("1.39")),
    "NVIDIA H100 PCIe": (Decimal("2.89"), Decimal("1.99")),
    "NVIDIA H100 80GB HBM3": (Decimal("3.29"), Decimal("2.69")),
}


def serverless_price_per_second(backend) -> Decimal:
    """The endpoint's price: the admin's if set, else the table's for RUNPOD_ENDPOINT_GPU, else
    RUNPOD_PRICE_PER_SECOND."""
    if backend.price_per_second:
        return backend.price_per_second
    return RUNPOD_SERVERLESS.get(settings.RUNPOD_ENDPOINT_GPU, settings.RUNPOD_PRICE_PER_SECOND)


def pod_hourly_estimate() -> Decimal:
    """What a new pod is expected to cost before RunPod has named a rate: the table's price for
    the first GPU type asked for (RunPod gives the first it can place), in the cloud asked for
    (ALL: the cheaper, community), else RUNPOD_POD_PRICE_PER_HOUR."""
    gpus = settings.RUNPOD_POD_GPU_TYPES
    prices = RUNPOD_POD.get(gpus[0]) if gpus else None
    if prices is None:
        return Decimal(settings.RUNPOD_POD_PRICE_PER_HOUR)
    return prices[0] if settings.RUNPOD_POD_CLOUD_TYPE == "SECURE" else prices[1]
