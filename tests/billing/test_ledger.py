"""The ledger: one charge per attempt however often its completion is delivered, holds released
and meters extended and given back, idle pod time recorded once, entries that cannot be edited."""
from decimal import Decimal

import pytest

from billing import ledger
from billing.models import LedgerEntry
from routing import services
from routing.models import Attempt, Job, JobStatus
from tests.billing.conftest import at, attempt_for, counter
from workers.clients import Done


@pytest.mark.django_db
def test_a_duplicate_completion_delivery_leaves_one_charge(alice, paid):
    attempt = attempt_for(alice, paid)
    Attempt.objects.filter(id=attempt.id).update(status="running")
    ledger.hold(attempt=attempt, amount=Decimal("1"))

    class NoDownloads:
        def download(self, output):
            raise AssertionError("no outputs here")

    done = Done(outputs=[], seconds=12.5)
    assert services.attempt_succeed(attempt_id=attempt.id, done=done, client=NoDownloads())
    assert not services.attempt_succeed(attempt_id=attempt.id, done=done, client=NoDownloads())
    assert not ledger.charge(attempt=attempt, amount=Decimal("0.5"))
    charges = LedgerEntry.objects.filter(kind="charge")
    assert [c.amount for c in charges] == [Decimal("0.500000")]  # 12.5 s × $0.04
    assert counter("user-day", alice) == Decimal("0.5")
    assert Job.objects.get(id=attempt.job_id).cost == Decimal("0.5")


@pytest.mark.django_db
def test_a_failed_job_releases_its_hold(alice, paid):
    attempt = attempt_for(alice, paid)
    ledger.hold(attempt=attempt, amount=Decimal("1"))
    services.attempt_fail(attempt_id=attempt.id, error="bad workflow", retryable=False)
    services.attempt_fail(attempt_id=attempt.id, error="bad workflow", retryable=False)
    assert sorted(e.kind for e in LedgerEntry.objects.all()) == ["hold", "release"]
    assert counter("user-day", alice) == 0 and ledger.ledger_total() == 0
    assert Job.objects.get(id=attempt.job_id).status == JobStatus.FAILED


@pytest.mark.django_db
def test_ledger_entries_cannot_be_edited_or_deleted(alice, paid):
    attempt = attempt_for(alice, paid)
    ledger.hold(attempt=attempt, amount=Decimal("1"))
    entry = LedgerEntry.objects.get()
    entry.amount = Decimal("0")
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()


@pytest.mark.django_db
def test_the_admin_shows_the_ledger_read_only(admin_client, alice, paid):
    ledger.hold(attempt=attempt_for(alice, paid), amount=Decimal("1"))
    entry = LedgerEntry.objects.get()
    assert admin_client.get("/admin/billing/ledgerentry/").status_code == 200
    assert admin_client.get("/admin/billing/ledgerentry/add/").status_code == 403
    page = admin_client.get(f"/admin/billing/ledgerentry/{entry.id}/change/").content.decode()
    assert 'name="amount"' not in page
    assert admin_client.post(f"/admin/billing/ledgerentry/{entry.id}/delete/", {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.count() == 1


@pytest.mark.django_db
def test_idle_pod_time_is_its_own_entry_once(paid):
    assert ledger.record_idle(key="idle:pod1:1", amount=Decimal("0.12"), backend=paid, pod_id="pod1")
    assert not ledger.record_idle(key="idle:pod1:1", amount=Decimal("0.12"), backend=paid, pod_id="pod1")
    assert ledger.ledger_total(kind="idle") == Decimal("0.12")
    assert counter("global-month") == Decimal("0.12")


def test_a_meter_extends_its_hold_in_the_periods_of_the_first_hold_until_a_cap_refuses(alice, paid, settings):
    settings.DAILY_CAP_USD = Decimal("1.00")
    attempt = attempt_for(alice, paid)
    assert ledger.hold(attempt=attempt, amount=Decimal("0.40"), now=at(2026, 3, 31, 23, 59)) == ""
    assert ledger.extend(attempt=attempt, amount=Decimal("0.50")) == ""  # after midnight: still 31 March
    assert ledger.held(attempt) == Decimal("0.90")
    assert counter("user-day", alice, at(2026, 3, 31).date()) == Decimal("0.90")
    refusal = ledger.extend(attempt=attempt, amount=Decimal("0.20"))
    assert refusal.startswith("Daily spending limit: this job needs about $0.20 but only $0.10")
    assert ledger.held(attempt) == Decimal("0.90")  # a refused extension moves nothing

    assert ledger.charge(attempt=attempt, amount=Decimal("0.85"))  # settles the hold and every extension
    assert counter("user-day", alice, at(2026, 3, 31).date()) == Decimal("0.85")
    assert ledger.ledger_total(user=alice) == Decimal("0.85")
    assert not ledger.release(attempt=attempt)


def test_a_released_meter_gives_back_every_extension(alice, paid):
    attempt = attempt_for(alice, paid)
    ledger.hold(attempt=attempt, amount=Decimal("0.10"))
    ledger.extend(attempt=attempt, amount=Decimal("0.05"))
    ledger.extend(attempt=attempt, amount=Decimal("0.05"))
    assert ledger.release(attempt=attempt)
    assert counter("user-day", alice) == 0 and counter("global-month") == 0
    assert LedgerEntry.objects.get(key=f"release:{attempt.id}").amount == Decimal("-0.20")
