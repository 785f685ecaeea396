"""The per-user cost monitor and the staff metrics dashboard."""
from datetime import timedelta

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import mark_safe

from . import caps, charts
from .metrics import metrics
from .selectors import month_start

PERIODS = {"7": 7, "30": 30, "90": 90}


def _days(request) -> int:
    return PERIODS.get(request.GET.get("days", "30"), 30)


def _charts(figures: dict) -> dict:
    days = figures["per_day"]
    spend = figures["spend"]
    return {
        "jobs_chart": mark_safe(charts.stacked_bars(days, ("local", "cloud", "gemini"), "Jobs per day by backend")),
        "spend_chart": mark_safe(charts.bars(days, "spend", "Spend per day")),
        "breakdown_chart": mark_safe(charts.breakdown(
            {"cloud": spend["cloud"] - spend["idle"], "idle": spend["idle"], "gemini": spend["gemini"]},
            "Cost breakdown")),
    }


@login_required
def cost_monitor(request):
    now = timezone.now()
    start = month_start(now)
    figures = metrics(start=start, end=now + timedelta(seconds=1), user=request.user, now=now)
    return render(request, "billing/costs.html", {
        "figures": figures, "remaining": caps.user_remaining(user_id=request.user.id, now=now),
        **_charts(figures),
    })


@staff_member_required
def dashboard(request):
    now = timezone.now()
    days = _days(request)
    figures = metrics(start=now - timedelta(days=days), end=now + timedelta(seconds=1), now=now)
    return render(request, "billing/dashboard.html", {
        **admin.site.each_context(request),
        "figures": figures, "days": days, "periods": PERIODS, "budget_left": caps.cloud_budget_left(now),
        "title": "Metrics", **_charts(figures),
    })
