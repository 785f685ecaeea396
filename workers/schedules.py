"""Periodic tasks, created in django-celery-beat's tables after every migrate (idempotent).

They live in the database so the admin can change or pause them; every one carries an
expiry so a backlog after downtime does not fire a burst of stale runs.
"""
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from project import queues

SCHEDULES = [
    # (name, task, every seconds, queue, expires seconds)
    ("probe backends", "workers.tasks.probe_backends", "HEALTH_PROBE_SECONDS", queues.CONTROL, 30),
    ("sweep lost jobs", "workers.tasks.sweep", "SWEEP_EVERY_SECONDS", queues.CONTROL, 60),
    ("autoscale cloud pods", "workers.pod_tasks.autoscale_pods", "RUNPOD_AUTOSCALE_SECONDS", queues.CONTROL, 15),
    ("stop idle cloud pods", "workers.pod_tasks.reap_idle_pods", "RUNPOD_REAP_SECONDS", queues.CONTROL, 60),
    ("reconcile cloud pods", "workers.pod_tasks.reconcile_pods", "RUNPOD_RECONCILE_SECONDS", queues.CLOUD, 300),
    ("reconcile spend with RunPod", "billing.tasks.reconcile_spend", "RECONCILE_SPEND_SECONDS", queues.CLOUD, 600),
]


def ensure_schedules(**kwargs):
    for name, task, every_setting, queue, expires in SCHEDULES:
        every = getattr(settings, every_setting)
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.get_or_create(
            name=name, defaults={"task": task, "interval": interval, "queue": queue, "expire_seconds": expires},
        )
