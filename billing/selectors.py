"""Money figures for pages and the API."""
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Count, Sum
from django.utils import timezone

from routing.models import Backend, Category, Job, JobStatus

from .savings import cheapest_paid_price


def month_start(now=None) -> datetime:
    now = now or timezone.now()
    return datetime(now.year, now.month, 1, tzinfo=dt_timezone.utc)


def savings_for(jobs) -> Decimal:
    """Sum over succeeded local jobs of the cheapest paid price of the same job."""
    paid = [b for b in Backend.objects.filter(enabled=True).exclude(category=Category.LOCAL)]
    total = Decimal("0")
    local_jobs = jobs.filter(status=JobStatus.SUCCEEDED, backend__category=Category.LOCAL)
    for custom in (False, True):
        group = local_jobs.filter(workflow__isnull=not custom).values_list("kind", "duration_seconds")
        for kind, duration, count in group.annotate(n=Count("id")).order_by():
            total += count * cheapest_paid_price(paid, kind=kind, duration_seconds=duration, custom_workflow=custom)
    return total


def user_month_summary(*, user, now=None) -> dict:
    jobs = Job.objects.filter(user=user, created_at__gte=month_start(now))
    totals = jobs.aggregate(n=Count("id"), spent=Sum("cost"))
    return {"jobs": totals["n"], "spent": totals["spent"] or Decimal("0"), "saved": savings_for(jobs)}
