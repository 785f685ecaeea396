"""What a finished attempt really cost (USD, Decimal, 6 places).

- local ComfyUI: free;
- RunPod serverless (or any ComfyUI priced per second): execution seconds × price per second;
- RunPod pods: the seconds a job executes on its pod × the pod's rate (billing.pods); the rest
  of the pod's uptime is the installation's idle cost;
- Gemini: price per image, or per second of video, from billing.prices for the configured model.
"""
from decimal import ROUND_HALF_UP, Decimal

from workers.clients.gemini_video import video_duration

from .prices import gemini_image_price, serverless_price_per_second, veo_price_per_second

PLACES = Decimal("0.000001")


def money(value) -> Decimal:
    return Decimal(str(value)).quantize(PLACES, rounding=ROUND_HALF_UP)


def gemini_video_price(backend, duration_seconds: int) -> Decimal:
    """Google bills the length it makes (whole seconds, 3 to 10), not the length asked for."""
    return money(veo_price_per_second(backend) * video_duration(duration_seconds))


def actual_cost(*, backend, job, seconds, outputs: int, rate: Decimal | None = None) -> Decimal:
    """`rate`: the price per second the attempt was metered at (a pod's own rate); by default the
    backend's."""
    if backend.kind == "gemini":
        if job.kind == "video":
            return gemini_video_price(backend, job.duration_seconds)
        return money(gemini_image_price(backend) * max(1, outputs))
    # Per-second: RunPod serverless, pods, any priced ComfyUI; local is priced at 0.
    return cost_at(metered_price(backend) if rate is None else rate, seconds or 0)


def metered_price(backend) -> Decimal:
    """Price per second of a backend billed by the second while a job runs (RunPod serverless,
    a priced ComfyUI); 0 for the others (free local, Gemini per output, and pods: each pod has
    its own rate, see routing.outcomes.meter_rate)."""
    if backend.kind in ("pod", "gemini"):
        return Decimal("0")
    if backend.kind == "runpod":
        return serverless_price_per_second(backend)
    return backend.price_per_second or Decimal("0")


def metered_cost(backend, seconds: float) -> Decimal:
    return cost_at(metered_price(backend), seconds)


def cost_at(price_per_second: Decimal, seconds: float) -> Decimal:
    return money(Decimal(price_per_second) * Decimal(str(max(0.0, seconds or 0.0))))
