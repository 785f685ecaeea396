"""The cost simulator's copies of real rules agree with the code they model.

bench/costsim.py is pure Python (no database), so it carries its own copy of the reaper's
keep-warm rule (workers/pods/selectors.py reap_limit). The same cloud attempts, prices and
expected seconds must give the same verdict on both sides of the threshold.
"""
import math
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from bench import cost, costsim
from billing.prices import serverless_price_per_second
from routing.defaults import ensure_default_backends
from routing.models import Attempt, Backend, Job, JobStatus
from workers.pods.models import CloudPod, PodStatus
from workers.pods.selectors import idle_limit, keep_warm_cost, reap_limit


@pytest.fixture
def world(db, settings, alice):
    settings.RUNPOD_WARM_WINDOW_SECONDS = 900
    ensure_default_backends()
    serverless, pods = Backend.objects.get(name="runpod"), Backend.objects.get(name="pods")
    pod = CloudPod.objects.create(backend=pods, name="comfy-hybrid-warm", status=PodStatus.IDLE,
                                  cost_per_hour=Decimal("0.69"), ready_at=timezone.now())
    config = replace(cost.config_from_settings(), serverless_per_second=float(serverless_price_per_second(serverless)),
                     pod_per_hour=float(pod.cost_per_hour), warm_window=900.0)
    return serverless, pod, config


def _both(world, alice, images: int, videos: int) -> tuple[bool, bool]:
    serverless, pod, config = world
    now = timezone.now()
    Attempt.objects.all().delete()
    for kind, count in (("image", images), ("video", videos)):
        for _ in range(count):
            job = Job.objects.create(user=alice, prompt="x", kind=kind, status=JobStatus.RUNNING, backend=serverless)
            Attempt.objects.create(job=job, backend=serverless, number=1)
    sim = costsim.Simulator(config, [], costsim.ours)
    sim.now = 10_000.0
    sim.expected[costsim.RUNPOD] = {"image": serverless.expected_image_seconds,
                                    "video": serverless.expected_video_seconds}
    sim.cloud_attempts.extend([(sim.now - 1, "image")] * images + [(sim.now - 1, "video")] * videos)
    return reap_limit(pod, now) == idle_limit(pod.cost_per_hour), sim.warm_pays()


def test_the_simulated_keep_warm_rule_agrees_with_the_reaper_on_both_sides_of_its_threshold(world, alice):
    serverless, pod, _ = world
    per_image = serverless.expected_image_seconds * float(serverless_price_per_second(serverless))
    enough = math.ceil(float(keep_warm_cost(pod.cost_per_hour, 900)) / per_image)
    assert _both(world, alice, enough - 1, 0) == (False, False)
    assert _both(world, alice, enough, 0) == (True, True)
    assert _both(world, alice, 0, 1) == (False, False)
    assert _both(world, alice, 0, 0) == (False, False)


def test_attempts_older_than_the_window_count_on_neither_side(world, alice):
    serverless, pod, config = world
    for _ in range(10):
        job = Job.objects.create(user=alice, prompt="x", kind="video", status=JobStatus.RUNNING, backend=serverless)
        Attempt.objects.create(job=job, backend=serverless, number=1)
    Attempt.objects.update(created_at=timezone.now() - timedelta(seconds=901))
    sim = costsim.Simulator(config, [], costsim.ours)
    sim.now = 10_000.0
    sim.cloud_attempts.extend([(sim.now - 901, "video")] * 10)
    assert reap_limit(pod, timezone.now()) == 0 and not sim.warm_pays()
