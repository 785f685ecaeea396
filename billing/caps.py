"""Spend caps that hold under concurrency, and the ledger entries that move the counters.

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
import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from .models import SPENT_KINDS, LedgerEntry, SpendCap, SpendCounter, to_micros
from .pricing import money

Scope = SpendCounter.Scope

ADVICE_DAY = "Use your local GPU or try tomorrow."
ADVICE_MONTH = "Use your local GPU or wait until then."
ADVICE_GLOBAL = "Ask your administrator to raise it."


class CapReached(Exception):
    pass


@dataclass(frozen=True)
class Limit:
    scope: str
    user_id: int | None
    period: date
    cap: Decimal


def periods(now: datetime) -> tuple[date, date]:
    today = now.astimezone(dt_timezone.utc).date()
    return today, today.replace(day=1)


def user_caps(user_id: int) -> tuple[Decimal, Decimal]:
    row = SpendCap.objects.filter(user_id=user_id).first()
    daily = row.daily if row and row.daily is not None else settings.DAILY_CAP_USD
    monthly = row.monthly if row and row.monthly is not None else settings.MONTHLY_CAP_USD
    return daily, monthly


def limits_for(user_id: int, now: datetime) -> list[Limit]:
    return limits_in(user_id, *periods(now))


def limits_in(user_id: int, day: date, month: date) -> list[Limit]:
    """The three caps a user's spending in these periods counts against."""
    daily, monthly = user_caps(user_id)
    return [Limit(Scope.USER_DAY, user_id, day, daily), Limit(Scope.USER_MONTH, user_id, month, monthly),
            Limit(Scope.GLOBAL_MONTH, None, month, settings.GLOBAL_MONTHLY_CAP_USD)]


def used(limit: Limit) -> Decimal:
    row = SpendCounter.objects.filter(scope=limit.scope, user_id=limit.user_id, period=limit.period).first()
    return row.amount if row else Decimal("0")


def refusal_for(*, user_id: int, amount: Decimal, now=None) -> str:
    """Read-only pre-check: the message of the first cap this amount would break."""
    return Budget.for_user(user_id, now).refusal(amount)


@dataclass
class Budget:
    """A user's caps and what is used of them, read once, for pricing many candidates."""

    limits: list
    used: list

    @classmethod
    def for_user(cls, user_id: int, now=None) -> "Budget":
        limits = limits_for(user_id, now or timezone.now())
        return cls(limits=limits, used=[used(limit) for limit in limits])

    @classmethod
    def lazy(cls, user_id: int, now=None) -> "LazyBudget":
        """The same, read only when a price is first checked: a job whose candidates are all
        free (the local GPU) reads no caps at all."""
        return LazyBudget(user_id, now)

    def refusal(self, amount: Decimal) -> str:
        for limit, spent in zip(self.limits, self.used):
            if spent + amount > limit.cap:
                return refusal_message(limit, spent, amount)
        return ""


class LazyBudget:
    def __init__(self, user_id: int, now=None):
        self.user_id, self.now, self._budget = user_id, now, None

    def refusal(self, amount: Decimal) -> str:
        if self._budget is None:
            self._budget = Budget.for_user(self.user_id, self.now)
        return self._budget.refusal(amount)


def refusal_message(limit: Limit, used_amount: Decimal, amount: Decimal) -> str:
    left = max(Decimal("0"), limit.cap - used_amount)
    if limit.scope == Scope.GLOBAL_MONTH:
        resets = f"resets on {_day_month(_next_month(limit.period))} at 00:00 UTC"
        if left < Decimal("0.005"):
            return (f"The installation's monthly spending limit is used up: ${used_amount:.2f} of ${limit.cap:.2f}, "
                    f"{resets}. {ADVICE_GLOBAL}")
        return (f"The installation's monthly spending limit: this needs about ${amount:.2f} but only ${left:.2f} "
                f"of ${limit.cap:.2f} is left, {resets}. {ADVICE_GLOBAL}")
    name = "Daily" if limit.scope == Scope.USER_DAY else "Monthly"
    resets = "resets at 00:00 UTC" if limit.scope == Scope.USER_DAY else \
        f"resets on {_day_month(_next_month(limit.period))} at 00:00 UTC"
    advice = ADVICE_DAY if limit.scope == Scope.USER_DAY else ADVICE_MONTH
    if left < Decimal("0.005"):
        return f"{name} spending limit reached: ${used_amount:.2f} of ${limit.cap:.2f} used, {resets}. {advice}"
    return (f"{name} spending limit: this job needs about ${amount:.2f} but only ${left:.2f} of "
            f"${limit.cap:.2f} is left, {resets}. {advice}")


