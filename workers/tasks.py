"""Thin tasks: load by id, call one service, schedule what comes next.

Each task names its queue; submit/poll/cancel go to the queue of the attempt's backend (the
sender picks it), so the local worker next to ComfyUI is the one that talks to it.
"""
from celery import shared_task

from project import queues
from routing import inventory_probe, maintenance, services, webhooks

from .base import FAST, SLOW, CappedTask, SingletonTask



class AttemptTask(CappedTask):
    def on_give_up(self, attempt_id, *args, **kwargs):
        services.attempt_fail(attempt_id=attempt_id, error="The worker crashed repeatedly on this job",
                              retryable=True)


def _same_queue(task) -> str:
    # Messages are sent with queue=<name> through the default direct exchange, where the
    # routing key is the queue name: the follow-up goes where this task came from.
    return (task.request.delivery_info or {}).get("routing_key") or queues.CONTROL


def _same_priority(task):
    # ...and keeps the job's broker priority.
    return (task.request.delivery_info or {}).get("priority")


@shared_task(queue=queues.CONTROL, **FAST)
def route_job(job_id):
    services.job_route(job_id=job_id)


@shared_task(**{**SLOW, "base": AttemptTask})
def submit_attempt(attempt_id):
    result = services.attempt_submit(attempt_id=attempt_id, worker=submit_attempt.request.hostname or "")
    if result is True:  # this task watches the prompt first: no message, no wait for a free worker
        _poll(submit_attempt, attempt_id, 0)
    elif result:  # a transient error: the same backend again, after a short wait
        submit_attempt.apply_async([attempt_id], countdown=result, queue=_same_queue(submit_attempt),
                                   priority=_same_priority(submit_attempt))


@shared_task(**{**SLOW, "base": AttemptTask})
def poll_attempt(attempt_id, seq):
    _poll(poll_attempt, attempt_id, seq)


def _poll(task, attempt_id, seq):
    """One poll; the next one is a message with a countdown, on the queue this task came from."""
    countdown = services.attempt_poll(attempt_id=attempt_id, seq=seq)
    if countdown is not None:
        poll_attempt.apply_async([attempt_id, seq + 1], countdown=countdown, queue=_same_queue(task),
                                 priority=_same_priority(task))


@shared_task(queue=queues.CONTROL, **FAST)
def admit_waiting():
    services.jobs_admit_waiting()


@shared_task(queue=queues.WEBHOOKS, **FAST)
def deliver_webhook(job_id, try_number):
    # Its own queue and worker: a slow receiver holds webhooks only, never routing.
    countdown = webhooks.webhook_deliver(job_id=job_id, try_number=try_number)
    if countdown is not None:
        deliver_webhook.apply_async([job_id, try_number + 1], countdown=countdown, queue=queues.WEBHOOKS)


@shared_task(**FAST)
def cancel_attempt(attempt_id):
    services.attempt_cancel_remote(attempt_id=attempt_id)


@shared_task(queue=queues.CONTROL, expires=30, **{**FAST, "base": SingletonTask}, once_every="HEALTH_PROBE_SECONDS")
def probe_backends():
    # Each probe runs on its backend's queue: the local worker is the one that can reach
    # a ComfyUI on the GPU machine's loopback.
    for backend_id, queue in maintenance.backends_to_probe():
        probe_backend.apply_async([backend_id], queue=queue, expires=30)


@shared_task(**FAST)
def probe_backend(backend_id):
    maintenance.backend_probe(backend_id=backend_id)


@shared_task(queue=queues.CLOUD, **FAST)
def start_inventory_probe(backend_id):
    return inventory_probe.inventory_probe_start(backend_id=backend_id)


@shared_task(queue=queues.CONTROL, expires=60, **{**FAST, "base": SingletonTask}, once_every="SWEEP_EVERY_SECONDS")
def sweep():
    return maintenance.sweep()


from .installer.server import tasks as install_tasks  # noqa: E402,F401  (registers the installer's task)
from . import pod_tasks  # noqa: E402,F401  (registers the cloud pod tasks)
