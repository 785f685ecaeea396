"""How each backend kind is priced: one table, PRICING, keyed by kind like the client registry
(workers.clients.CLIENTS), so that adding a kind adds a client there and an entry here.

Each entry answers the three questions money asks (USD, Decimal, 6 places):
- estimate: what one job is expected to cost, and take, before it runs (the router's price,
  which the hold reserves);
- actual: what a finished attempt really cost (the charge);
- paid: what a job would have cost there (the savings of a job the local GPU ran);
and the price per second of its metered time (0: not billed by the second).

By kind:
- ComfyUI: by the second at the backend's price_per_second, 0 on a local GPU (whose estimate
  is 0 whatever its kind or price); one staff add as a cloud server is billed at its price;
- RunPod serverless: execution seconds × the endpoint's price per second (billing.prices);
- RunPod pods: the seconds a job executes on its pod × the pod's rate (billing.pods); the rest
  of the pod's uptime is the installation's idle cost. Before it runs: nothing extra on a pod
  already paid for with room, else a new pod's spin-up, run and idle time at the expected rate;
- Gemini: price per image, or per second of video, from billing.prices for the configured model.

The table lives here, not beside the clients: clients do HTTP only, below the models, while
prices read backend rows' fields and settings. It queries no table itself: the pod estimate
needs the live pods' room, which the pod selectors read (workers.pods.selectors.pod_room, a
layer above this one), so the router passes that reader in (routing.selectors.estimate) and only
the pod entry calls it.
"""
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable

from django.conf import settings

from workers.clients.gemini_video import video_duration

from .prices import gemini_image_price, serverless_price_per_second, veo_price_per_second

PLACES = Decimal("0.000001")
FREE = Decimal("0")


def money(value) -> Decimal:
    return Decimal(str(value)).quantize(PLACES, rounding=ROUND_HALF_UP)


def cost_at(price_per_second: Decimal, seconds: float) -> Decimal:
    return money(Decimal(price_per_second) * Decimal(str(max(0.0, seconds or 0.0))))


def expected_seconds(backend, kind: str) -> float:
    """How long a job of this kind (image or video) is expected to run on this backend."""
    return backend.expected_video_seconds if kind == "video" else backend.expected_image_seconds


@dataclass(frozen=True)
class PodRoom:
    """What the live pods offer one more job (workers.pods.selectors.pod_room reads it)."""

    wait: float | None  # seconds until a pod already paid for can start it; None: a new pod
    rate: Decimal = FREE  # a new pod's expected $/h (read only when one is needed)
    idle_seconds: int = 0  # how long the reaper lets a new pod at that rate sit idle


@dataclass(frozen=True)
class Pricing:
    """One backend kind's prices; every function takes the backend row first.

    per_second(backend): $/s of its metered time;
    estimate(backend, job, seconds, pod_room): (cost, seconds) of the job, `seconds` its
        expected run time, `pod_room(backend)` the live pods' PodRoom;
    actual(backend, job, seconds, outputs, rate): the finished attempt's cost, `rate` the $/s
        it was metered at;
    paid(backend, kind, duration_seconds): one job's price, for savings.
    """

    per_second: Callable[..., Decimal]
    estimate: Callable[..., tuple]
    actual: Callable[..., Decimal]
    paid: Callable[..., Decimal]


# --- billed by the second: ComfyUI, RunPod serverless, and a job's seconds on a pod -------------
def _per_second_estimate(backend, job, seconds, pod_room) -> tuple[Decimal, float]:
    return metered_cost(backend, seconds), seconds


def _per_second_actual(backend, job, seconds, outputs, rate) -> Decimal:
    return cost_at(rate, seconds or 0)


def _per_second_paid(backend, kind, duration_seconds) -> Decimal:
    return metered_cost(backend, expected_seconds(backend, kind))


def _own_price(backend) -> Decimal:
    return backend.price_per_second or FREE