def _day_month(day: date) -> str:
    return f"{day.day} {day:%B}"


def _next_month(first: date) -> date:
    return first + timedelta(days=calendar.monthrange(first.year, first.month)[1])


# --- moving money -------------------------------------------------------------------------
def hold(*, attempt, amount: Decimal, now=None) -> str:
    """Reserve `amount` for this attempt against every cap; "" when taken, else the refusal.
    All three counters move or none does (one savepoint)."""
    now = now or timezone.now()
    amount = money(amount)
    job = attempt.job
    try:
        with transaction.atomic():
            for limit in limits_for(job.user_id, now):
                _take(limit, amount)
            day, month = periods(now)
            LedgerEntry.objects.create(
                kind=LedgerEntry.Kind.HOLD, amount=amount, key=f"hold:{attempt.id}", user_id=job.user_id,
                job=job, attempt=attempt, backend_id=attempt.backend_id, category=attempt.backend.category,
                day=day, month=month, note=f"estimate on {attempt.backend.name}")
    except CapReached as refused:
        return str(refused)
    return ""


def _take(limit: Limit, amount: Decimal) -> None:
    counter = _counter(limit)
    taken = SpendCounter.objects.filter(id=counter.id, micros__lte=to_micros(limit.cap - amount)).update(
        micros=F("micros") + to_micros(amount))
    if not taken:
        raise CapReached(refusal_message(limit, SpendCounter.objects.get(id=counter.id).amount, amount))


def _counter(limit: Limit) -> SpendCounter:
    lookup = {"scope": limit.scope, "user_id": limit.user_id, "period": limit.period}
    counter = SpendCounter.objects.filter(**lookup).first()
    if counter:
        return counter
    try:
        with transaction.atomic():  # a savepoint: losing the creation race must not abort the caller
            return SpendCounter.objects.create(**lookup)
    except IntegrityError:
        return SpendCounter.objects.get(**lookup)


def _move(*, user_id, day: date, month: date, delta: Decimal) -> None:
    """Adjust counters by a signed amount, without a cap check (the money is real)."""
    if not delta:
        return
    scopes = [(Scope.GLOBAL_MONTH, None, month)]
    if user_id is not None:
        scopes = [(Scope.USER_DAY, user_id, day), (Scope.USER_MONTH, user_id, month)] + scopes
    for scope, uid, period in scopes:
        counter = _counter(Limit(scope, uid, period, Decimal("0")))
        SpendCounter.objects.filter(id=counter.id).update(micros=F("micros") + to_micros(delta))


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
            for limit in limits:
                _take(limit, amount)
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
    _move(user_id=first.user_id, day=first.day, month=first.month, delta=-amount)
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
    _move(user_id=job.user_id, day=day, month=month, delta=amount - reserved)
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
    _move(user_id=None, day=entry.day, month=entry.month, delta=entry.amount)
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
            _take(Limit(Scope.GLOBAL_MONTH, None, month, settings.GLOBAL_MONTHLY_CAP_USD), amount)
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
    _move(user_id=None, day=first.day, month=first.month, delta=-amount)
    return True


def cloud_budget_left(now=None) -> Decimal:
    """What the installation may still spend this month (the autoscaler stops at 0)."""
    _, month = periods(now or timezone.now())
    limit = Limit(Scope.GLOBAL_MONTH, None, month, settings.GLOBAL_MONTHLY_CAP_USD)
    return max(Decimal("0"), limit.cap - used(limit))


def user_remaining(*, user_id: int, now=None) -> dict:
    now = now or timezone.now()
    day_limit, month_limit, _ = limits_for(user_id, now)
    return {"daily_cap": day_limit.cap, "daily_used": used(day_limit),
            "daily_left": max(Decimal("0"), day_limit.cap - used(day_limit)),
            "monthly_cap": month_limit.cap, "monthly_used": used(month_limit),
            "monthly_left": max(Decimal("0"), month_limit.cap - used(month_limit))}


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
