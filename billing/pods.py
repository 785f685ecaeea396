"""What an on-demand pod cost, and who pays which part of it (pure functions; services write rows).

RunPod bills a pod by uptime × its hourly rate, whether or not it runs anything. ComfyUI on a
pod executes one prompt at a time, so the rule is per second of the pod's life:

- a second in which the pod executes a job is that job's: its user is charged for it at the
  pod's rate, like a serverless run (metered against the caps while the job runs, settled when
  it ends: the execution seconds ComfyUI reports on success, the seconds since it started
  running on a cancel or a meter stop);
- every other second (spin-up, jobs only queued on it, idle minutes before the reaper, work
  that failed through the pod's or a backend's fault) served no user: it is the installation's
  idle cost, recorded when the pod ends as uptime cost − the jobs' charges, so the parts add up
  exactly to what RunPod bills.
"""
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .pricing import money


@dataclass
class PodCost:
    uptime_seconds: float
    busy_seconds: float
    uptime_cost: Decimal
    charged: Decimal  # what its jobs were charged
    idle_cost: Decimal


def busy_seconds(intervals: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> float:
    """Length of the union of the intervals, clipped to [start, end]."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if a and b and min(b, end) > max(a, start))
    total, current_start, current_end = 0.0, None, None
    for a, b in clipped:
        if current_end is None or a > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = a, b
        else:
            current_end = max(current_end, b)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def pod_cost(*, cost_per_hour: Decimal, started: datetime, ended: datetime, jobs: list, charged: Decimal) -> PodCost:
    """`jobs`: (start, end) of every job that was in flight on the pod (for its busy time);
    `charged`: the sum of what those jobs' users were charged for its seconds."""
    uptime = max(0.0, (ended - started).total_seconds())
    uptime_cost = money(Decimal(cost_per_hour) * Decimal(str(uptime)) / Decimal(3600))
    charged = money(charged)
    return PodCost(uptime_seconds=uptime, busy_seconds=busy_seconds(jobs, started, ended), uptime_cost=uptime_cost,
                   charged=charged, idle_cost=max(Decimal("0"), uptime_cost - charged))


def pod_price_per_second(cost_per_hour) -> Decimal:
    return Decimal(cost_per_hour or 0) / Decimal(3600)
