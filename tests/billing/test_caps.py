"""Spend caps: exact under concurrency (SQLite and PostgreSQL), the periods a hold counts in,
the refusals and what they say, the installation's cap, routing around a capped backend."""
import json
import os
import subprocess
import sys
from decimal import Decimal

import psycopg
import pytest

from billing import caps, ledger
from billing.models import SpendCap
from routing import services
from routing.models import Backend
from tests.billing import cap_race
from tests.billing.conftest import at, attempt_for, counter
from tests.conftest import ROOT

PG_ADMIN_URL = os.environ.get("CAP_RACE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_twenty_concurrent_one_dollar_jobs_against_a_five_dollar_cap_accept_exactly_five_on_sqlite():
    result = cap_race.race(cap_race.seed(20, Decimal("5")))
    assert result["errors"] == []
    assert (result["routed"], result["failed"]) == (5, 15)
    assert result["held"] == "5.000000"
    [message] = result["messages"]
    assert message.startswith("No backend can run this job — ")
    assert ("racecloud: Daily spending limit reached: $5.00 of $5.00 used, resets at 00:00 UTC. "
            "Use your local GPU or try tomorrow.") in message


def _postgres_answers() -> bool:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


def _race_on_postgres(module: str, *args) -> dict:
    """Run a race script (tests/pg_scratch.py) on a scratch PostgreSQL database; its JSON result."""
    if not _postgres_answers():
        pytest.skip(f"no PostgreSQL answers at {PG_ADMIN_URL}")
    env = {**os.environ, "CAP_RACE_ADMIN_URL": PG_ADMIN_URL}
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["vendor"] == "postgresql"
    return result


@pytest.mark.postgres
def test_twenty_concurrent_one_dollar_jobs_against_a_five_dollar_cap_accept_exactly_five_on_postgresql():
    result = _race_on_postgres("tests.billing.cap_race", 20)
    assert result["errors"] == []
    assert (result["routed"], result["failed"], result["held"]) == (5, 15, "5.000000")


@pytest.mark.postgres
def test_forty_submissions_at_once_against_a_limit_of_ten_make_exactly_ten_jobs_on_postgresql():
    result = _race_on_postgres("tests.routing.lock_race", "submit", 40)
    assert result["errors"] == []
    assert (result["created"], result["refused"]) == (10, 30)  # counted, then inserted: 14 got through


@pytest.mark.postgres
def test_a_cancel_racing_the_jobs_completion_never_deadlocks_on_postgresql():
    result = _race_on_postgres("tests.routing.lock_race", "cancel", 70)
    assert result["errors"] == []  # before one lock order: 61 deadlocks in 70 races
    assert sum(result["outcomes"].values()) == 70 and set(result["outcomes"]) <= {"cancelled/cancelled",
                                                                                 "succeeded/succeeded"}
    assert result["inconsistent"] == []  # each job's cost is its user's ledger


@pytest.mark.django_db
def test_a_hold_counts_against_the_day_and_month_it_was_taken_in(alice, paid):
    first = attempt_for(alice, paid, 1)
    assert ledger.hold(attempt=first, amount=Decimal("4"), now=at(2026, 1, 31, 23, 59)) == ""
    second = attempt_for(alice, paid, 1)
    # a new day: the daily cap starts again, the month is new too
    assert ledger.hold(attempt=second, amount=Decimal("4"), now=at(2026, 2, 1, 0, 1)) == ""
    # the first job ends after midnight: its real cost corrects 31 January, not 1 February
    ledger.charge(attempt=first, amount=Decimal("3"), now=at(2026, 2, 1, 0, 2))
    assert counter("user-day", alice, at(2026, 1, 31).date()) == Decimal("3")
    assert counter("user-day", alice, at(2026, 2, 1).date()) == Decimal("4")
    assert counter("user-month", alice, at(2026, 1, 1).date()) == Decimal("3")
    assert counter("user-month", alice, at(2026, 2, 1).date()) == Decimal("4")
    assert counter("global-month", None, at(2026, 2, 1).date()) == Decimal("4")


@pytest.mark.django_db
def test_the_monthly_cap_stops_spending_spread_over_several_days(alice, paid):
    SpendCap.objects.create(user=alice, daily=Decimal("5"), monthly=Decimal("9"))
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("5"), now=at(2026, 3, 1, 12)) == ""
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("4"), now=at(2026, 3, 2, 12)) == ""
    refusal = ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("1"), now=at(2026, 3, 3, 12))
    assert refusal == ("Monthly spending limit reached: $9.00 of $9.00 used, resets on 1 April at 00:00 UTC. "
                       "Use your local GPU or wait until then.")
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("1"), now=at(2026, 4, 1, 0, 0)) == ""


@pytest.mark.django_db
def test_a_refusal_says_how_much_is_left(alice, paid):
    ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("4.5"), now=at(2026, 3, 1, 12))
    refusal = ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("1"), now=at(2026, 3, 1, 13))
    assert refusal == ("Daily spending limit: this job needs about $1.00 but only $0.50 of $5.00 is left, "
                       "resets at 00:00 UTC. Use your local GPU or try tomorrow.")
    assert counter("user-day", alice) == Decimal("4.5")  # the refused hold moved nothing


@pytest.mark.django_db
def test_the_installation_cap_applies_to_everyone(alice, bob, paid, settings):
    settings.GLOBAL_MONTHLY_CAP_USD = Decimal("6")
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("4")) == ""
    refusal = ledger.hold(attempt=attempt_for(bob, paid), amount=Decimal("4"))
    assert refusal.startswith("The installation's monthly spending limit: this needs about $4.00 but only $2.00 "
                              "of $6.00 is left")
    assert caps.cloud_budget_left() == Decimal("2")
    assert ledger.hold(attempt=attempt_for(bob, paid), amount=Decimal("2")) == ""
    assert ledger.hold(attempt=attempt_for(bob, paid), amount=Decimal("1")).startswith(
        "The installation's monthly spending limit is used up: $6.00 of $6.00")


@pytest.mark.django_db
def test_auto_mode_routes_around_a_capped_backend_to_a_free_one(alice, paid, local_backend):
    SpendCap.objects.create(user=alice, daily=Decimal("0.5"))
    Backend.objects.filter(id=local_backend.id).update(queue_depth=99)  # local full: paid is preferred
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="p")
    services.job_route(job_id=job.id)
    job.refresh_from_db()
    # the $1 cloud estimate breaks the $0.50 cap, so the job waits for the free local GPU
    assert job.waiting and "paidcloud" in job.decision and "Daily spending limit" in job.decision["paidcloud"]


@pytest.mark.django_db
def test_ten_dimes_fill_a_one_dollar_cap_exactly(alice, paid):
    # 0.1 has no exact float: the counters count millionths as integers, so the tenth fits
    SpendCap.objects.create(user=alice, daily=Decimal("1.00"))
    for _ in range(10):
        assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("0.10")) == ""
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("0.000001")).startswith("Daily spending limit")
    assert counter("user-day", alice) == Decimal("1")


@pytest.mark.django_db
def test_a_hold_one_cap_refuses_moves_none_of_the_three_counters_and_names_that_cap(alice, paid, settings):
    settings.GLOBAL_MONTHLY_CAP_USD = Decimal("1")
    assert ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("0.75")) == ""
    refusal = ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("0.50"))  # the user's caps have room
    assert refusal.startswith("The installation's monthly spending limit: this needs about $0.50 but only $0.25")
    assert counter("user-day", alice) == counter("user-month", alice) == counter("global-month") == Decimal("0.75")

