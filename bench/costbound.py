"""Offline references for benchmark 5: what knowing the whole trace in advance could achieve.

Both get the same wait budget as the policy they judge: job j must start within
L_j = max(W, w_j), where W is the policy's p95 wait and w_j the wait the policy gave job j. So
their waits are never worse than the policy's job by job, and their p95 wait is at most W.

- `lower_bound`: a relaxation, so no schedule at that wait can cost less. The local GPU may
  split a job into pieces (preemption) and run fractions of jobs; cloud work costs its
  cheapest conceivable price (serverless execution seconds, Gemini's price, or a pod's rate
  for exactly the seconds it computes: no spin-up, no idle minute). With fractional jobs the
  local GPU's best use is a polymatroid problem, so greedy by saved dollars per GPU second is
  optimal; each step's capacity check is earliest-deadline-first (Glover's rule), exact for
  intervals.
- `offline_schedule`: a real clairvoyant plan (an upper bound on the true optimum): whole
  jobs on the local GPU in its on-periods (greedy by saved dollars per GPU second, kept only if
  a non-preemptive earliest-deadline schedule still meets every start limit), the rest on
  serverless or Gemini, or grouped into pod sessions started ahead so they are ready on
  arrival (spin-up paid, terminated after the last job; dynamic programming over the groups).
The true optimum lies between the two.
"""
import heapq

from .costsim import GEMINI, LOCAL, PODS, RUNPOD, _pct, paid_price, run_seconds

EPS = 1e-9
MAX_SESSION_SECONDS = 6 * 3600


def on_periods(local_off, horizon: float) -> list:
    """The local GPU's on-intervals in [0, horizon], from its (possibly overlapping) off ones."""
    periods, cursor = [], 0.0
    for start, end in sorted(local_off):
        if start > cursor:
            periods.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < horizon:
        periods.append((cursor, horizon))
    return periods


def cloud_floor(config, job) -> float:
    """The least any cloud option could charge for this job (pods at busy time only)."""
    options = [paid_price(config, RUNPOD, job), config.pod_per_hour / 3600 * run_seconds(config, PODS, job)]
    if not job.custom:
        options.append(paid_price(config, GEMINI, job))
    return min(options)


def _windows(config, jobs, limits) -> list:
    """(release, start-by, deadline, local seconds, cloud floor, job) per job."""
    rows = []
    for job in jobs:
        seconds = run_seconds(config, LOCAL, job)
        limit = limits[job.id]
        rows.append((job.arrival, job.arrival + limit, job.arrival + limit + seconds, seconds,
                     cloud_floor(config, job), job))
    return sorted(rows, key=lambda row: row[0])


def _clusters(rows) -> list:
    """Groups whose windows overlap: the GPU's time in one group is no other group's."""
    groups, current, end = [], [], float("-inf")
    for row in rows:
        if current and row[0] >= end:
            groups.append(current)
            current, end = [], float("-inf")
        current.append(row)
        end = max(end, row[2])
    if current:
        groups.append(current)
    return groups


def _clip(periods, start: float, end: float) -> list:
    return [(max(a, start), min(b, end)) for a, b in periods if b > start and a < end]


def max_volume(items, periods) -> float:
    """Most GPU seconds the items can get, preemptively, each within [release, deadline] and
    up to its amount: earliest deadline first over the on-periods (optimal for intervals)."""
    times = sorted({t for item in items for t in (item[0], item[1])} | {t for p in periods for t in p})
    items = sorted(items)
    remaining = [item[2] for item in items]
    heap, total, index = [], 0.0, 0
    for t0, t1 in zip(times, times[1:]):
        while index < len(items) and items[index][0] <= t0 + EPS:
            heapq.heappush(heap, (items[index][1], index))
            index += 1
        capacity = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in periods)
        while capacity > EPS and heap:
            deadline, k = heap[0]
            if deadline <= t0 + EPS or remaining[k] <= EPS:
                heapq.heappop(heap)
                continue
            use = min(capacity, remaining[k])
            remaining[k] -= use
            total += use
            capacity -= use
    return total


def lower_bound(config, jobs, limits, *, has_local: bool, local_off=()) -> dict:
    rows = _windows(config, jobs, limits)
    floor = sum(row[4] for row in rows)
    saved, local_seconds = 0.0, 0.0
    if has_local and rows:
        periods = on_periods(local_off, max(row[2] for row in rows) + 1)
        for group in _clusters(rows):
            group_periods = _clip(periods, group[0][0], max(row[2] for row in group))
            chosen, volume = [], 0.0
            for row in sorted(group, key=lambda r: -r[4] / r[3]):  # dollars saved per GPU second
                bigger = max_volume(chosen + [(row[0], row[2], row[3])], group_periods)
                if bigger - volume > EPS:
                    saved += (bigger - volume) * row[4] / row[3]
                    local_seconds += bigger - volume
                    chosen.append((row[0], row[2], row[3]))
                    volume = bigger
    return {"cost": round(max(0.0, floor - saved), 4), "cloud_floor_everything": round(floor, 4),
            "local_gpu_seconds": round(local_seconds, 1)}


