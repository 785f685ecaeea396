"""The money ledger: every LedgerEntry is written here (holds, meters, charges, releases, idle,
upkeep, adjustments, unmatched runs), and the entries are read back here; each write moves the
spend counters of billing/caps.py beside it, in the same transaction.

A hold adds the job's estimated cost to three counters (the user's day, the user's month,
the installation's month) with a conditional UPDATE each:

    UPDATE counter SET amount = amount + x WHERE id = ? AND amount <= cap - x

The database decides, row by row, under its own lock: PostgreSQL re-checks the WHERE after
waiting for a concurrent writer, SQLite runs IMMEDIATE transactions one at a time. So 20
concurrent $1 holds against a $5 cap accept exactly 5. A charge replaces its hold by the real
cost in the periods of the hold; a release gives the hold back.

A per-second backend's hold is a meter: while the attempt runs, each poll extends it to cover
the time used so far plus the time until the next poll (`extend`, the same conditional
UPDATEs). When an extension is refused the remote job is cancelled and the time it used is
charged, so a cap is overshot by at most one poll interval of the running jobs' price.

A pod bills its whole uptime; its jobs are metered for their own seconds (billing/pods.py) and
the rest is the installation's. So each live pod holds, against the installation's monthly cap
only, its uptime so far and until the next look, less what its jobs hold or were charged
(`meter_pod`, every autoscaler pass). The hold is released when the pod ends and its idle time
is recorded instead.
"""
from datetime import date
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from .caps import Budget, CapReached, installation_limit, limits_in, move, periods, take
from .models import SPENT_KINDS, LedgerEntry
from .pricing import money


def hold(*, attempt, amount: Decimal, now=None, budget: Budget | None = None) -> str:
    """Reserve `amount` for this attempt against every cap; "" when taken, else the refusal.
    All three counters move or none does (one savepoint). `budget`: the user's caps as the
    router read them in this transaction (their periods and counters), else read here."""
    now = now or timezone.now()
    amount = money(amount)
    job = attempt.job
    budget = budget or Budget.for_user(job.user_id, now)
    day, month = budget.limits[0].period, budget.limits[1].period
    try:
        with transaction.atomic():
            take(budget.limits, amount, budget.counters)
            LedgerEntry.objects.create(
                kind=LedgerEntry.Kind.HOLD, amount=amount, key=f"hold:{attempt.id}", user_id=job.user_id,
                job=job, attempt=attempt, backend_id=attempt.backend_id, category=attempt.backend.category,
                day=day, month=month, note=f"estimate on {attempt.backend.name}")
    except CapReached as refused:
        return str(refused)
    return ""


def _hold_of(attempt) -> LedgerEntry | None:
    """The attempt's first hold (its periods are the ones every later entry counts against)."""
    return LedgerEntry.objects.filter(key=f"hold:{attempt.id}").first()


def first_hold(attempt) -> Decimal:
    """The attempt's estimate: the amount of its first hold (0 when it took none)."""
    first = _hold_of(attempt)
    return first.amount if first else Decimal("0")


def held(attempt) -> Decimal:
    """What is reserved for this attempt: its hold plus every extension of its meter."""
    return held_by([attempt.id])


def held_by(attempts) -> Decimal:
    """What is reserved for these attempts (a queryset of ids), in one query."""
    total = LedgerEntry.objects.filter(attempt_id__in=attempts, kind=LedgerEntry.Kind.HOLD).aggregate(
        total=Sum("amount"))["total"]
    return total or Decimal("0")


