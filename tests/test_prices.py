"""Prices per provider and model id (billing/prices.py), with the admin's price as an override."""
from decimal import Decimal

import pytest

from billing.prices import GEMINI_IMAGE, gemini_image_price, veo_price_per_second
from billing.pricing import actual_cost, gemini_video_price
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


def test_veo_is_priced_per_model_for_the_seconds_google_makes(gemini, settings):
    settings.GEMINI_VIDEO_MODEL = "veo-3.1-fast-generate-001"
    assert veo_price_per_second(gemini) == Decimal("0.15")
    assert gemini_video_price(gemini, 5) == Decimal("0.90")  # Veo makes 6 s for 5 asked


def test_the_admins_price_overrides_the_table_and_an_unknown_model_uses_the_setting(gemini, settings):
    settings.GEMINI_IMAGE_MODEL, settings.GEMINI_PRICE_PER_IMAGE = "some-new-image-model", Decimal("0.05")
    assert "some-new-image-model" not in GEMINI_IMAGE and gemini_image_price(gemini) == Decimal("0.05")
    Backend.objects.filter(id=gemini.id).update(price_per_image=Decimal("0.02"))
    assert gemini_image_price(Backend.objects.get(id=gemini.id)) == Decimal("0.02")
