"""Backend health hysteresis: down after 3 failures in a row, up after 2 successes."""
from datetime import timedelta

import pytest
from django.utils import timezone

from routing.health import effective_health, health_record
from routing.models import Backend

pytestmark = pytest.mark.django_db


def _record(backend, *outcomes):
    for ok in outcomes:
        backend = health_record(backend_id=backend.id, ok=ok, detail="" if ok else "connection refused")
    return backend


def test_two_failures_stay_up_and_the_third_goes_down(local_backend):
    backend = _record(local_backend, True, True)
    assert _record(backend, False, False).health == "up"
    down = _record(backend, False)
    assert down.health == "down" and down.down_since and down.last_error == "connection refused"


def test_one_success_stays_down_and_two_come_back(local_backend):
    backend = _record(local_backend, False, False, False)
    assert _record(backend, True).health == "down"
    up = _record(backend, True)
    assert up.health == "up" and up.down_since is None


def test_a_failure_in_between_resets_the_success_streak(local_backend):
    backend = _record(local_backend, False, False, False, True, False, True)
    assert backend.health == "down"


def test_a_stale_probe_counts_as_unknown(local_backend, settings):
    backend = _record(local_backend, True, True)
    assert effective_health(backend) == "up"
    later = timezone.now() + timedelta(seconds=settings.HEALTH_STALE_SECONDS + 1)
    assert effective_health(backend, now=later) == "unknown"


def test_a_probe_stores_queue_and_gpu(local_backend):
    health_record(backend_id=local_backend.id, ok=True, latency_ms=3.5, queue_depth=2,
                  gpu="NVIDIA GeForce RTX 4090", vram_total=25_000_000_000)
    backend = Backend.objects.get(id=local_backend.id)
    assert (backend.queue_depth, backend.gpu_name, backend.latency_ms) == (2, "NVIDIA GeForce RTX 4090", 3.5)


def test_the_probe_reads_the_inventory_again_when_comfyui_comes_back_after_a_restart(local_backend, fake_comfyui):
    from routing import maintenance

    Backend.objects.filter(id=local_backend.id).update(url=fake_comfyui.url)
    maintenance.backend_probe(backend_id=local_backend.id)
    first = Backend.objects.get(id=local_backend.id)
    assert first.inventory["models"]["loras"] == []

    fake_comfyui.stop()  # restarted with a LoRA installed meanwhile
    fake_comfyui.models = {**fake_comfyui.models, "loras": ["detail.safetensors"]}
    maintenance.backend_probe(backend_id=local_backend.id)
    assert Backend.objects.get(id=local_backend.id).inventory["models"]["loras"] == []  # unreachable: kept
    fake_comfyui.start()
    maintenance.backend_probe(backend_id=local_backend.id)

    again = Backend.objects.get(id=local_backend.id)
    assert again.inventory["models"]["loras"] == ["detail.safetensors"] and again.inventory_at > first.inventory_at
    maintenance.backend_probe(backend_id=local_backend.id)  # answering, fresh: not read again
    assert Backend.objects.get(id=local_backend.id).inventory_at == again.inventory_at
