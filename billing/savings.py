"""Savings: what each local job would have cost on the cheapest paid option.

A local job is free; the saving is the price of the same job on the cheapest enabled paid
backend that could have run it (configured or not: it is what the user would have paid), each
priced by its kind's entry in the pricing table (billing.pricing.paid_price).
"""
from decimal import Decimal

from billing.pricing import paid_price


def cheapest_paid_price(paid_backends, *, kind: str, duration_seconds: int, custom_workflow: bool) -> Decimal:
    prices = [paid_price(b, kind, duration_seconds) for b in paid_backends
              if (b.supports_workflows or not custom_workflow) and (b.supports_video or kind != "video")]
    prices = [p for p in prices if p > 0]
    return min(prices) if prices else Decimal("0")
