"""Beat: the ledger against RunPod's billing records, for the day before (billing/reconcile.py)."""
from celery import shared_task

from project import queues
from workers.base import SingletonTask

from . import reconcile


@shared_task(queue=queues.CLOUD, expires=600, base=SingletonTask, acks_late=True, soft_time_limit=240,
             time_limit=300, once_every="RECONCILE_SPEND_SECONDS")
def reconcile_spend():
    report = reconcile.reconcile_yesterday()
    return {"clean": report.clean, "recorded": [[key, str(amount)] for key, amount in report.recorded],
            "errors": report.errors}
