"""The base class of every task: a cap on redeliveries, which Celery lacks with Redis.

With acks_late and reject_on_worker_lost, a task whose worker dies is delivered again. A task
that kills its worker every time (a poison message) would loop forever; after
TASK_MAX_DELIVERIES deliveries of the same task id we stop and call `on_give_up`.
"""
import logging

import redis
from celery import Task
from django.conf import settings

log = logging.getLogger(__name__)

_redis = None


def _client():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
    return _redis


def deliveries(task_id: str) -> int:
    key = f"comfy-hybrid:deliveries:{task_id}"
    try:
        pipe = _client().pipeline()
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
