"""The backend selector page: live statuses, expected cost, the saved preference, the month."""
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from billing.prices import VEO
from routing.models import Backend, Job, JobStatus, Preference

pytestmark = pytest.mark.django_db


@pytest.fixture
def backends(local_backend, settings):
    settings.RUNPOD_API_KEY, settings.RUNPOD_ENDPOINT_ID = "rp-secret-key-123", "ep1"
    now = timezone.now()
    Backend.objects.filter(name="local").update(health="up", last_probe_at=now, gpu_name="NVIDIA GeForce RTX 4090",
                                                vram_total=25_757_220_864)
    Backend.objects.filter(name="runpod").update(health="down", last_probe_at=now, down_since=now,
                                                 last_error="HTTP 503")
    return Backend.objects.all()


def _card(page, name):
    start = page.index(f'data-backend="{name}"')
    return page[start:page.index("</article>", start)]


def test_it_shows_each_backend_with_its_status_cost_and_gpu(alice_client, backends):
    page = alice_client.get("/backends/").content.decode()
    local = _card(page, "local")
    assert "available" in local and "free" in local and "NVIDIA GeForce RTX 4090" in local and "GB" in local
    assert "down" in _card(page, "runpod") and "HTTP 503" in _card(page, "runpod")
    gemini = _card(page, "gemini")
    assert "not configured" in gemini and "GEMINI_API_KEY" in gemini
    assert "$0.0670" in gemini  # the configured gemini-3.1-flash-image


def test_the_page_never_shows_a_secret(alice_client, backends):
    assert "rp-secret-key-123" not in alice_client.get("/backends/").content.decode()
    assert "rp-secret-key-123" not in alice_client.get("/backends/cards/").content.decode()


def test_a_busy_local_gpu_says_busy(alice_client, backends, settings):
    Backend.objects.filter(name="local").update(queue_depth=settings.LOCAL_QUEUE_LIMIT)
    assert "busy" in _card(alice_client.get("/backends/").content.decode(), "local")


def test_video_costs_use_the_video_price(alice_client, backends):
    page = alice_client.get("/backends/?kind=video").content.decode()
    for model in ("gemini-omni-1.1-flash", "veo-3.1-generate-001"):  # the default, and a Vertex one
        with override_settings(GEMINI_VIDEO_MODEL=model):
            page = alice_client.get("/backends/?kind=video").content.decode()
        assert f"${4 * VEO[model]:.4f}" in _card(page, "gemini")  # 4 s at the model's price per second


def test_choosing_a_preference_saves_it_without_a_reload(alice_client, alice, backends):
    response = alice_client.post("/backends/preference/", {"preference": "gemini"})
    assert response.json() == {"preference": "gemini", "saved": True}
    assert Preference.objects.get(user=alice).preference == "gemini"
    assert 'value="gemini" checked' in alice_client.get("/backends/").content.decode()


def test_an_unknown_preference_is_refused_and_changes_nothing(alice_client, alice, backends):
    response = alice_client.post("/backends/preference/", {"preference": "mars"})
    assert response.status_code == 400 and "Unknown preference" in response.json()["error"]
    assert not Preference.objects.filter(user=alice).exists()


def test_the_month_summary_counts_jobs_spend_and_savings(alice_client, alice, bob, backends):
    local, gemini = Backend.objects.get(name="local"), Backend.objects.get(name="gemini")
    Job.objects.create(user=alice, prompt="a", status=JobStatus.SUCCEEDED, backend=local)
    Job.objects.create(user=alice, prompt="b", status=JobStatus.SUCCEEDED, backend=gemini, cost=Decimal("0.039"))
    Job.objects.create(user=bob, prompt="c", status=JobStatus.SUCCEEDED, backend=local)
    page = alice_client.get("/backends/").content.decode()
    # one local image job saved the cheapest paid price: RunPod 25 s × $0.00031 = $0.00775
    assert "<strong>2</strong> jobs" in page and "<strong>$0.04</strong> spent" in page
    assert "<strong>$0.01</strong> saved" in page
