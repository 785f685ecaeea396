"""Spend caps: the limits a user's and the installation's spending count against, the counters
that hold what is used of them, and the refusal a user reads when a cap is reached.

A user's spending counts against three counters (the user's day, the user's month, the
installation's month). `take` moves them only while each stays under its cap, one conditional
UPDATE per counter (why that holds under concurrency: billing/ledger.py); `move` adjusts them
without a check (money already spent). Only the ledger moves the counters, each move beside
the entry that explains it; the router reads them here (`Budget`) to price candidates before
it holds anything.
"""
import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from functools import reduce
from operator import or_

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import MICROS, SpendCap, SpendCounter, to_micros

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
            installation_limit(month)]


def installation_limit(month: date) -> Limit:
    """The installation's monthly cap, which every cloud second counts against."""
    return Limit(Scope.GLOBAL_MONTH, None, month, settings.GLOBAL_MONTHLY_CAP_USD)


def used(limit: Limit) -> Decimal:
    row = SpendCounter.objects.filter(scope=limit.scope, user_id=limit.user_id, period=limit.period).first()
    return row.amount if row else Decimal("0")


def counters_of(limits: list[Limit]) -> list[tuple[int | None, Decimal]]:
    """(counter id or None when it does not exist yet, amount used) per limit, in one query."""
    lookups = [Q(scope=limit.scope, user_id=limit.user_id, period=limit.period) for limit in limits]
    rows = {(scope, user_id, period): (counter_id, micros) for counter_id, scope, user_id, period, micros in
            SpendCounter.objects.filter(reduce(or_, lookups)).values_list("id", "scope", "user_id", "period", "micros")}
    found = [rows.get((limit.scope, limit.user_id, limit.period)) for limit in limits]
    return [(row[0], Decimal(row[1]) / MICROS) if row else (None, Decimal("0")) for row in found]


def refusal_for(*, user_id: int, amount: Decimal, now=None) -> str:
    """Read-only pre-check: the message of the first cap this amount would break."""
    return Budget.for_user(user_id, now).refusal(amount)


@dataclass
class Budget:
    """A user's caps and what is used of them, read once (two queries), for pricing many
    candidates; the hold that follows takes from the same counters (`counters`: their ids)."""

    limits: list
    used: list
    counters: list

    @classmethod
    def for_user(cls, user_id: int, now=None) -> "Budget":
        return cls.of(limits_for(user_id, now or timezone.now()))

    @classmethod
    def of(cls, limits: list[Limit]) -> "Budget":
        counters = counters_of(limits)
        return cls(limits=limits, used=[amount for _, amount in counters],
                   counters=[counter_id for counter_id, _ in counters])

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

    def read(self) -> Budget:
        if self._budget is None:
            self._budget = Budget.for_user(self.user_id, self.now)
        return self._budget

    def refusal(self, amount: Decimal) -> str:
        return self.read().refusal(amount)


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


# --- moving the counters (the ledger calls these, beside the entry that explains the move) ---
def take(limits: list[Limit], amount: Decimal, counters: list | None = None) -> None:
    """Add `amount` to the counter of every limit, each only if it stays under its cap; raises
    CapReached (with the refusal) on the first that would not. Run it in a savepoint, so that
    a refusal rolls back the counters already moved: all of them move or none does.
    `counters`: their ids when known (a Budget read them), else found or made here. One
    conditional UPDATE per counter, in the limits' order (the user's day, month, then the
    installation's), the order every writer of the counters locks them in: no deadlock."""
    for limit, counter_id in zip(limits, counters or [None] * len(limits)):
        counter_id = counter_id or _counter(limit).id
        taken = SpendCounter.objects.filter(id=counter_id, micros__lte=to_micros(limit.cap - amount)).update(
            micros=F("micros") + to_micros(amount))
        if not taken:
            raise CapReached(refusal_message(limit, SpendCounter.objects.get(id=counter_id).amount, amount))


def move(*, user_id, day: date, month: date, delta: Decimal) -> None:
    """Adjust counters by a signed amount, without a cap check (the money is real); `user_id`
    None: the installation's counter only."""
    if not delta:
        return
    scopes = [(Scope.GLOBAL_MONTH, None, month)]
    if user_id is not None:
        scopes = [(Scope.USER_DAY, user_id, day), (Scope.USER_MONTH, user_id, month)] + scopes
    for scope, uid, period in scopes:
        counter = _counter(Limit(scope, uid, period, Decimal("0")))
        SpendCounter.objects.filter(id=counter.id).update(micros=F("micros") + to_micros(delta))


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


def cloud_budget_left(now=None) -> Decimal:
    """What the installation may still spend this month (the autoscaler stops at 0)."""
    _, month = periods(now or timezone.now())
    limit = installation_limit(month)
    return max(Decimal("0"), limit.cap - used(limit))


def user_remaining(*, user_id: int, now=None) -> dict:
    now = now or timezone.now()
    day_limit, month_limit, _ = limits_for(user_id, now)
    return {"daily_cap": day_limit.cap, "daily_used": used(day_limit),
            "daily_left": max(Decimal("0"), day_limit.cap - used(day_limit)),
            "monthly_cap": month_limit.cap, "monthly_used": used(month_limit),
            "monthly_left": max(Decimal("0"), month_limit.cap - used(month_limit))}
