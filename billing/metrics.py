"""Every figure of the design for a period: jobs, times, spend, savings, success, pods.

Money comes from the ledger (charges and idle time), never from job rows, so the dashboard
and the bill agree. `user=None` means the whole installation (staff).
"""
import calendar
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum
from django.utils import timezone

from routing.models import Attempt, AttemptStatus, Job, JobStatus
from workers.pods.selectors import pod_figures

from .models import SPENT_KINDS, LedgerEntry
from .pricing import money
from .selectors import month_start, savings_for

SPENT = SPENT_KINDS
CATEGORIES = ("local", "cloud", "gemini")


def period(days: int = 30, now=None) -> tuple[datetime, datetime]:
    now = now or timezone.now()
    return now - timedelta(days=days), now


def metrics(*, start: datetime, end: datetime, user=None, now=None) -> dict:
    jobs = Job.objects.filter(created_at__gte=start, created_at__lt=end)
    ledger = LedgerEntry.objects.filter(kind__in=SPENT, created_at__gte=start, created_at__lt=end)
    if user is not None:
        jobs, ledger = jobs.filter(user=user), ledger.filter(user=user)
    spend = _spend_by_category(ledger)
    figures = {
        "start": start, "end": end,
        "jobs": _job_counts(jobs),
        "avg_seconds": _average_seconds(jobs),
        "spend": spend,
        "saved": money(savings_for(jobs)),
        "success_rate": _success_rates(jobs),
        "failovers": jobs.aggregate(n=Sum("failovers"))["n"] or 0,
        "retries": jobs.aggregate(n=Sum("retries"))["n"] or 0,
        "pods": _pod_figures(ledger, start, end, include=user is None),
        "projected_month": projected_month(user=user, now=now),
        "per_day": _per_day(jobs, ledger, start, end),
    }
    return figures


def _job_counts(jobs) -> dict:
    counts = {"total": jobs.count(), **{c: 0 for c in CATEGORIES}}
    for row in jobs.exclude(backend=None).values("backend__category").annotate(n=Count("id")):
        counts[row["backend__category"]] = row["n"]
    return counts


def _average_seconds(jobs) -> dict:
    """Average processing time of succeeded attempts per backend, in seconds."""
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    attempts = Attempt.objects.filter(job__in=jobs, status=AttemptStatus.SUCCEEDED, started_at__isnull=False,
                                      finished_at__isnull=False).annotate(d=duration)
    totals = defaultdict(lambda: [timedelta(0), 0])
    for name, spent in attempts.values_list("backend__name", "d"):
        totals[name][0] += spent
        totals[name][1] += 1
    return {name: round(total.total_seconds() / n, 3) for name, (total, n) in sorted(totals.items())}


def _spend_by_category(ledger) -> dict:
    spend = {"cloud": Decimal("0"), "gemini": Decimal("0"), "idle": Decimal("0"), "unmatched": Decimal("0")}
    for row in ledger.values("kind", "category").annotate(total=Sum("amount")):
        key = "idle" if row["kind"] == LedgerEntry.Kind.IDLE else row["category"]
        if key in spend:
            spend[key] += row["total"]
        if row["kind"] == LedgerEntry.Kind.UNMATCHED:  # runs no job received: also in their category
            spend["unmatched"] += row["total"]
    spend["cloud"] += spend["idle"]  # wasted pod time is cloud money too
    spend["total"] = spend["cloud"] + spend["gemini"]
    return {key: money(value) for key, value in spend.items()}


def _success_rates(jobs) -> dict:
    """Succeeded / (succeeded + failed); cancelled jobs were the user's choice, not a failure.
    Per backend it is per attempt, so a backend that failed over is charged with its failure."""
    finished = jobs.filter(status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED))
    succeeded = finished.filter(status=JobStatus.SUCCEEDED).count()
    rates = {"overall": _rate(succeeded, finished.count())}
    attempts = Attempt.objects.filter(job__in=jobs, status__in=(AttemptStatus.SUCCEEDED, AttemptStatus.FAILED))
    per_backend = defaultdict(lambda: [0, 0])
    for name, status in attempts.values_list("backend__name", "status"):
        per_backend[name][1] += 1
        per_backend[name][0] += status == AttemptStatus.SUCCEEDED
    rates.update({name: _rate(ok, n) for name, (ok, n) in sorted(per_backend.items())})
    return rates


def _rate(ok: int, n: int):
    return round(ok / n, 4) if n else None


def _pod_figures(ledger, start, end, include: bool) -> dict:
    figures = {"count": 0, "avg_uptime_seconds": None, "jobs_per_pod": None,
               "wasted_idle_cost": money(ledger.filter(kind=LedgerEntry.Kind.IDLE).aggregate(
                   t=Sum("amount"))["t"] or 0)}
    if include:
        figures.update(pod_figures(start=start, end=end))
    return figures


def projected_month(*, user=None, now=None) -> Decimal:
    """This month's spend so far, extended at the same rate to the month's end."""
    now = now or timezone.now()
    first = month_start(now)
    ledger = LedgerEntry.objects.filter(kind__in=SPENT, created_at__gte=first, created_at__lte=now)
    if user is not None:
        ledger = ledger.filter(user=user)
    so_far = ledger.aggregate(t=Sum("amount"))["t"] or Decimal("0")
    days = calendar.monthrange(now.year, now.month)[1]
    elapsed = (now - first).total_seconds() / (days * 86400)
    return money(so_far / Decimal(str(max(elapsed, 1 / (days * 24)))))


def _per_day(jobs, ledger, start, end) -> list[dict]:
    """One row per day: jobs per backend category and money spent."""
    days = {}
    day = start.astimezone(dt_timezone.utc).date()
    while day <= end.astimezone(dt_timezone.utc).date():
        days[day] = {"day": day, **{c: 0 for c in CATEGORIES}, "spend": Decimal("0")}
        day += timedelta(days=1)
    for created, category in jobs.exclude(backend=None).values_list("created_at", "backend__category"):
        row = days.get(created.astimezone(dt_timezone.utc).date())
        if row:
            row[category] += 1
    for created, amount in ledger.values_list("created_at", "amount"):
        row = days.get(created.astimezone(dt_timezone.utc).date())
        if row:
            row["spend"] += amount
    return list(days.values())


def as_json(figures: dict) -> dict:
    """The same figures with JSON-friendly types (money as strings, never floats)."""
    def convert(value):
        if isinstance(value, Decimal):
            return str(money(value))
        if isinstance(value, (datetime,)):
            return value.isoformat()
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(figures)
