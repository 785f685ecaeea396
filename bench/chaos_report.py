"""The chaos run's figures, read from the database and from the fakes' own counters.

Definitions (the invariants the run checks):

* duplicate execution: the same attempt executed twice on a backend (a ComfyUI prompt id —
  the attempt id — run more than once, on the local GPU or any pod; more serverless jobs or
  Gemini generations for a job than it had attempts there), or a job with more than one
  succeeded attempt, or with outputs stored from more than one attempt. A job that ran on two
  backends because of a failover is not a duplicate.
* ledger: money spent (charges + idle pod time, billing.ledger.ledger_total) must equal the sum of
  the jobs' costs plus the idle pod time recorded, to the cent; every hold must be settled.
* pods left: pods RunPod (the fake) still runs, or rows that may still be billing.
* unavoidable failure: invalid input (the job was built invalid and failed with the backend's
  validation message), a spending cap reached, or every backend the job may use really down
  (the run never takes a backend fully down, so with no outage every other failure is the
  system's). Everything else is avoidable, and is reported with its cause.
"""
import collections
import json
import re
from decimal import Decimal

from tests.fakes.gemini import PAID_ACTIONS  # the calls Google bills

from .harness import percentile

TAG = re.compile(r"chaos job #(\d+)")
_NOISE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-u1)?|\b[0-9a-z]{14}\b|"
                    r"https?://[^\s)]+|\$[0-9.]+|\d+(\.\d+)?")
CENT = Decimal("0.01")


def normalise(message: str) -> str:
    """A failure message with ids, URLs and numbers blanked, so alike failures group."""
    return _NOISE.sub("#", (message or "(no message)").strip())[:220]


def tag_of(value) -> int | None:
    found = TAG.search(json.dumps(value) if not isinstance(value, str) else value)
    return int(found.group(1)) if found else None


def classify(job, plan) -> tuple[bool, str]:
    """(unavoidable, cause) of a failed job."""
    error = job.error or ""
    if plan.invalid:
        return True, "invalid input"
    if "spending limit" in error:
        return True, "caps reached"
    if "already failed this job" in error:
        return False, "its only allowed backend failed once on a transient fault and was not tried again"
    if "gave up after" in error:
        return False, "attempts exhausted (JOB_MAX_ATTEMPTS) on transient faults"
    if "offline" in error:
        return False, "backend marked down by transient faults"
    if "Timed out" in error:
        return False, "job deadline reached"
    if job.status != "failed":
        return False, f"not finished at the end of the run ({job.status})"
    return False, "other: " + normalise(error)[:120]


_TASK_ERROR = re.compile(r"Task ([\w.]+)\[[0-9a-f-]+\] raised unexpected: (.*)")


