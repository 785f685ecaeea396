"""Savings: what each local job would have cost on the cheapest paid option.

A local job is free; the saving is the price of the same job on the cheapest enabled paid
backend that could have run it (configured or not: it is what the user would have paid).
"""
from decimal import Decimal

from billing.prices import gemini_image_price
from billing.pricing import gemini_video_price, metered_cost, money


def paid_price(backend, kind: str, duration_seconds: int) -> Decimal:
    """Expected price of one job of this kind on a paid backend."""
    if backend.kind == "gemini":
        if kind == "video":
            return gemini_video_price(backend, duration_seconds)
        return money(gemini_image_price(backend))
    seconds = backend.expected_video_seconds if kind == "video" else backend.expected_image_seconds
    return metered_cost(backend, seconds)


def cheapest_paid_price(paid_backends, *, kind: str, duration_seconds: int, custom_workflow: bool) -> Decimal:
    prices = [paid_price(b, kind, duration_seconds) for b in paid_backends
              if (b.supports_workflows or not custom_workflow) and (b.supports_video or kind != "video")]
    prices = [p for p in prices if p > 0]
    return min(prices) if prices else Decimal("0")