# --- a real offline plan --------------------------------------------------------------------
def _non_preemptive(rows, periods):
    """Start times of a non-preemptive earliest-start-by-first schedule, or None if a job would
    start after its limit (a run must fit inside one on-period)."""
    pending, ready, starts, t = sorted(rows, key=lambda r: r[0]), [], {}, float("-inf")
    index = 0
    while index < len(pending) or ready:
        if not ready:
            t = max(t, pending[index][0])
        while index < len(pending) and pending[index][0] <= t + EPS:
            heapq.heappush(ready, (pending[index][1], index))
            index += 1
        start_by, k = heapq.heappop(ready)
        row = pending[k]
        start = _fit(max(t, row[0]), row[3], periods)
        if start is None or start > start_by + EPS:
            return None
        starts[row[5].id] = start
        t = start + row[3]
    return starts


def _fit(earliest: float, seconds: float, periods):
    for a, b in periods:
        start = max(a, earliest)
        if start + seconds <= b + EPS:
            return start
    return None


def _single(config, job) -> tuple:
    """The cheapest per-use cloud option for one job: (cost, wait)."""
    options = [(paid_price(config, RUNPOD, job), config.serverless_cold_start)]
    if not job.custom:
        options.append((paid_price(config, GEMINI, job), 0.0))
    return min(options)


def _cloud_plan(config, cloud_jobs, limits) -> tuple:
    """Per-use options or pod sessions over consecutive jobs, whichever is cheaper: (cost, waits, sessions)."""
    jobs = sorted(cloud_jobs, key=lambda j: j.arrival)
    n, rate = len(jobs), config.pod_per_hour / 3600
    best = [(0.0, [], 0)] + [None] * n  # best[i]: cheapest plan for the first i jobs
    for k in range(n):  # best[k] is final here: every way into it starts before k
        cost, wait = _single(config, jobs[k])
        _keep(best, k + 1, (best[k][0] + cost, best[k][1] + [wait], best[k][2]))
        end, waits = jobs[k].arrival, []  # a session starting with job k, ready at its arrival
        for i in range(k, n):
            job = jobs[i]
            start = max(job.arrival, end)
            if start - job.arrival > limits[job.id] + EPS or start - jobs[k].arrival > MAX_SESSION_SECONDS:
                break
            end = start + run_seconds(config, PODS, job)
            waits.append(start - job.arrival)
            session = rate * (config.pod_spinup + end - jobs[k].arrival)
            _keep(best, i + 1, (best[k][0] + session, best[k][1] + waits, best[k][2] + 1))
    return best[n]


def _keep(best, index, plan) -> None:
    if best[index] is None or plan[0] < best[index][0] - EPS:
        best[index] = plan


def _in_order(rows, periods):
    """Start times when the GPU takes the jobs in arrival order (ComfyUI's queue), or None."""
    starts, t = {}, float("-inf")
    for row in sorted(rows, key=lambda r: (r[0], r[5].id)):
        start = _fit(max(t, row[0]), row[3], periods)
        if start is None or start > row[1] + EPS:
            return None
        starts[row[5].id] = start
        t = start + row[3]
    return starts


def _feasible(rows, periods):
    return _non_preemptive(rows, periods) or _in_order(rows, periods)


def _local_plan(rows, periods, seeded: set) -> dict:
    """Job id -> start on the local GPU: the seeded jobs first (if they fit together), then
    every other job that still fits, by dollars saved per GPU second."""
    chosen = [row for row in rows if row[5].id in seeded]
    starts = _feasible(chosen, periods) if chosen else {}
    if starts is None:
        chosen, starts = [], {}
    for row in sorted((r for r in rows if r[5].id not in seeded), key=lambda r: -r[4] / r[3]):
        trial = _feasible(chosen + [row], periods)
        if trial is not None:
            chosen.append(row)
            starts = trial
    return starts


def offline_schedule(config, jobs, limits, *, has_local: bool, local_off=(), seeded=frozenset()) -> dict:
    """The cheaper of two clairvoyant plans: local jobs chosen greedily from scratch, or
    starting from `seeded` (the judged policy's own local jobs, so the plan can keep them)."""
    plans = [_offline(config, jobs, limits, has_local, local_off, frozenset())]
    if seeded:
        plans.append(_offline(config, jobs, limits, has_local, local_off, seeded))
    return min(plans, key=lambda plan: plan["cost"])


def _offline(config, jobs, limits, has_local, local_off, seeded) -> dict:
    rows = _windows(config, jobs, limits)
    local_waits, local_ids = [], set()
    if has_local and rows:
        periods = on_periods(local_off, max(row[2] for row in rows) + 1)
        for group in _clusters(rows):
            group_periods = _clip(periods, group[0][0], max(row[2] for row in group) + 1)
            starts = _local_plan(group, group_periods, seeded)
            local_ids |= set(starts)
            local_waits += [starts[row[5].id] - row[0] for row in group if row[5].id in starts]
    cost, cloud_waits, sessions = _cloud_plan(config, [j for j in jobs if j.id not in local_ids], limits)
    waits = sorted(local_waits + cloud_waits)
    return {"cost": round(cost, 4), "p95_wait_s": round(_pct(waits, 95), 1), "local_jobs": len(local_ids),
            "pod_sessions": sessions}
