"""What the providers charge, per model id (USD), and where each figure comes from.

A backend row's price, when staff set one in the admin, overrides the table. The default is 0,
which means "from the table, for the model the backend is configured with". Prices move, so
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

# Veo, per second of video Google makes (720p/1080p).
VEO = {
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
