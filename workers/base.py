"""The base class of every task: a cap on redeliveries, which Celery lacks with Redis.

With acks_late and reject_on_worker_lost, a task whose worker dies is delivered again. A task
that kills its worker every time (a poison message) would loop forever; after
TASK_MAX_DELIVERIES deliveries of the same task id we stop and call `on_give_up`.
"""
import logging
import time

import redis
from celery import Task
from django.conf import settings

log = logging.getLogger(__name__)

_redis: dict = {}  # broker URL -> client (tests point the settings at a new Redis)


def redis_client():
    """The broker's Redis, for small shared state (delivery counts, live previews)."""
    url = settings.CELERY_BROKER_URL
    if url not in _redis:
        _redis[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _redis[url]


def deliveries(task_id: str) -> int:
    key = f"comfy-hybrid:deliveries:{task_id}"
    try:
        pipe = redis_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, 24 * 3600)
        return int(pipe.execute()[0])
    except redis.RedisError:
        return 1  # counting is a safety net; never block work because of it


class CappedTask(Task):
    def __call__(self, *args, **kwargs):
        task_id = self.request.id
        if task_id and not self.request.is_eager and self.request.delivery_info:
            count = deliveries(task_id)
            if count > settings.TASK_MAX_DELIVERIES:
                log.error("task %s[%s] delivered %s times; giving up", self.name, task_id, count)
                return self.on_give_up(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def on_give_up(self, *args, **kwargs):
        """Override to record the failure on the job; the default only logs."""
        return None


class SingletonTask(CappedTask):
    """A periodic task that runs at most once per interval, however many beats send it.

    Two beat processes started by mistake would otherwise double every probe (health flaps)
    and every autoscaler pass. The first run of an interval takes a Redis key that lives one
    interval (less a second of scheduling jitter); later sends within it return at once.
    `once_every` names the setting that holds the interval, as in workers/schedules.py.
    """

    once_every = None

    def __call__(self, *args, **kwargs):
        if self.once_every and not self.request.is_eager and self.request.delivery_info:
            seconds = max(1, int(getattr(settings, self.once_every)) - 1)
            try:
                first = redis_client().set(f"comfy-hybrid:once:{self.name}", str(time.time()), nx=True, ex=seconds)
            except redis.RedisError:
                first = True  # better a duplicate run than none
            if not first:
                log.info("%s already ran in this interval; skipped", self.name)
                return None
        return super().__call__(*args, **kwargs)


# Task options shared by every task module: acks_late (redelivered if its worker dies), the
# redelivery cap, and time limits. FAST: one short call; SLOW: a poll that may listen on a
# WebSocket for COMFYUI_WATCH_SECONDS and download outputs, or GraphQL calls of 30 s each.
FAST = {"base": CappedTask, "acks_late": True, "soft_time_limit": 60, "time_limit": 90}
SLOW = {"base": CappedTask, "acks_late": True, "soft_time_limit": 240, "time_limit": 300}
