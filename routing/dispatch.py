"""Sending tasks by name, after the transaction commits.

By name (not by import) so that services never import task modules: dependencies point one
way, tasks → services. `robust=True`: if Redis is down at commit time the job is still
stored, the error is logged, and the sweeper re-sends it once Redis is back.
"""
import logging
from django.conf import settings
from django.db import transaction

from project.celery import app

log = logging.getLogger(__name__)

ROUTE = "workers.tasks.route_job"
SUBMIT = "workers.tasks.submit_attempt"
POLL = "workers.tasks.poll_attempt"
CANCEL = "workers.tasks.cancel_attempt"
ADMIT = "workers.tasks.admit_waiting"
WEBHOOK = "workers.tasks.deliver_webhook"
PROBE = "workers.tasks.probe_backend"
INVENTORY_PROBE = "workers.tasks.start_inventory_probe"


def broker_priority(job_priority: int | None) -> int | None:
    """The Redis broker priority of a job's messages (settings.BROKER_PRIORITIES)."""
    if job_priority is None:
        return None
    names = {0: "low", 1: "normal", 2: "high"}
    return settings.BROKER_PRIORITIES.get(names.get(job_priority, "normal"))


def send(name: str, args: list, *, queue: str, countdown: float | None = None, priority: int | None = None) -> None:
    # ignore_result: state lives in the database; without it Celery subscribes to the result
    # backend on every send, and a Redis outage then breaks sending until a restart.
    app.send_task(name, args=args, queue=queue, countdown=countdown, ignore_result=True,
                  priority=broker_priority(priority))


def send_on_commit(name: str, args: list, *, queue: str, countdown: float | None = None,
                   priority: int | None = None) -> None:
    def send_after_commit():
        send(name, args, queue=queue, countdown=countdown, priority=priority)

    send_after_commit.__qualname__ = f"send {name}"  # what Django logs if the send fails
    transaction.on_commit(send_after_commit, robust=True)
