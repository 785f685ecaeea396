"""5. Cost policy on traces: our router against cloud-only, local-only, round-robin and the
offline references, on the design's three use cases and a 30-day mixed trace (bench/costtrace.py,
simulated by bench/costsim.py with prices and timings from settings).

Targets are judged on the 30-day trace, on every seed (the worst one): savings against
cloud-only, cost against the feasible offline plan at the same p95 wait (issue 15; the lower
bound, a relaxation no schedule reaches, is reported beside it), and idle pod cost as a share
of the cloud spend.
"""
import os

from . import costbound, costsim, costtrace, harness

NAME = "cost"
TITLE = "cost policy on traces: ours vs cloud-only, local-only, round-robin and an offline bound"
SIZES = {"tiny": {"seeds": [1], "days": 3}, "quick": {"seeds": [1], "days": 30},
         "full": {"seeds": [1, 2, 3], "days": 30}}
TARGET_SAVINGS, TARGET_BOUND, TARGET_IDLE = 0.50, 1.15, 0.10
PROPOSAL = "ours-before"  # the pod estimate before it counted the idle tail, for comparison


def config_from_settings() -> costsim.Config:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django
    from django.conf import settings

    django.setup()  # routing.defaults reads Backend's choices: the app registry must be ready
    from routing.defaults import default_backends

    backends = {b["name"]: b for b in default_backends()}
    expensive = settings.RUNPOD_POD_PRICE_PER_HOUR > settings.RUNPOD_EXPENSIVE_PER_HOUR
    return costsim.Config(
        serverless_per_second=float(settings.RUNPOD_PRICE_PER_SECOND),
        pod_per_hour=float(settings.RUNPOD_POD_PRICE_PER_HOUR), pod_spinup=float(settings.RUNPOD_POD_SPINUP_SECONDS),
        pod_idle=float(settings.RUNPOD_IDLE_SECONDS_EXPENSIVE if expensive else settings.RUNPOD_IDLE_SECONDS),
        reap_every=float(settings.RUNPOD_REAP_SECONDS), autoscale_every=float(settings.RUNPOD_AUTOSCALE_SECONDS),
        pod_wait=float(settings.RUNPOD_POD_WAIT_SECONDS), max_pods=settings.RUNPOD_MAX_PODS,
        pod_max_jobs=settings.RUNPOD_POD_MAX_JOBS, gemini_per_image=float(settings.GEMINI_PRICE_PER_IMAGE),
        gemini_per_video_second=float(settings.GEMINI_PRICE_PER_VIDEO_SECOND),
        local_queue_limit=settings.LOCAL_QUEUE_LIMIT, probe_every=float(settings.HEALTH_PROBE_SECONDS),
        max_attempts=settings.JOB_MAX_ATTEMPTS, warm_window=float(settings.RUNPOD_WARM_WINDOW_SECONDS),
        expected={name: {"image": b["expected_image_seconds"], "video": b["expected_video_seconds"]}
                  for name, b in backends.items()},
        priority={name: b["priority"] for name, b in backends.items()},
    )


def evaluate(config, scenario) -> dict:
    """Every applicable policy on one scenario, the offline references, and the savings."""
    policies = [p for p in costsim.POLICIES if scenario.has_local or p != "local-only"]
    results = {p: costsim.simulate(config, scenario.jobs, p, has_local=scenario.has_local,
                                   local_off=scenario.local_off) for p in policies}
    ours = results["ours"]
    summary = {p: sim.summary() for p, sim in results.items()}
    limits = _limits(ours)
    bound = costbound.lower_bound(config, scenario.jobs, limits, has_local=scenario.has_local,
                                  local_off=scenario.local_off)
    plan = costbound.offline_schedule(config, scenario.jobs, limits, has_local=scenario.has_local,
                                      local_off=scenario.local_off,
                                      seeded={o.job.id for o in ours.outcomes.values() if o.backend == costsim.LOCAL})
    cost = summary["ours"]["total_cost"]
    return {
        "title": scenario.title, "jobs": len(scenario.jobs), "has_local": scenario.has_local,
        "local_off_hours": round(sum(b - a for a, b in scenario.local_off) / 3600, 1),
        "policies": summary,
        "savings_vs": {p: _savings(cost, s["total_cost"]) for p, s in summary.items() if p != "ours"},
        "lower_bound": {**bound, "wait_budget_p95_s": summary["ours"]["p95_wait_s"]},
        "offline_schedule": plan,
        "ratio_to_lower_bound": _ratio(cost, bound["cost"]),
        "ratio_to_offline_schedule": _ratio(cost, plan["cost"]),
    }


def _limits(sim) -> dict:
    """Per job: max(our p95 wait, the wait we gave it) — the offline references' budget."""
    p95 = sim.summary()["p95_wait_s"]
    return {o.job.id: max(p95, 0.0 if o.failed else o.wait) for o in sim.outcomes.values()}


def _savings(ours: float, other: float):
    return round((other - ours) / other, 4) if other else None


