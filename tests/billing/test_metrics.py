"""Metrics on a seeded month match figures computed by hand."""
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest

from billing.metrics import as_json, metrics, projected_month
from billing.models import LedgerEntry
from routing.defaults import ensure_default_backends
from routing.models import Attempt, Backend, Job

pytestmark = pytest.mark.django_db

MARCH = datetime(2026, 3, 1, tzinfo=dt_timezone.utc)
NOW = datetime(2026, 3, 16, tzinfo=dt_timezone.utc)  # exactly 15 of March's 31 days gone


def _job(user, backend, status, day, attempts=(), failovers=0):
    job = Job.objects.create(user=user, prompt="p", status=status, backend=backend, failovers=failovers)
    Job.objects.filter(id=job.id).update(created_at=MARCH + timedelta(days=day))
    for number, (on, outcome, seconds) in enumerate(attempts, 1):
        start = MARCH + timedelta(days=day, hours=10)
        Attempt.objects.create(job=job, backend=on, number=number, status=outcome, started_at=start,
                               finished_at=start + timedelta(seconds=seconds))
    return job


def _money(kind, amount, day, user=None, job=None, backend=None, key=""):
    entry = LedgerEntry.objects.create(kind=kind, amount=Decimal(amount), key=key or f"{kind}:{amount}:{day}",
                                       user=user, job=job, backend=backend,
                                       category=backend.category if backend else "cloud",
                                       day=(MARCH + timedelta(days=day)).date(), month=MARCH.date())
    LedgerEntry.objects.filter(id=entry.id).update(created_at=MARCH + timedelta(days=day, hours=12))


@pytest.fixture
def month(alice, bob):
    ensure_default_backends()
    local, runpod, gemini = (Backend.objects.get(name=n) for n in ("local", "runpod", "gemini"))
    _job(alice, local, "succeeded", 0, [(local, "succeeded", 20)])
    _job(alice, local, "succeeded", 1, [(local, "succeeded", 40)])
    moved = _job(alice, runpod, "succeeded", 1, [(local, "failed", 5), (runpod, "succeeded", 30)], failovers=1)
    _money("charge", "0.0093", 1, alice, moved, runpod)
    image = _job(bob, gemini, "succeeded", 2, [(gemini, "succeeded", 10)])
    _money("charge", "0.039", 2, bob, image, gemini)
    _job(bob, gemini, "failed", 3, [(gemini, "failed", 3)])
    _job(alice, None, "cancelled", 4)
    _money("idle", "0.12", 5, key="idle:pod-a")
    _money("unmatched", "0.039", 3, None, None, gemini, key="unmatched:a:poll-1")  # a lost generateContent
    return alice


def test_the_installation_figures_match_the_hand_computed_ones(month):
    figures = metrics(start=MARCH, end=NOW, now=NOW)
    assert figures["jobs"] == {"total": 6, "local": 2, "cloud": 1, "gemini": 2}
    assert figures["avg_seconds"] == {"gemini": 10.0, "local": 30.0, "runpod": 30.0}
    assert figures["spend"] == {"cloud": Decimal("0.129300"), "gemini": Decimal("0.078000"),
                                "idle": Decimal("0.120000"), "unmatched": Decimal("0.039000"),
                                "total": Decimal("0.207300")}
    assert figures["saved"] == Decimal("0.015500")  # 2 local images × RunPod's 25 s × $0.00031
    assert figures["success_rate"] == {"overall": 0.8, "gemini": 0.5, "local": 0.6667, "runpod": 1.0}
    assert figures["failovers"] == 1
    assert figures["pods"]["wasted_idle_cost"] == Decimal("0.120000")
    assert figures["projected_month"] == Decimal("0.428420")  # 0.2073 × 31 / 15


def test_a_users_figures_are_only_theirs(month):
    figures = metrics(start=MARCH, end=NOW, user=month, now=NOW)
    assert figures["jobs"] == {"total": 4, "local": 2, "cloud": 1, "gemini": 0}
    assert figures["spend"]["total"] == Decimal("0.009300") and figures["spend"]["idle"] == 0
    assert projected_month(user=month, now=NOW) == Decimal("0.019220")  # 0.0093 × 31 / 15


def test_the_daily_series_has_one_row_per_day(month):
    days = metrics(start=MARCH, end=NOW, now=NOW)["per_day"]
    assert len(days) == 16 and days[1]["local"] == 1 and days[1]["cloud"] == 1
    assert days[5]["spend"] == Decimal("0.12")


def test_the_json_form_keeps_money_exact(month):
    data = as_json(metrics(start=MARCH, end=NOW, now=NOW))
    assert data["spend"]["total"] == "0.207300" and data["start"] == "2026-03-01T00:00:00+00:00"


def test_the_dashboard_is_for_staff_and_draws_its_charts(admin_client, client, alice, month):
    page = admin_client.get("/admin/metrics/?days=90").content.decode()
    assert "Jobs per day by backend" in page and page.count('<svg class="chart"') == 3
    assert "Flower" in admin_client.get("/admin/").content.decode()
    client.force_login(alice)
    assert client.get("/admin/metrics/").status_code == 302  # to the admin login


def test_the_cost_monitor_shows_the_users_month_and_remaining_caps(alice_client, month):
    page = alice_client.get("/costs/").content.decode()
    assert "Your costs this month" in page and "left</strong> (resets at 00:00 UTC)" in page
    assert page.count('<svg class="chart"') == 2


def test_the_pod_line_counts_the_pods_alive_in_the_period(month):
    from workers.pods.models import CloudPod

    pods = Backend.objects.get(name="pods")
    lives = [(MARCH + timedelta(days=2), MARCH + timedelta(days=2, seconds=600), 4),  # 10 min, 4 jobs
             (MARCH + timedelta(days=9), MARCH + timedelta(days=9, seconds=1800), 2),  # 30 min, 2 jobs
             (MARCH - timedelta(days=3), MARCH - timedelta(days=2), 9)]  # ended before March
    for number, (created, ended, jobs) in enumerate(lives):
        pod = CloudPod.objects.create(backend=pods, name=f"comfy-hybrid-{number}", cost_per_hour=Decimal("0.69"),
                                      status="terminated", terminated_at=ended, jobs_processed=jobs)
        CloudPod.objects.filter(id=pod.id).update(created_at=created)

    line = metrics(start=MARCH, end=NOW, now=NOW)["pods"]

    # (the dashboard said "0 pods" whatever ran: it imported a function that did not exist)
    assert (line["count"], line["avg_uptime_seconds"], line["jobs_per_pod"]) == (2, 1200.0, 3.0)


def test_an_empty_chart_says_so_instead_of_drawing_a_scale():
    from billing import charts

    empty = charts.bars([{"day": "2026-03-01", "spend": Decimal("0")}], "spend", "Spend per day")
    full = charts.bars([{"day": "2026-03-01", "spend": Decimal("0.25")}], "spend", "Spend per day")
    assert "nothing in this period" in empty and "max $" not in empty
    assert "max $0.25" in full
    jobs = charts.stacked_bars([{"day": "d", "local": 2, "cloud": 1, "gemini": 0}], ("local", "cloud", "gemini"), "Jobs")
    assert "max 3<" in jobs  # a count of jobs, not "max 3.00"


def test_the_success_figures_say_what_they_count(admin_client, month):
    page = admin_client.get("/admin/metrics/").content.decode()
    assert "of finished jobs succeeded" in page and "Attempts that succeeded" in page and "per attempt" in page
