"""The money: an append-only ledger, spend counters for caps, per-user cap overrides.

Amounts are Decimal USD with 6 places. Ledger rows are never edited or deleted: a correction
is a new row. Caps are enforced on SpendCounter rows with a conditional UPDATE, so concurrent
holds can never overshoot (see billing/ledger.py and billing/caps.py).
"""
from decimal import Decimal

from django.conf import settings
from django.db import models

MONEY = {"max_digits": 14, "decimal_places": 6}
MICROS = 1_000_000


def to_micros(amount: Decimal) -> int:
    return int((Decimal(amount) * MICROS).to_integral_value())


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        HOLD = "hold", "Hold (estimate reserved)"
        RELEASE = "release", "Release of a hold"
        CHARGE = "charge", "Charge (real cost)"
        IDLE = "idle", "Idle pod time (wasted)"
        UNMATCHED = "unmatched", "Paid run no job received (wasted)"
        ADJUSTMENT = "adjustment", "Correction"
        UPKEEP = "upkeep", "Upkeep (a network volume sync pod)"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    amount = models.DecimalField(**MONEY, help_text="USD; a release is negative")
    # One key per economic event ("charge:<attempt>"): the unique index makes a duplicate
    # completion delivery unable to charge twice, whatever the code path.
    key = models.CharField(max_length=120, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                             related_name="ledger_entries")
    job = models.ForeignKey("routing.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger")
    attempt = models.ForeignKey("routing.Attempt", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="ledger")
    backend = models.ForeignKey("routing.Backend", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="ledger")
    category = models.CharField(max_length=10, blank=True, help_text="local / cloud / gemini")
    pod_id = models.CharField(max_length=64, blank=True)
    # The cap periods this amount counts against (those of the hold it belongs to), so a
    # charge after midnight corrects the day the hold was taken, not the new day.
    day = models.DateField()
    month = models.DateField(help_text="First day of the month")
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["user", "kind", "created_at"]), models.Index(fields=["kind", "created_at"])]

    def __str__(self):
        return f"{self.kind} ${self.amount} ({self.key})"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Ledger entries are append-only: add a correction entry instead")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Ledger entries are append-only and cannot be deleted")


class SpendCounter(models.Model):
    """Money counted against one cap in one period: held estimates plus real costs."""

    class Scope(models.TextChoices):
        USER_DAY = "user-day", "User, day"
        USER_MONTH = "user-month", "User, month"
        GLOBAL_MONTH = "global-month", "Installation, month"

    scope = models.CharField(max_length=14, choices=Scope.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    period = models.DateField(help_text="The day, or the first day of the month")
    # Millionths of a dollar, as an integer: the conditional UPDATE compares and adds exactly
    # on every database (SQLite does decimal arithmetic in floating point).
    micros = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "user", "period"], name="counter_unique"),
            models.UniqueConstraint(fields=["scope", "period"], condition=models.Q(user__isnull=True),
                                    name="global_counter_unique"),
        ]

    def __str__(self):
        return f"{self.scope} {self.user_id or 'all'} {self.period}: ${self.amount}"

    @property
    def amount(self) -> Decimal:
        return Decimal(self.micros) / MICROS


class SpendCap(models.Model):
    """Per-user caps; without a row the defaults from settings apply."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="spend_cap")
    daily = models.DecimalField(**MONEY, null=True, blank=True, help_text="Empty: the default")
    monthly = models.DecimalField(**MONEY, null=True, blank=True, help_text="Empty: the default")

    def __str__(self):
        return f"caps of {self.user}"


# The kinds that are money spent (a hold and its release only reserve it).
SPENT_KINDS = (LedgerEntry.Kind.CHARGE, LedgerEntry.Kind.IDLE, LedgerEntry.Kind.UNMATCHED,
               LedgerEntry.Kind.ADJUSTMENT, LedgerEntry.Kind.UPKEEP)