def task_exceptions(log_dir) -> dict:
    """Tasks that ended with an exception the code did not handle, grouped (from the worker logs)."""
    found = collections.Counter()
    for log in sorted(log_dir.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            match = _TASK_ERROR.search(line)
            if match:
                found[f"{match.group(1)}: {normalise(match.group(2))[:160]}"] += 1
    return dict(found.most_common())


def collect(world, plans: dict, started: float, finished_submitting: float, ended: float, events: list,
            cleanup: dict) -> dict:
    from django.db.models import Count, Sum

    from billing.ledger import ledger_total
    from billing.models import LedgerEntry
    from routing.models import Attempt, Job, Output
    from workers.pods.models import RUNNING_REMOTELY, CloudPod

    by_id = {plan.job_id: plan for plan in plans.values() if plan.job_id}
    jobs = list(Job.objects.filter(id__in=list(by_id)).select_related("backend"))
    attempts = list(Attempt.objects.filter(job_id__in=list(by_id)).select_related("backend"))
    attempts_of = collections.defaultdict(list)
    for attempt in attempts:
        attempts_of[attempt.job_id].append(attempt)
    statuses = collections.Counter(job.status for job in jobs)
    submitted = len(plans)
    refused_at_submit = [plan for plan in plans.values() if not plan.job_id]

    # --- failures and their causes
    failures, groups, causes = [], collections.Counter(), collections.Counter()
    unavoidable = avoidable = 0
    for job in jobs:
        if job.status == "succeeded":
            continue
        plan = by_id[job.id]
        ok, cause = classify(job, plan)
        unavoidable += ok
        avoidable += not ok
        causes[("unavoidable: " if ok else "AVOIDABLE: ") + cause] += 1
        groups[normalise(job.error or f"(still {job.status})")] += 1
        failures.append({"job": plan.index, "status": job.status, "preference": plan.preference, "kind": plan.kind,
                         "user": plan.user, "unavoidable": ok, "cause": cause, "error": (job.error or "")[:500],
                         "attempts": [f"{a.backend.name}:{a.status}{'(retryable)' if a.retryable else ''}"
                                      for a in sorted(attempts_of[job.id], key=lambda a: a.number)]})
    invalid_succeeded = [by_id[job.id].index for job in jobs if by_id[job.id].invalid and job.status == "succeeded"]
    succeeded = statuses.get("succeeded", 0)
    could_succeed = submitted - sum(1 for f in failures if f["unavoidable"])

    # --- duplicate executions
    dup = {}
    comfy_runs = collections.Counter(world.local.executions)
    for _, comfy in world.runpod.all_comfy:
        comfy_runs.update(comfy.executions)
    attempt_ids = {str(a.id): a for a in attempts}
    dup["comfyui_prompt_run_twice"] = sum(n - 1 for n in comfy_runs.values() if n > 1)
    where = {}  # which duplicates, for the log: job index -> what ran twice
    for pid, n in comfy_runs.items():
        if n > 1:
            servers = ["local" if world.local.executions.get(pid) else ""] + \
                [f"pod {pod_id}" for pod_id, comfy in world.runpod.all_comfy if comfy.executions.get(pid)]
            attempt = attempt_ids.get(pid)
            key = by_id[attempt.job_id].index if attempt else pid
            where[key] = f"prompt {pid} ran {n} times on {', '.join(s for s in servers if s)}"
    unknown_prompts = sorted(pid for pid in comfy_runs if pid not in attempt_ids)
    per_backend_attempts = collections.Counter((by_id[a.job_id].index, a.backend.name) for a in attempts)
    serverless_runs = collections.Counter(tag_of(job.input) for job in list(world.runpod.jobs.values()))
    dup["serverless_runs_beyond_attempts"] = sum(max(0, n - per_backend_attempts[(index, "runpod")])
                                                 for index, n in serverless_runs.items() if index is not None)
    where.update({index: f"{n} serverless runs for {per_backend_attempts[(index, 'runpod')]} attempt(s)"
                  for index, n in serverless_runs.items()
                  if index is not None and n > per_backend_attempts[(index, "runpod")]})
    gemini_runs = collections.Counter(tag_of(r["body"]) for r in list(world.gemini.requests)
                                      if r["action"] in PAID_ACTIONS)
    dup["gemini_runs_beyond_attempts"] = sum(max(0, n - per_backend_attempts[(index, "gemini")])
                                             for index, n in gemini_runs.items() if index is not None)
    where.update({index: f"{n} Gemini generations for {per_backend_attempts[(index, 'gemini')]} attempt(s)"
                  for index, n in gemini_runs.items()
                  if index is not None and n > per_backend_attempts[(index, "gemini")]})
    # Serverless and Gemini calls cannot be found again after a crash mid-call: a second run is
    # not a bug if it is recorded (ledger kind "unmatched"); one that is not is money lost.
    paid_beyond = {"runpod": dup.pop("serverless_runs_beyond_attempts"),
                   "gemini": dup.pop("gemini_runs_beyond_attempts")}
    succeeded_attempts = collections.Counter(a.job_id for a in attempts if a.status == "succeeded")
    dup["jobs_with_two_succeeded_attempts"] = sum(1 for n in succeeded_attempts.values() if n > 1)
    output_sets = Output.objects.filter(job_id__in=list(by_id)).values("job_id").annotate(
        sets=Count("attempt_id", distinct=True))
    dup["jobs_with_two_output_sets"] = sum(1 for row in output_sets if row["sets"] > 1)
    duplicates = sum(dup.values())
    # Remote work of attempts we gave up on: not duplicates, but GPU time (and RunPod money) spent for nothing.
    failed_attempts = {str(a.id) for a in attempts if a.status == "failed"}
    orphans = {"comfyui_prompts_of_failed_attempts": sum(1 for pid in comfy_runs if pid in failed_attempts)}
    handles = {(a.handle or {}).get("job_id"): a for a in attempts if a.backend.name == "runpod"}
    orphans["serverless_jobs_of_failed_or_unknown_attempts"] = sum(
        1 for remote_id, remote in list(world.runpod.jobs.items())
        if remote.status == "COMPLETED" and (remote_id not in handles or handles[remote_id].status != "succeeded"))
    unmatched = list(LedgerEntry.objects.filter(kind="unmatched").select_related("backend"))
    lost_calls = collections.Counter(e.backend.name for e in unmatched if ":failed-run" not in e.key)
    recorded_runs = {e.attempt_id for e in unmatched if ":failed-run" in e.key}
    given_up = sum(1 for remote_id, remote in list(world.runpod.jobs.items())
                   if remote.started is not None and remote_id in handles
                   and handles[remote_id].status == "failed" and handles[remote_id].id not in recorded_runs)
    # Pods: RunPod bills uptime × rate; the ledger holds each pod's jobs' seconds plus its idle
    # time (and untracked pods reconcile ended). Ours starts a moment before RunPod's clock.
    pods_billed = Decimal(str(round(world.runpod.billed_pod_cost(), 6)))
    pods_ledger = ledger_total(backend__kind="pod")
    paid_runs = {"beyond_attempts": paid_beyond, "lost_calls_recorded": dict(lost_calls),
                 "runs_of_failed_attempts_not_recorded": given_up,
                 "pods_billed_by_runpod": str(pods_billed), "pods_in_ledger": str(pods_ledger),
                 "pod_time_unrecorded": str(max(Decimal("0"), pods_billed - pods_ledger)),
                 "unrecorded": given_up + sum(max(0, n - lost_calls[name]) for name, n in paid_beyond.items())}

    # --- money
    ids = list(by_id)
    job_costs = Job.objects.filter(id__in=ids).aggregate(t=Sum("cost"))["t"] or Decimal("0")
    kinds = {row["kind"]: row["t"] for row in LedgerEntry.objects.values("kind").annotate(t=Sum("amount"))}
    charges = kinds.get("charge") or Decimal("0")
    idle = kinds.get("idle") or Decimal("0")
    unmatched = kinds.get("unmatched") or Decimal("0")  # paid runs no job received (the operator's)
    total = ledger_total()
    pod_idle = CloudPod.objects.aggregate(t=Sum("idle_cost"))["t"] or Decimal("0")
    holds = set(LedgerEntry.objects.filter(kind="hold").values_list("attempt_id", flat=True))
    released = set(LedgerEntry.objects.filter(kind="release").values_list("attempt_id", flat=True))
    charged_not_succeeded = LedgerEntry.objects.filter(kind="charge").exclude(job__status="succeeded").count()
    ledger = {
        "ledger_total": str(total), "charges": str(charges), "idle_pod_time": str(idle),
        "sum_of_job_costs": str(job_costs), "pod_idle_cost_on_rows": str(pod_idle),
        "unmatched_runs": str(unmatched),
        "difference": str(total - job_costs - idle - unmatched),
        "matches_to_the_cent": (total.quantize(CENT) == (job_costs + idle + unmatched).quantize(CENT)
                                and charges.quantize(CENT) == job_costs.quantize(CENT)),
        "exact": total == job_costs + idle + unmatched and idle == pod_idle,
        "holds": len(holds), "holds_not_settled": len(holds - released),
        "charges_on_jobs_not_succeeded": charged_not_succeeded,
    }

    # --- caps: what each capped user was charged per day, against the cap
    from billing.models import SpendCap, SpendCounter

    caps = []
    for cap in SpendCap.objects.filter(daily__isnull=False).select_related("user"):
        days = SpendCounter.objects.filter(scope=SpendCounter.Scope.USER_DAY, user=cap.user)
        charged = {str(day): ledger_total(user=cap.user, day=day) for day in days.values_list("period", flat=True)}
        worst = max(charged.values(), default=Decimal("0"))
        caps.append({"user": cap.user.username, "daily_cap": str(cap.daily), "charged_by_day": {
            day: str(amount) for day, amount in charged.items()}, "over_by": str(max(Decimal("0"), worst - cap.daily))})

    # --- pods
    pods = {
        "created_on_runpod": len(world.runpod.all_comfy),
        "rows": CloudPod.objects.count(),
        "left_running_on_runpod": len(world.runpod.live_pod_ids()),
        "rows_still_billing": CloudPod.objects.filter(status__in=RUNNING_REMOTELY).count(),
        "by_status": dict(collections.Counter(CloudPod.objects.values_list("status", flat=True))),
        "terminated_on_runpod": len(world.runpod.terminated),
    }
    pods["left_running"] = pods["left_running_on_runpod"] + pods["rows_still_billing"]

    # --- time and routing
    seconds = [(job.finished_at - job.created_at).total_seconds() for job in jobs
               if job.status == "succeeded" and job.finished_at]
    by_backend = collections.defaultdict(collections.Counter)
    for attempt in attempts:
        by_backend[attempt.backend.name][attempt.status] += 1
    ended_on = collections.Counter(job.backend.name for job in jobs if job.status == "succeeded" and job.backend)
    failovers = sum(job.failovers for job in jobs)

    proxies = {name: proxy.stats() for name, proxy in world.proxies.items()}
    return {
        "jobs": {
            "submitted": submitted, "refused_at_submit": len(refused_at_submit),
            "succeeded": succeeded, "failed": statuses.get("failed", 0), "cancelled": statuses.get("cancelled", 0),
            "not_finished": sum(n for s, n in statuses.items() if s not in ("succeeded", "failed", "cancelled")),
            "by_kind": dict(collections.Counter(p.kind for p in plans.values())),
            "by_preference": dict(collections.Counter(p.preference for p in plans.values())),
            "by_priority": dict(collections.Counter(p.priority for p in plans.values())),
            "by_user": dict(collections.Counter(p.user for p in plans.values())),
            "invalid_input_jobs": sum(1 for p in plans.values() if p.invalid),
            "invalid_input_jobs_that_succeeded": invalid_succeeded,
            "succeeded_on": dict(ended_on),
        },
        "success_rate": round(succeeded / submitted, 4) if submitted else 0.0,
        "success_rate_of_jobs_that_could_succeed": round(succeeded / could_succeed, 4) if could_succeed else 1.0,
        "failures": {"unavoidable": unavoidable, "avoidable": avoidable, "by_cause": dict(causes.most_common()),
                     "by_message": dict(groups.most_common()), "jobs": failures},
        "failovers": {"total": failovers, "jobs_with_a_failover": sum(1 for job in jobs if job.failovers),
                      "attempts": len(attempts),
                      "attempts_by_backend": {name: dict(c) for name, c in sorted(by_backend.items())}},
        "duplicates": {"total": duplicates, **dup, "unknown_prompt_ids": unknown_prompts[:20],
                       "which": {str(k): v for k, v in sorted(where.items(), key=lambda kv: str(kv[0]))}},
        "orphaned_remote_work": orphans,
        "paid_runs": paid_runs,
        "caps": caps,
        "ledger": ledger,
        "pods": pods,
        "job_seconds": {"n": len(seconds), "p50": round(percentile(seconds, 50), 2),
                        "p95": round(percentile(seconds, 95), 2), "max": round(max(seconds), 2) if seconds else None},
        "faults": {"per_request_rate": world.fault_rate, "seed": world.seed, "proxies": proxies,
                   "injected_total": sum(p["fault_total"] for p in proxies.values()),
                   "requests_total": sum(p["requests"] for p in proxies.values()),
                   "events": events},
        "cleanup": cleanup,
        "task_exceptions": task_exceptions(world.log_dir),
        "wall_seconds": {"submitting": round(finished_submitting - started, 1), "total": round(ended - started, 1)},
    }


def render(result: dict) -> list[str]:
    """The human-readable report."""
    j, f, d, l, p, t = (result[k] for k in ("jobs", "failures", "duplicates", "ledger", "pods", "job_seconds"))
    faults = result["faults"]
    lines = [
        f"jobs submitted {j['submitted']}: succeeded {j['succeeded']}, failed {j['failed']}, "
        f"cancelled {j['cancelled']}, not finished {j['not_finished']}"
        + (f", refused at submit {j['refused_at_submit']}" if j["refused_at_submit"] else ""),
        f"  mix: {_fmt(j['by_kind'])}; {_fmt(j['by_preference'])}; priority {_fmt(j['by_priority'])}; "
        f"{len(j['by_user'])} users; {j['invalid_input_jobs']} with invalid input",
        f"  succeeded on: {_fmt(j['succeeded_on'])}",
        f"success rate {result['success_rate']:.2%} of all jobs; "
        f"{result['success_rate_of_jobs_that_could_succeed']:.2%} of the jobs that could succeed "
        f"(excluding invalid input and reached caps)",
        f"failures: {f['unavoidable']} unavoidable, {f['avoidable']} avoidable",
    ]
    lines += [f"  {n:4d} × {cause}" for cause, n in f["by_cause"].items()]
    if f["by_message"]:
        lines.append("  why (messages, grouped):")
        lines += [f"  {n:4d} × {message}" for message, n in f["by_message"].items()]
    fo = result["failovers"]
    lines.append(f"failovers {fo['total']} ({fo['jobs_with_a_failover']} jobs); {fo['attempts']} attempts: "
                 + "; ".join(f"{name} {_fmt(c)}" for name, c in fo["attempts_by_backend"].items()))
    lines.append(f"duplicate executions {d['total']} (prompt run twice {d['comfyui_prompt_run_twice']}, "
                 f"jobs with 2 succeeded attempts {d['jobs_with_two_succeeded_attempts']}, with 2 output sets "
                 f"{d['jobs_with_two_output_sets']})")
    lines += [f"  job #{index}: {what}" for index, what in d["which"].items()]
    pr = result["paid_runs"]
    lines.append(f"paid runs beyond attempts (calls cut short) {_fmt(pr['beyond_attempts'])}, recorded as unmatched "
                 f"{_fmt(pr['lost_calls_recorded'])}; runs of failed attempts not recorded "
                 f"{pr['runs_of_failed_attempts_not_recorded']}; UNRECORDED {pr['unrecorded']}; pods billed by "
                 f"RunPod ${pr['pods_billed_by_runpod']}, in the ledger ${pr['pods_in_ledger']}")
    o = result["orphaned_remote_work"]
    lines.append(f"  remote work of given-up attempts (not duplicates): {o['comfyui_prompts_of_failed_attempts']} "
                 f"ComfyUI prompts, {o['serverless_jobs_of_failed_or_unknown_attempts']} serverless jobs")
    lines.append(f"ledger total ${l['ledger_total']} (charges ${l['charges']} + idle pod time ${l['idle_pod_time']} "
                 f"+ unmatched runs ${l['unmatched_runs']}) "
                 f"vs job costs ${l['sum_of_job_costs']} + idle ${l['pod_idle_cost_on_rows']}: "
                 f"{'match' if l['matches_to_the_cent'] else 'MISMATCH'} (difference ${l['difference']}); "
                 f"holds not settled {l['holds_not_settled']} of {l['holds']}")
    lines += [f"capped user {c['user']}: daily cap ${c['daily_cap']}, charged by day {_fmt(c['charged_by_day'])}, "
              f"over by ${c['over_by']}" for c in result["caps"]]
    lines.append(f"pods: {p['created_on_runpod']} created, left running {p['left_running']} "
                 f"(on RunPod {p['left_running_on_runpod']}, rows still billing {p['rows_still_billing']}); "
                 f"rows {_fmt(p['by_status'])}")
    lines.append(f"job time (succeeded, submit to end): p50 {t['p50']} s, p95 {t['p95']} s, max {t['max']} s")
    lines.append(f"faults injected {faults['injected_total']} in {faults['requests_total']} proxied requests "
                 f"(rate {faults['per_request_rate']}, seed {faults['seed']}): "
                 + "; ".join(f"{name} {_fmt(s['faults'])}" for name, s in faults["proxies"].items()))
    for event in faults["events"]:
        lines.append(f"  t+{event['t']:6.1f}s {event['what']}: {event['detail']}")
    c = result["cleanup"]
    lines.append(f"pod cleanup after the run: {c['rounds']} reaper/reconcile round(s) in {c['seconds']} s"
                 + (f"; exceptions from the pod services: {len(c['exceptions'])}" if c["exceptions"] else ""))
    lines += [f"  {e}" for e in c["exceptions"][:5]]
    if result["task_exceptions"]:
        lines.append("tasks that raised an exception the code does not handle (worker logs):")
        lines += [f"  {n:4d} × {what}" for what, n in result["task_exceptions"].items()]
    lines.append(f"worker/beat processes that died on their own (restarted by the supervisor): "
                 f"{result.get('process_crashes', 0)}")
    lines.append(f"wall time {result['wall_seconds']['total']} s (submitting {result['wall_seconds']['submitting']} s)")
    return lines


def _fmt(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "none"