def extend(*, attempt, amount: Decimal) -> str:
    """Reserve `amount` more for a running attempt (its meter), against every cap of the
    periods of its first hold; "" when taken, else the refusal. All counters or none."""
    amount = money(amount)
    first = _hold_of(attempt)
    if first is None or amount <= 0:
        return ""
    limits = limits_in(first.user_id, first.day, first.month)
    extensions = LedgerEntry.objects.filter(attempt_id=attempt.id, kind=LedgerEntry.Kind.HOLD).count()
    try:
        with transaction.atomic():
            take(limits, amount)
            LedgerEntry.objects.create(
                kind=LedgerEntry.Kind.HOLD, amount=amount, key=f"hold:{attempt.id}:+{extensions}",
                user_id=first.user_id, job_id=first.job_id, attempt_id=attempt.id, backend_id=first.backend_id,
                category=first.category, day=first.day, month=first.month, note="meter extended while it runs")
    except (CapReached, IntegrityError) as refused:
        return str(refused) if isinstance(refused, CapReached) else ""
    return ""


def release(*, attempt) -> bool:
    """Give back the attempt's hold (it failed or was cancelled). Once only."""
    first = _hold_of(attempt)
    if first is None or LedgerEntry.objects.filter(key=f"release:{attempt.id}").exists():
        return False
    amount = held(attempt)
    if not _append(kind=LedgerEntry.Kind.RELEASE, amount=-amount, key=f"release:{attempt.id}", like=first,
                   note="attempt ended without a charge"):
        return False
    move(user_id=first.user_id, day=first.day, month=first.month, delta=-amount)
    return True


def charge(*, attempt, amount: Decimal, now=None) -> bool:
    """Charge the real cost once; the hold, if any, is settled into it."""
    amount = money(amount)
    first = _hold_of(attempt)
    if first is None and not amount:
        return False  # free (local) work leaves no ledger rows
    day, month = (first.day, first.month) if first else periods(now or timezone.now())
    job = attempt.job
    entry = LedgerEntry(kind=LedgerEntry.Kind.CHARGE, amount=amount, key=f"charge:{attempt.id}", user_id=job.user_id,
                        job=job, attempt=attempt, backend_id=attempt.backend_id, category=attempt.backend.category,
                        day=day, month=month, note=f"real cost on {attempt.backend.name}")
    if not _insert(entry):
        return False
    reserved = held(attempt) if first else Decimal("0")
    if first and not _append(kind=LedgerEntry.Kind.RELEASE, amount=-reserved, key=f"release:{attempt.id}",
                             like=first, note="hold settled by the charge"):
        reserved = Decimal("0")  # released earlier: the counters no longer hold it
    move(user_id=job.user_id, day=day, month=month, delta=amount - reserved)
    return True


def record_idle(*, key: str, amount: Decimal, backend=None, pod_id: str = "", now=None, note: str = "",
                day: date | None = None) -> bool:
    """Cloud time that served no job (a pod's idle time, serverless workers' cold starts and idle
    timeouts): the installation's wasted money, once per key; `day`: the day it was spent."""
    return _installation_entry(LedgerEntry(kind=LedgerEntry.Kind.IDLE, key=key, backend=backend, pod_id=pod_id,
                                           category="cloud", note=note or "idle pod time"), amount, day, now)


def record_upkeep(*, key: str, amount: Decimal, pod_id: str, note: str, now=None) -> bool:
    """Cloud time spent keeping the installation working (a network volume sync pod): the
    installation's spend, not waste, once per key."""
    return _installation_entry(LedgerEntry(kind=LedgerEntry.Kind.UPKEEP, key=key, pod_id=pod_id, category="cloud",
                                           note=note[:300]), amount, None, now)


def record_adjustment(*, key: str, amount: Decimal, backend, day: date, note: str) -> bool:
    """A correction of the installation's spend from the provider's own records (reconciliation),
    signed, once per key: against the installation's cap only."""
    return _installation_entry(LedgerEntry(kind=LedgerEntry.Kind.ADJUSTMENT, key=key, backend=backend,
                                           category="cloud", note=note[:300]), amount, day, None)