# --- pods: a new pod's uptime, or nothing extra on one already paid for -------------------------
def _pod_estimate(backend, job, seconds, pod_room) -> tuple[Decimal, float]:
    room = pod_room(backend)
    if room.wait is not None:
        return FREE, seconds + room.wait
    total = settings.RUNPOD_POD_SPINUP_SECONDS + seconds
    # A new pod for one job is billed for its spin-up, the job, and the idle minutes before the
    # reaper stops it: pricing only the first two made single video jobs pick pods that then
    # wasted 40 % of cloud spend idle (bench/cost.py, "ours-idle-aware").
    cost = room.rate * Decimal(str(total + room.idle_seconds)) / Decimal(3600)
    return cost.quantize(PLACES), total


# --- Gemini: per image, or per second of the video Google makes ---------------------------------
def gemini_video_price(backend, duration_seconds: int) -> Decimal:
    """Google bills the length it makes (whole seconds, 3 to 10), not the length asked for."""
    return money(veo_price_per_second(backend) * video_duration(duration_seconds))


def _gemini_one(backend, kind: str, duration_seconds: int) -> Decimal:
    if kind == "video":
        return gemini_video_price(backend, duration_seconds)
    return gemini_image_price(backend)


def _gemini_estimate(backend, job, seconds, pod_room) -> tuple[Decimal, float]:
    return _gemini_one(backend, job.kind, job.duration_seconds), seconds


def _gemini_actual(backend, job, seconds, outputs, rate) -> Decimal:
    if job.kind == "video":
        return gemini_video_price(backend, job.duration_seconds)
    return money(gemini_image_price(backend) * max(1, outputs))


def _gemini_paid(backend, kind, duration_seconds) -> Decimal:
    return money(_gemini_one(backend, kind, duration_seconds))


def _nothing(backend) -> Decimal:
    return FREE


PER_SECOND = dict(estimate=_per_second_estimate, actual=_per_second_actual, paid=_per_second_paid)
PRICING = {
    "comfyui": Pricing(per_second=_own_price, **PER_SECOND),
    "runpod": Pricing(per_second=serverless_price_per_second, **PER_SECOND),
    # each pod has its own rate (routing.outcomes.meter_rate passes it to `actual`)
    "pod": Pricing(per_second=_nothing, estimate=_pod_estimate, actual=_per_second_actual, paid=_per_second_paid),
    "gemini": Pricing(per_second=_nothing, estimate=_gemini_estimate, actual=_gemini_actual, paid=_gemini_paid),
}


# --- what the rest of the code calls ------------------------------------------------------------
def estimate(backend, job, *, pod_room) -> tuple[Decimal, float]:
    """Expected marginal cost (USD) and seconds of this job on this backend; `pod_room(backend)`
    reads the live pods (the pod kind only)."""
    seconds = expected_seconds(backend, job.kind)
    if backend.category == "local":
        return FREE, seconds
    return PRICING[backend.kind].estimate(backend, job, seconds, pod_room)


def actual_cost(*, backend, job, seconds, outputs: int, rate: Decimal | None = None) -> Decimal:
    """`rate`: the price per second the attempt was metered at (a pod's own rate); by default the
    backend's."""
    pricing = PRICING[backend.kind]
    return pricing.actual(backend, job, seconds, outputs, pricing.per_second(backend) if rate is None else rate)


def paid_price(backend, kind: str, duration_seconds: int) -> Decimal:
    """Expected price of one job of this kind on a paid backend."""
    return PRICING[backend.kind].paid(backend, kind, duration_seconds)


def metered_price(backend) -> Decimal:
    """Price per second of a backend billed by the second while a job runs (RunPod serverless,
    a priced ComfyUI); 0 for the others (free local, Gemini per output, and pods: each pod has
    its own rate, see routing.outcomes.meter_rate)."""
    return PRICING[backend.kind].per_second(backend)


def metered_cost(backend, seconds: float) -> Decimal:
    return cost_at(metered_price(backend), seconds)
