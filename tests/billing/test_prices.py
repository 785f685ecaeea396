"""Prices per provider and model id (billing/prices.py), with the admin's price as an override."""
from decimal import Decimal

import pytest

from billing.prices import GEMINI_IMAGE, gemini_image_price, pod_hourly_estimate, veo_price_per_second
from billing.pricing import actual_cost, gemini_video_price, metered_price
from routing.defaults import ensure_default_backends
from routing.models import Backend, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def gemini():
    ensure_default_backends()
    return Backend.objects.get(name="gemini")


def test_an_image_is_priced_for_the_configured_model_not_one_number_per_backend(gemini, settings):
    settings.GEMINI_IMAGE_MODEL = "gemini-3.1-flash-image"
    assert gemini_image_price(gemini) == Decimal("0.067")
    settings.GEMINI_IMAGE_MODEL = "gemini-2.5-flash-image"
    assert gemini_image_price(gemini) == Decimal("0.039")
    settings.GEMINI_IMAGE_MODEL = "gemini-3-pro-image"
    assert actual_cost(backend=gemini, job=Job(kind="image"), seconds=12, outputs=2) == Decimal("0.268")


def test_video_is_priced_per_model_for_the_seconds_google_makes(gemini, settings):
    settings.GEMINI_VIDEO_MODEL = "gemini-omni-1.1-flash"
    assert veo_price_per_second(gemini) == Decimal("0.10")
    assert gemini_video_price(gemini, 5) == Decimal("0.50")
    assert gemini_video_price(gemini, 1) == Decimal("0.30")  # it makes 3 s at the least


def test_the_admins_price_overrides_the_table_and_an_unknown_model_uses_the_setting(gemini, settings):
    settings.GEMINI_IMAGE_MODEL, settings.GEMINI_PRICE_PER_IMAGE = "some-new-image-model", Decimal("0.05")
    assert "some-new-image-model" not in GEMINI_IMAGE and gemini_image_price(gemini) == Decimal("0.05")
    Backend.objects.filter(id=gemini.id).update(price_per_image=Decimal("0.02"))
    assert gemini_image_price(Backend.objects.get(id=gemini.id)) == Decimal("0.02")


def test_a_serverless_run_is_priced_for_the_endpoints_gpu_class(settings):
    from routing.selectors import estimate

    ensure_default_backends()
    runpod = Backend.objects.get(name="runpod")
    settings.RUNPOD_ENDPOINT_GPU = "H100"
    assert runpod.price_per_second == 0 and metered_price(runpod) == Decimal("0.00116")
    assert actual_cost(backend=runpod, job=Job(kind="image"), seconds=10, outputs=1) == Decimal("0.0116")
    runpod.expected_image_seconds = 20.0
    assert estimate(runpod, Job(kind="image")) == (Decimal("0.0232"), 20.0)  # the router prices the same
    settings.RUNPOD_ENDPOINT_GPU, settings.RUNPOD_PRICE_PER_SECOND = "some new GPU", Decimal("0.0005")
    assert metered_price(runpod) == Decimal("0.0005")
    runpod.price_per_second = Decimal("0.0002")  # staff's price wins
    assert metered_price(runpod) == Decimal("0.0002")


def test_a_new_pod_is_estimated_at_the_tables_price_for_the_first_gpu_type_in_the_cloud_asked_for(settings):
    settings.RUNPOD_POD_GPU_TYPES = ["NVIDIA H100 80GB HBM3", "NVIDIA A40"]
    settings.RUNPOD_POD_CLOUD_TYPE = "SECURE"
    assert pod_hourly_estimate() == Decimal("3.29")
    settings.RUNPOD_POD_CLOUD_TYPE = "COMMUNITY"
    assert pod_hourly_estimate() == Decimal("2.69")
    settings.RUNPOD_POD_GPU_TYPES, settings.RUNPOD_POD_PRICE_PER_HOUR = ["NVIDIA Z9000"], Decimal("9.99")
    assert pod_hourly_estimate() == Decimal("9.99")


def test_rows_at_the_old_serverless_default_read_the_table_and_a_staff_price_stays():
    from importlib import import_module

    from django.apps import apps

    migration = import_module("routing.migrations.0012_runpod_price_from_the_table")
    ensure_default_backends()
    Backend.objects.filter(name="runpod").update(price_per_second=Decimal("0.00031"))
    staff = Backend.objects.create(name="runpod-b", kind="runpod", category="cloud", price_per_second=Decimal("0.0004"))
    migration.forwards(apps, None)
    assert Backend.objects.get(name="runpod").price_per_second == 0
    assert Backend.objects.get(id=staff.id).price_per_second == Decimal("0.0004")