def _ratio(ours: float, reference: float):
    if reference <= 0:
        return 1.0 if ours <= 0 else None
    return round(ours / reference, 4)


def run(ctx) -> dict:
    params = SIZES[ctx.size]
    config = config_from_settings()
    runs = {}
    for seed in params["seeds"]:
        for scenario in costtrace.scenarios(seed, params["days"]):
            runs[f"{scenario.name}@seed{seed}"] = evaluate(config, scenario)
    months = [r for key, r in runs.items() if key.startswith("month@")]
    ours, proposal = _month_figures(months, "ours"), _month_figures(months, PROPOSAL)
    savings, idle = ours["savings_vs_cloud_only"], ours["idle_share_of_cloud"]
    bound, plan = ours["ratio_to_lower_bound"], ours["ratio_to_offline_schedule"]
    first, trace = months[0], f"{params['days']}-day trace, worst seed"
    return {
        "params": {**params, "expected_seconds": config.expected,
                   "prices": {k: v for k, v in vars(config).items() if k not in ("expected", "priority")}},
        "figures": {"scenarios": runs, "month_ours": ours, "month_before_idle_tail": proposal},
        "baseline": {name: first["policies"][name] for name in ("cloud-only", "local-only", "round-robin")}
        | {"lower_bound": first["lower_bound"], "offline_schedule": first["offline_schedule"]},
        "ratio": bound, "ratio_meaning": f"our cost ÷ offline lower bound at the same p95 wait ({trace})",
        "targets": [
            harness.target(f"savings vs cloud-only ({trace})", savings, f"≥ {TARGET_SAVINGS:.0%}",
                           savings >= TARGET_SAVINGS),
            harness.target(f"cost ÷ feasible offline plan at the same p95 wait ({trace})", plan,
                           f"≤ {TARGET_BOUND}", plan is not None and plan <= TARGET_BOUND),
            harness.target(f"idle pod cost ÷ cloud spend ({trace})", idle, f"≤ {TARGET_IDLE:.0%}",
                           idle <= TARGET_IDLE),
        ],
        "lines": [line for key, r in runs.items() for line in _lines(key, r)] + [
            f"{trace}: " + SUMMARY.format(**ours), "before the idle tail was priced: " + SUMMARY.format(**proposal)],
    }


SUMMARY = ("saves {savings_vs_cloud_only:.0%} vs cloud-only, idle pods {idle_share_of_cloud:.0%} of cloud spend, "
           "{ratio_to_lower_bound}× the lower bound, {ratio_to_offline_schedule}× the offline plan, "
           "p95 wait ≤ {p95_wait_s} s")


def _month_figures(months: list, policy: str) -> dict:
    """Worst seed of the 30-day trace for one policy: savings, idle share, cost vs the references."""
    def ratio(r, reference):
        return _ratio(r["policies"][policy]["total_cost"], r[reference]["cost"])

    bounds = [ratio(r, "lower_bound") for r in months]
    return {
        "savings_vs_cloud_only": min(_savings(r["policies"][policy]["total_cost"],
                                              r["policies"]["cloud-only"]["total_cost"]) for r in months),
        "idle_share_of_cloud": max(r["policies"][policy]["idle_share_of_cloud"] for r in months),
        "ratio_to_lower_bound": None if None in bounds else max(bounds),
        "ratio_to_offline_schedule": max(ratio(r, "offline_schedule") or 0 for r in months),
        "p95_wait_s": max(r["policies"][policy]["p95_wait_s"] for r in months),
    }


def _lines(key: str, r: dict) -> list:
    off = f", GPU off {r['local_off_hours']} h" if r["has_local"] else ""
    lines = [f"{key}: {r['title']} ({r['jobs']} jobs{off})"]
    ours = r["policies"]["ours"]["total_cost"]
    for policy, s in r["policies"].items():
        save = "" if policy == "ours" else f", ours saves {_pct(r['savings_vs'][policy])}"
        if policy == PROPOSAL:
            change = s["total_cost"] / ours - 1 if ours else 0.0
            save = f" ← before a new pod was priced with its idle tail ({change:+.0%} cost vs ours)"
        lines.append(f"  {policy:<15} ${s['total_cost']:>8.3f}  p95 wait {s['p95_wait_s']:>7.1f} s  idle pods "
                     f"${s['idle_pod_cost']:.3f}  {_mix(s['by_backend'])}{save}")
    lb, plan = r["lower_bound"], r["offline_schedule"]
    lines.append(f"  lower bound ${lb['cost']:.3f} at p95 ≤ {lb['wait_budget_p95_s']:.1f} s → ours ÷ bound "
                 f"{_num(r['ratio_to_lower_bound'])}; offline plan ${plan['cost']:.3f} "
                 f"(p95 {plan['p95_wait_s']:.1f} s, {plan['pod_sessions']} pod sessions) → ours ÷ plan "
                 f"{_num(r['ratio_to_offline_schedule'])}")
    return lines


def _mix(counts: dict) -> str:
    return "/".join(f"{name[0].upper()}{n}" for name, n in counts.items() if n)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
