"""The Celery app. Configuration lives in settings.py under the CELERY_ namespace."""
import os
import sys
from pathlib import Path

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from project.env import load_dotenv

# Before any command reads its environment: Flower takes FLOWER_BASIC_AUTH from os.environ when
# it starts, before Django's settings (which load .env) are ever imported.
load_dotenv(Path(__file__).resolve().parent.parent / ".env")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _survive_redis_restarts():
    """Keep a worker alive when Redis goes away while it holds unacked messages.

    On a lost connection kombu (5.7) closes the channel, then still uses it: it restores the
    unacked messages, and later acks messages delivered before the loss, through a channel
    whose connection it has already dropped. That fails in Channel._connparams with an
    AttributeError ('NoneType' object has no attribute 'hostname' / 'client'), which is not a
    connection error, so the worker stops with "Unrecoverable error" instead of reconnecting
    (seen here in tests/integration/test_faults.py; celery/kombu#582 and #970 show the same path). Raising
    a connection error there lets kombu and Celery handle it as the lost connection it is: the
    messages stay in Redis's unacked hash, come back after the visibility timeout, and the
    sweeper re-sends what a job needs anyway.
    """
    original = kombu_redis.Channel._connparams

    def _connparams(self, *args, **kwargs):
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("this channel's broker connection is closed")
        return original(self, *args, **kwargs)

    kombu_redis.Channel._connparams = _connparams


_survive_redis_restarts()


def _flower_only_with_a_password():
    """However Flower is started (`celery -A project flower`, honcho, systemd, compose), it runs
    only with basic auth, and its Prometheus `/metrics` (open in Flower itself) asks for it too."""
    if "flower" not in sys.argv[1:]:
        return
    credentials = os.environ.get("FLOWER_BASIC_AUTH", "")
    if ":" not in credentials or not credentials.split(":", 1)[1]:
        sys.exit("Flower is not started without a password: set FLOWER_BASIC_AUTH=user:password "
                 "in .env or the environment (`make run` generates one).")
    import tornado.web
    from flower.views import monitor

    monitor.Metrics.get = tornado.web.authenticated(monitor.Metrics.get)


_flower_only_with_a_password()
