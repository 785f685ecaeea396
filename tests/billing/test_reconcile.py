"""manage.py reconcile_spend and the RunPod billing client, against the fake RunPod's billing API."""
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from billing.reconcile import reconcile
from routing.defaults import ensure_default_backends
from tests.fakes.runpod import FakeRunPod
from workers.clients.base import BackendError
from workers.clients.runpod_billing import RunPodBilling

pytestmark = pytest.mark.django_db
NOW = datetime.now(dt_timezone.utc)


@pytest.fixture
def fake(settings):
    with FakeRunPod() as server:
        settings.RUNPOD_API_KEY, settings.RUNPOD_REST_BASE_URL = "test-key", server.rest_url
        settings.RUNPOD_ENDPOINT_ID = ""
        ensure_default_backends()
        yield server


def test_a_pod_runpod_billed_that_we_have_no_row_for_is_a_mismatch_and_the_command_exits_2(fake, capsys):
    orphan = fake.add_orphan_pod()

    report = reconcile(start=NOW - timedelta(hours=1), end=NOW + timedelta(minutes=1))

    [line] = [line for line in report.lines if line.provider == "runpod pods"]
    assert line.what == orphan and line.ledger == 0 and "no row here" in line.note
    with pytest.raises(SystemExit) as exit:
        call_command("reconcile_spend", "--days", "1")
    assert exit.value.code == 2
    out = capsys.readouterr().out
    assert orphan in out and "DIFFERENCES FOUND" in out and "Cloud Billing report" in out


def test_an_untracked_pod_that_reconcile_ended_and_recorded_is_compared_like_the_others(fake, settings):
    from workers.pods.services import pod_reconcile

    settings.RUNPOD_POD_IMAGE, settings.RUNPOD_API_BASE_URL = "img:test", fake.url
    orphan = fake.add_orphan_pod(name="comfy-hybrid-lost")
    fake.pods[orphan].runtime_at -= 3600
    fake.pods[orphan].created = fake.pods[orphan].runtime_at  # RunPod bills from creation

    assert pod_reconcile()["terminated"] == [orphan]
    report = reconcile(start=NOW - timedelta(hours=2), end=NOW + timedelta(minutes=5))

    [line] = [line for line in report.lines if line.provider == "runpod pods"]
    assert line.ledger > 0 and line.clean and report.clean, line


def test_nothing_billed_and_nothing_spent_is_clean(fake, capsys):
    call_command("reconcile_spend", "--json")
    assert '"clean": true' in capsys.readouterr().out


def test_a_billing_api_that_refuses_the_key_is_reported_not_raised(fake, settings):
    settings.RUNPOD_API_KEY = "wrong"

    report = reconcile(start=NOW - timedelta(days=1), end=NOW)

    assert not report.clean and "HTTP 401" in report.errors[0]