def record_unmatched(*, attempt, key: str, amount: Decimal, note: str, now=None) -> bool:
    """A paid run the provider may have made that no job received (a worker died, or the
    connection dropped, during a call that cannot be found again): the installation's wasted
    money, at the attempt's estimate, against the installation's cap only. Once per key."""
    entry = LedgerEntry(kind=LedgerEntry.Kind.UNMATCHED, key=key, job_id=attempt.job_id, attempt_id=attempt.id,
                        backend_id=attempt.backend_id, category=attempt.backend.category, note=note[:300])
    return _installation_entry(entry, amount, None, now)


def _installation_entry(entry: LedgerEntry, amount: Decimal, day: date | None, now) -> bool:
    """Write an entry no user is charged for (once per key) and move the installation's counter."""
    entry.amount = money(amount)
    entry.day, entry.month = (day, day.replace(day=1)) if day else periods(now or timezone.now())
    if not entry.amount or not _insert(entry):
        return False
    move(user_id=None, day=entry.day, month=entry.month, delta=entry.amount)
    return True


def _pod_hold_key(pod_id) -> str:
    return f"pod-hold:{pod_id}:"


def pod_held(pod_id) -> Decimal:
    total = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.HOLD, key__startswith=_pod_hold_key(pod_id)).aggregate(
        total=Sum("amount"))["total"]
    return total or Decimal("0")


def meter_pod(*, pod, amount: Decimal, now=None) -> str:
    """Hold `amount` more of a live pod's uptime against the installation's monthly cap; "" when
    taken, else the refusal. Keys count up per pod, so a redelivered pass cannot double a step."""
    amount = money(amount)
    if amount <= 0:
        return ""
    now = now or timezone.now()
    day, month = periods(now)
    first = LedgerEntry.objects.filter(key__startswith=_pod_hold_key(pod.id)).order_by("id").first()
    if first is not None:
        day, month = first.day, first.month  # the pod's uptime counts against the month it began in
    steps = LedgerEntry.objects.filter(key__startswith=_pod_hold_key(pod.id)).count()
    try:
        with transaction.atomic():
            take([installation_limit(month)], amount)
            LedgerEntry.objects.create(
                kind=LedgerEntry.Kind.HOLD, amount=amount, key=f"{_pod_hold_key(pod.id)}{steps}", backend=pod.backend,
                pod_id=pod.runpod_id or "", category="cloud", day=day, month=month, note=f"uptime of pod {pod.name}")
    except (CapReached, IntegrityError) as refused:
        return str(refused) if isinstance(refused, CapReached) else ""
    return ""


def release_pod(*, pod) -> bool:
    """The pod ended: give back what its meter held (its idle time is recorded instead). Once."""
    first = LedgerEntry.objects.filter(key__startswith=_pod_hold_key(pod.id)).order_by("id").first()
    if first is None:
        return False
    amount = pod_held(pod.id)
    entry = LedgerEntry(kind=LedgerEntry.Kind.RELEASE, amount=-amount, key=f"pod-release:{pod.id}",
                        backend_id=first.backend_id, pod_id=first.pod_id, category="cloud", day=first.day,
                        month=first.month, note=f"pod {pod.name} ended")
    if not _insert(entry):
        return False
    move(user_id=None, day=first.day, month=first.month, delta=-amount)
    return True


def _append(*, kind, amount, key, like: LedgerEntry, note: str) -> bool:
    return _insert(LedgerEntry(kind=kind, amount=amount, key=key, user_id=like.user_id, job_id=like.job_id,
                               attempt_id=like.attempt_id, backend_id=like.backend_id, category=like.category,
                               day=like.day, month=like.month, note=note))


def _insert(entry: LedgerEntry) -> bool:
    """Insert once: a second entry with the same key is a duplicate delivery, not an error."""
    try:
        with transaction.atomic():
            entry.save()
    except IntegrityError:
        return False
    return True


def ledger_total(**filters) -> Decimal:
    """Money actually spent (charges and idle time) for the given filters."""
    spent = LedgerEntry.objects.filter(kind__in=SPENT_KINDS, **filters)
    return spent.aggregate(total=Sum("amount"))["total"] or Decimal("0")
