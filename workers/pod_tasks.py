"""Thin tasks for on-demand pods: beat decisions on `control`, RunPod calls on `cloud`.

Beat: autoscale (RUNPOD_AUTOSCALE_SECONDS), idle shutdown (RUNPOD_REAP_SECONDS, every
minute), reconcile (RUNPOD_RECONCILE_SECONDS); see workers/schedules.py. The services send
spawn / check / terminate by name (workers/pods/services.py), after their rows commit.
"""
from celery import shared_task

from project import queues
from workers.pods import autoscale, services, volume

from .base import FAST, SLOW, SingletonTask



@shared_task(queue=queues.CONTROL, expires=15, **{**FAST, "base": SingletonTask}, once_every="RUNPOD_AUTOSCALE_SECONDS")
def autoscale_pods():
    return autoscale.autoscale()


@shared_task(queue=queues.CONTROL, expires=60, **{**FAST, "base": SingletonTask}, once_every="RUNPOD_REAP_SECONDS")
def reap_idle_pods():
    return services.pod_reap_idle()


@shared_task(queue=queues.CLOUD, expires=300, **{**SLOW, "base": SingletonTask},
             once_every="RUNPOD_RECONCILE_SECONDS")
def reconcile_pods():
    return services.pod_reconcile()


@shared_task(queue=queues.CLOUD, **SLOW)
def spawn_pod(pod_id):
    services.pod_spawn(pod_id=pod_id)


@shared_task(queue=queues.CLOUD, expires=60, **SLOW)
def check_pod(pod_id):
    return services.pod_check(pod_id=pod_id)


@shared_task(queue=queues.CLOUD, **SLOW)
def terminate_pod(pod_id):
    services.pod_terminate(pod_id=pod_id)


@shared_task(queue=queues.CLOUD, **SLOW)
def spawn_volume_sync(sync_id):
    volume.volume_sync_spawn(sync_id=sync_id)


@shared_task(queue=queues.CLOUD, expires=60, **SLOW)
def check_volume_sync(sync_id):
    return volume.volume_sync_check(sync_id=sync_id)