def test_the_billing_client_sums_records_by_pod_and_refuses_garbage(fake):
    billing = RunPodBilling(api_key="test-key", base_url=fake.rest_url, timeout=5)
    orphan = fake.add_orphan_pod()
    assert set(billing.pods(NOW - timedelta(hours=1), NOW)) == {orphan}
    assert billing._by([{"podId": "a", "amount": 0.25}, {"podId": "a", "amount": "0.5"}, {"amount": 9}], "podId") == \
        {"a": Decimal("0.75")}
    with pytest.raises(BackendError, match="not a number"):
        billing._by([{"podId": "a", "amount": "lots"}], "podId")


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "not a date"),
    (["--days", "0"], "positive"),
    (["--since", "2026-12-02", "--until", "2026-12-01"], "before"),
])
def test_bad_arguments_are_clear_errors(fake, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("reconcile_spend", *args)


def test_beat_reconciles_yesterday_and_records_its_overhead_only_once_runpods_records_are_in(fake, settings):
    from billing.models import LedgerEntry
    from billing.reconcile import reconcile_yesterday
    from billing.tasks import reconcile_spend
    from workers.schedules import SCHEDULES

    settings.RUNPOD_ENDPOINT_ID = "ep-test"
    fake.jobs["old"] = type("Job", (), {"id": "old", "started": 0.0, "finished": 1000.0, "status": "COMPLETED"})()
    fake.worker_overhead_seconds = 0.0  # 1000 s billed for the endpoint, no job charged for any of it
    today = datetime.now(dt_timezone.utc).date()
    midnight = datetime.combine(today, datetime.min.time(), tzinfo=dt_timezone.utc)

    early = reconcile_yesterday(now=midnight + timedelta(minutes=30))  # RunPod may still be writing records
    assert early.recorded == [] and not early.clean and not early.errors
    later = reconcile_yesterday(now=midnight + timedelta(hours=3))
    yesterday = (midnight - timedelta(days=1)).date()
    assert later.recorded == [(f"runpod-overhead:ep-test:{yesterday}", Decimal("0.31"))] and later.clean
    [entry] = LedgerEntry.objects.filter(kind="idle")
    assert entry.day == yesterday and entry.user_id is None
    assert reconcile_spend.run()["recorded"] == []  # once per day, whoever runs it again
    assert ("RECONCILE_SPEND_SECONDS", "cloud") in {(every, queue) for _, task, every, queue, _ in SCHEDULES
                                                    if task == "billing.tasks.reconcile_spend"}


def test_a_run_recorded_as_unmatched_that_runpod_never_billed_is_corrected_once(fake, settings, alice):
    from billing import ledger
    from billing.models import LedgerEntry, SpendCounter
    from routing.models import Attempt, Backend, Job

    settings.RUNPOD_ENDPOINT_ID = "ep-test"
    runpod = Backend.objects.get(name="runpod")
    attempt = Attempt.objects.create(job=Job.objects.create(user=alice, prompt="x"), backend=runpod, number=1)
    # a /run cut short: it may have started a run, so it was recorded at its estimate; RunPod bills nothing
    ledger.record_unmatched(attempt=attempt, key=f"unmatched:{attempt.id}:submit-1-cut", amount=Decimal("0.05"),
                          note="the connection broke during /run")
    written = LedgerEntry.objects.get(kind="unmatched").created_at.astimezone(dt_timezone.utc).date()
    midnight = datetime.combine(written, datetime.min.time(), tzinfo=dt_timezone.utc)
    day = (midnight, midnight + timedelta(days=1))

    before = reconcile(start=day[0], end=day[1], now=day[1])
    after = reconcile(start=day[0], end=day[1], record=True, now=day[1] + timedelta(hours=3))

    [line] = [line for line in before.lines if line.provider == "runpod serverless"]
    assert line.difference == Decimal("-0.05") and not before.clean
    assert after.recorded == [(f"runpod-correction:ep-test:{written}", Decimal("-0.05"))] and after.clean
    assert ledger.ledger_total() == 0 and LedgerEntry.objects.get(kind="adjustment").user_id is None
    assert SpendCounter.objects.get(scope=SpendCounter.Scope.GLOBAL_MONTH).amount == 0  # the cap gets it back
    assert reconcile(start=day[0], end=day[1], record=True, now=day[1] + timedelta(hours=3)).recorded == []


def test_the_fake_billing_api_refuses_what_runpods_does_and_the_client_asks_it_right(fake):
    import requests

    bad = requests.get(f"{fake.rest_url}/billing/pods", params={"bucketSize": "minute"},
                       headers={"Authorization": "Bearer test-key"}, timeout=5)
    assert bad.status_code == 400 and "bucketSize" in bad.json()["error"]
    RunPodBilling(api_key="test-key", base_url=fake.rest_url, timeout=5).pods(NOW - timedelta(hours=1), NOW)
    query = [path for method, path in fake.received if path.startswith("/v1/billing/pods")]
    assert query  # and it was answered 200: the client's bucket and ISO times pass the gate
