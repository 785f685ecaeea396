"""workers.base: CappedTask stops a redelivered task after TASK_MAX_DELIVERIES deliveries, and
SingletonTask runs a periodic task once per interval however many beats send it.

Each task is called as a worker calls it: a request with an id and delivery_info (a broker
delivery), counted in Redis."""
import socket
import uuid

import pytest

from project.celery import app
from workers.base import CappedTask, SingletonTask


class Counted(CappedTask):
    name = "tests.counted"
    runs: list
    gave_up: list

    def run(self, n):
        self.runs.append(n)
        return f"ran {n}"

    def on_give_up(self, n):
        self.gave_up.append(n)
        return "gave up"


class Once(SingletonTask, Counted):
    name = "tests.once"
    once_every = "TEST_ONCE_SECONDS"


@pytest.fixture
def counted():
    task = app.register_task(type("Counted", (Counted,), {"name": f"tests.counted.{uuid.uuid4()}"})())
    task.runs, task.gave_up = [], []
    return task


@pytest.fixture
def once(settings):
    settings.TEST_ONCE_SECONDS = 60
    task = app.register_task(type("Once", (Once,), {"name": f"tests.once.{uuid.uuid4()}"})())  # its own window
    task.runs, task.gave_up = [], []
    return task


def deliver(task, n, task_id=None):
    """One delivery of `task` by the broker, as a worker runs it."""
    task.push_request(id=task_id or str(uuid.uuid4()), delivery_info={"routing_key": "control"}, is_eager=False)
    try:
        return task(n)
    finally:
        task.pop_request()


@pytest.fixture
def no_redis(settings):
    """Redis down: a port held but never listened on refuses every connection."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{held.getsockname()[1]}/0"
        yield


def test_a_task_delivered_more_often_than_the_cap_gives_up_instead_of_running(counted, redis_server, settings):
    settings.TASK_MAX_DELIVERIES = 3
    task_id = str(uuid.uuid4())

    results = [deliver(counted, n, task_id) for n in range(5)]

    assert results == ["ran 0", "ran 1", "ran 2", "gave up", "gave up"]
    assert (counted.runs, counted.gave_up) == ([0, 1, 2], [3, 4])
    assert int(redis_server.client().get(f"comfy-hybrid:deliveries:{task_id}")) == 5


def test_each_task_id_has_its_own_count(counted, redis_server, settings):
    settings.TASK_MAX_DELIVERIES = 1

    assert [deliver(counted, n) for n in range(3)] == ["ran 0", "ran 1", "ran 2"]
    assert counted.gave_up == []


def test_eager_and_direct_calls_are_not_counted(counted, redis_server, settings):
    settings.TASK_MAX_DELIVERIES = 0  # any counted delivery would give up

    assert counted.apply(args=(1,)).get() == "ran 1"
    assert counted(2) == "ran 2"
    assert (counted.runs, counted.gave_up) == ([1, 2], [])


def test_a_periodic_task_sent_twice_in_one_interval_runs_once(once, redis_server):
    assert [deliver(once, n) for n in range(3)] == ["ran 0", None, None]
    assert once.runs == [0]
    # The window lasts the interval less a second of beat's jitter; the next interval runs again.
    key = f"comfy-hybrid:once:{once.name}"
    assert 0 < redis_server.client().ttl(key) <= 59
    redis_server.client().delete(key)
    assert deliver(once, 3) == "ran 3" and once.runs == [0, 3]


def test_a_periodic_task_is_still_capped_like_any_task(once, redis_server, settings):
    settings.TASK_MAX_DELIVERIES = 1
    task_id = str(uuid.uuid4())

    assert deliver(once, 0, task_id) == "ran 0"
    redis_server.client().delete(f"comfy-hybrid:once:{once.name}")  # the next interval
    assert deliver(once, 1, task_id) == "gave up" and once.gave_up == [1]


def test_with_redis_down_tasks_still_run_rather_than_never(counted, once, no_redis, settings):
    settings.TASK_MAX_DELIVERIES = 1
    task_id = str(uuid.uuid4())

    assert [deliver(counted, n, task_id) for n in range(3)] == ["ran 0", "ran 1", "ran 2"]
    assert [deliver(once, n) for n in range(2)] == ["ran 0", "ran 1"]  # better a duplicate run than none
