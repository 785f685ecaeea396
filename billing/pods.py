"""What an on-demand pod cost, and how that is split (pure functions; services write rows).

RunPod bills a pod by uptime × its hourly rate, whether or not it ran anything. So:
- uptime cost = (terminated − created) × rate;
- the time with at least one job in flight is busy time; its cost is split over the jobs the
  pod completed, in proportion to each job's own time on the pod;
- everything else (spin-up, idle minutes before the reaper, failed work) served no job and is
  the idle (wasted) cost: uptime cost − the jobs' shares, so the parts always add up exactly.
"""
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .pricing import money


@dataclass
class PodCost:
    uptime_seconds: float
    busy_seconds: float
    uptime_cost: Decimal
    idle_cost: Decimal
    shares: dict = field(default_factory=dict)  # key (attempt id) -> Decimal


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


def pod_cost(*, cost_per_hour: Decimal, started: datetime, ended: datetime,
             jobs: dict, completed: set) -> PodCost:
    """`jobs`: key -> (start, end) of every job that ran on the pod; `completed`: the keys of
    the jobs it finished (only they are charged a share)."""
    uptime = max(0.0, (ended - started).total_seconds())
    uptime_cost = money(Decimal(cost_per_hour) * Decimal(str(uptime)) / Decimal(3600))
    busy = busy_seconds(list(jobs.values()), started, ended)
    busy_cost = money(uptime_cost * Decimal(str(busy / uptime))) if uptime else Decimal("0")
    shares = split(busy_cost, {key: (jobs[key][1] - jobs[key][0]).total_seconds() for key in completed if key in jobs})
    return PodCost(uptime_seconds=uptime, busy_seconds=busy, uptime_cost=uptime_cost,
                   idle_cost=uptime_cost - sum(shares.values(), Decimal("0")), shares=shares)


def split(amount: Decimal, weights: dict) -> dict:
    """`amount` in proportion to the weights, rounded to 6 places, summing exactly to it."""
    if not weights:
        return {}
    weights = {key: max(0.0, weight) for key, weight in weights.items()}
    total = sum(weights.values())
    if total <= 0:
        weights, total = {key: 1.0 for key in weights}, float(len(weights))
    keys = sorted(weights)
    shares = {key: money(amount * Decimal(str(weights[key] / total))) for key in keys[:-1]}
    shares[keys[-1]] = amount - sum(shares.values(), Decimal("0"))
    return shares
