"""What the billing tests share: a paid backend, an attempt on it, a spend counter's amount."""
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

import pytest

from billing.models import SpendCounter
from routing.models import Attempt, Backend, Job


def at(*args):
    return datetime(*args, tzinfo=dt_timezone.utc)


@pytest.fixture
def paid(db):
    return Backend.objects.create(name="paidcloud", kind="comfyui", category="cloud", url="http://127.0.0.1:9",
                                  price_per_second=Decimal("0.04"), expected_image_seconds=25.0)


def attempt_for(user, backend, n=1):
    job = Job.objects.create(user=user, prompt="p")
    return Attempt.objects.create(job=job, backend=backend, number=n)


def counter(scope, user=None, period=None):
    row = SpendCounter.objects.filter(scope=scope, user=user, **({"period": period} if period else {})).first()
    return row.amount if row else Decimal("0")
