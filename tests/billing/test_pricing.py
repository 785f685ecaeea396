"""The pricing table (billing/pricing.py): one entry per backend kind, each pricing a job as the
code did before the table (the figures below are what the per-kind branches returned)."""
from decimal import Decimal

import pytest

from billing.pricing import PRICING, PodRoom, actual_cost, metered_price, paid_price
from routing.defaults import ensure_default_backends
from routing.models import Backend, Job
from routing.selectors import estimate

pytestmark = pytest.mark.django_db

IMAGE, VIDEO = Job(kind="image"), Job(kind="video", duration_seconds=5)


@pytest.fixture
def backends(settings):
    settings.RUNPOD_ENDPOINT_GPU = "H100"
    settings.GEMINI_IMAGE_MODEL, settings.GEMINI_VIDEO_MODEL = "gemini-3-pro-image", "gemini-omni-1.1-flash"
    settings.RUNPOD_POD_GPU_TYPES, settings.RUNPOD_POD_CLOUD_TYPE = ["NVIDIA GeForce RTX 4090"], "SECURE"
    ensure_default_backends()
    Backend.objects.create(name="rented", kind="comfyui", category="cloud", price_per_second=Decimal("0.0004"),
                           expected_image_seconds=30.0, expected_video_seconds=200.0)
    return {backend.name: backend for backend in Backend.objects.all()}


def test_every_backend_kind_has_a_pricing_entry():
    assert set(PRICING) == set(Backend.Kind.values)


def test_a_local_gpu_costs_nothing_before_during_or_after(backends):
    local = backends["local"]
    assert estimate(local, IMAGE) == (0, 15.0) and estimate(local, VIDEO) == (0, 240.0)
    assert actual_cost(backend=local, job=IMAGE, seconds=12.5, outputs=2) == 0
    assert paid_price(local, "image", 5) == 0 and metered_price(local) == 0


def test_a_comfyui_rented_in_the_cloud_is_billed_by_the_second_at_its_own_price(backends):
    rented = backends["rented"]
    assert metered_price(rented) == Decimal("0.0004")
    assert estimate(rented, IMAGE) == (Decimal("0.012"), 30.0) and estimate(rented, VIDEO) == (Decimal("0.08"), 200.0)
    assert actual_cost(backend=rented, job=IMAGE, seconds=12.5, outputs=2) == Decimal("0.005")
    assert paid_price(rented, "video", 5) == Decimal("0.08")


def test_runpod_serverless_is_billed_by_the_second_at_the_endpoints_gpu_price(backends):
    runpod = backends["runpod"]
    assert metered_price(runpod) == Decimal("0.00116")
    assert estimate(runpod, IMAGE) == (Decimal("0.029"), 25.0) and estimate(runpod, VIDEO) == (Decimal("0.348"), 300.0)
    assert actual_cost(backend=runpod, job=IMAGE, seconds=12.5, outputs=2) == Decimal("0.0145")
    assert actual_cost(backend=runpod, job=IMAGE, seconds=12.5, outputs=2, rate=Decimal("0.0002")) == Decimal("0.0025")
    assert paid_price(runpod, "image", 5) == Decimal("0.029")


def test_a_pod_job_pays_a_new_pods_spin_up_run_and_idle_tail_or_nothing_on_a_pod_with_room(backends):
    pods = backends["pods"]
    # no live pod: $0.69/h × (180 s spin-up + the job + 180 s idle before the reaper)
    assert estimate(pods, IMAGE) == (Decimal("0.072833"), 200.0) and estimate(pods, VIDEO) == (Decimal("0.115"), 420.0)
    assert PRICING["pod"].estimate(pods, IMAGE, 20.0, lambda backend: PodRoom(wait=0)) == (0, 20.0)
    assert PRICING["pod"].estimate(pods, IMAGE, 20.0, lambda backend: PodRoom(wait=35.0)) == (0, 55.0)
    # charged at its pod's own rate; without one, and as a saving, nothing
    assert actual_cost(backend=pods, job=IMAGE, seconds=12.5, outputs=2, rate=Decimal("0.0002")) == Decimal("0.0025")
    assert actual_cost(backend=pods, job=IMAGE, seconds=12.5, outputs=2) == 0
    assert paid_price(pods, "image", 5) == 0 and metered_price(pods) == 0


def test_gemini_is_priced_per_image_or_per_second_of_video_whatever_the_time(backends):
    gemini = backends["gemini"]
    assert estimate(gemini, IMAGE) == (Decimal("0.134"), 12.0) and estimate(gemini, VIDEO) == (Decimal("0.50"), 120.0)
    assert actual_cost(backend=gemini, job=IMAGE, seconds=12.5, outputs=2) == Decimal("0.268")
    assert actual_cost(backend=gemini, job=VIDEO, seconds=12.5, outputs=1, rate=Decimal("0.0002")) == Decimal("0.50")
    assert paid_price(gemini, "image", 5) == Decimal("0.134") and metered_price(gemini) == 0
