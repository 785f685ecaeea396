"""`python -m bench.chaos [--jobs 300] [--seed 11] [--fault-rate 0.10] [--out DIR]` (`make chaos`)

The chaos run: a few hundred jobs — image and video, mostly auto with some forced local /
cloud / Gemini, low / normal / high priority, several users (one with a small spending cap),
a few with an invalid workflow — sent to the JSON API of the real web server (gunicorn), real Redis and real Celery workers
(one per queue, plus beat) to the fake ComfyUI (local), fake RunPod (serverless + pods) and
fake Gemini. Each fake sits behind a ChaosProxy (tests/fakes/chaos_proxy.py) that fails the
given share of requests (5xx, hangs, garbage, dropped connections, answers lost after the
work was done, WebSockets cut mid-stream, Google-style 429s), decided on the seed. Meanwhile
the run SIGKILLs a worker of another queue a few times (and starts a replacement), SIGKILLs the
cloud and the Gemini worker inside a paid call (the fake holds its answer until then), kills a
pod's ComfyUI mid-job a few times, and crashes Redis twice: once it comes back from its AOF,
once empty (as a Redis without persistence would). A supervisor restarts any worker or
beat that exits on its own, as systemd does in production (deploy/systemd: Restart=always),
and the report lists those exits.

Then it drives the pod reaper (and reconcile) until RunPod has no pod left, and prints: jobs
submitted / succeeded / failed and why, success rate, failovers, duplicate executions, ledger
vs job costs, pods left running, p50/p95 job time. Figures go to DIR/chaos.json (default
bench/results/); worker logs to DIR/chaos-logs/.

Exit status 1 when a hard invariant breaks: a job not ended, an avoidable failure, a duplicate
execution, a provider-side paid run the ledger does not hold (the fakes' records are the
truth), the ledger not matching the job costs to the cent (or a hold left unsettled), a pod
left running, a capped user charged past the cap plus one poll interval. The success-rate
target (99 % of the jobs that could succeed) is reported as a target.
"""
import argparse
import json
from decimal import Decimal
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.gemini import PAID_ACTIONS  # the calls Google bills

from .chaos_env import JOB_QUEUES, SYSTEM_ENV, World
from .chaos_report import collect, render

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
USERS = {"ada": 0.3, "ben": 0.25, "cleo": 0.2, "dev": 0.17, "penny": 0.08}
CAPPED = {"penny": "0.10"}  # USD a day: her paid jobs hit the cap after a few
PREFERENCES = {"auto": 0.7, "local": 0.1, "cloud": 0.1, "gemini": 0.1}
PRIORITIES = {"low": 0.2, "normal": 0.6, "high": 0.2}
SUBJECTS = ["a lighthouse at dusk", "a red fox in snow", "a city of glass", "an old map of the sea",
            "a bowl of ramen", "a robot reading", "mountains in fog", "a jazz trio", "a paper boat"]
SUCCESS_TARGET = 0.99
CAP_SLACK = Decimal("0.01")
CENT = Decimal("0.01")  # USD: one poll interval of a few running serverless jobs


@dataclass
class Plan:
    index: int
    user: str
    kind: str
    preference: str
    priority: str
    invalid: bool
    body: dict
    job_id: object = None
    submit_error: str = ""
    extra: dict = field(default_factory=dict)


def _quota(rng, n: int, weights: dict) -> list:
    """n values in the given shares exactly (largest remainders), shuffled: a short run has the
    same mix as a long one."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:n - sum(counts.values())]:
        counts[k] += 1
    values = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(values)
    return values


def make_plans(n: int, seed: int) -> dict[int, Plan]:
    rng = random.Random(f"plans|{seed}")
    users, kinds = _quota(rng, n, USERS), _quota(rng, n, {"image": 0.8, "video": 0.2})
    preferences, priorities = _quota(rng, n, PREFERENCES), _quota(rng, n, PRIORITIES)
    # About 2 % invalid workflows (at least one), never for Gemini (which refuses any workflow).
    eligible = [i for i in range(n) if preferences[i] != "gemini"]
    invalids = set(rng.sample(eligible, min(len(eligible), max(1, round(n * 0.02)))))
    plans = {}
    for i in range(n):
        user, kind, preference, priority = users[i], kinds[i], preferences[i], priorities[i]
        invalid = i in invalids
        prompt = f"chaos job #{i:04d}: {rng.choice(SUBJECTS)}"
        body = {"kind": kind, "preference": preference, "priority": priority, "seed": rng.randrange(2**31)}
        if kind == "video":
            body.update(width=832, height=480, duration_seconds=rng.choice((2, 4, 6)))
        if invalid:
            body["workflow"] = _invalid_workflow(prompt)
        else:
            body["prompt"] = prompt
        plans[i] = Plan(i, user, kind, preference, priority, invalid, body)
    return plans


def _invalid_workflow(prompt: str) -> dict:
    """Well-formed JSON in API format, but with a node class no ComfyUI has: the backend's
    validation refuses it, and the job must fail at once with that message."""
    from workers.workflows import build_workflow

    workflow = build_workflow(kind="image", prompt=prompt, negative_prompt="", width=512, height=512, seed=1,
                              duration_seconds=0)
    workflow["3"]["class_type"] = "NoSuchSamplerNode"
    return workflow


# --- the chaos monkey ------------------------------------------------------------------------
class Monkey(threading.Thread):
    """Fires the scheduled faults as the submissions progress: worker kills, pod deaths, a Redis
    crash recovered from its AOF and one that loses all of Redis's data. A pod death waits for a
    pod with a running job (gives up after the run)."""

    def __init__(self, world, schedule, progress, started):
        super().__init__(name="chaos-monkey", daemon=True)
        self.world, self.schedule, self.progress, self.started = world, schedule, progress, started
        self.events, self.stop = [], threading.Event()
        self.rng = random.Random(f"monkey|{world.seed}")
        self.error = None
        self.victims = self.rng.sample(JOB_QUEUES, len(JOB_QUEUES))  # each kill hits another queue's worker
        self.armed = {}  # mid-call kills waiting for their call: what -> (calls seen, since)

    def log(self, what: str, detail: str):
        self.events.append({"t": round(time.monotonic() - self.started, 1), "what": what, "detail": detail})

    def run(self):
        try:
            pending = sorted(self.schedule)
            while pending and not self.stop.is_set():
                due = [event for event in pending if self.progress() >= event[0]]
                for event in due:  # one waiting for its occasion (a pod with a job) holds up no other
                    if self.fire(event[1]):
                        pending.remove(event)
                time.sleep(0.3)
            self.release_holds()
            for at, what in pending:
                self.log(what, "skipped: no occasion before the run ended")
        except Exception as error:  # reported; the run goes on
            self.error = repr(error)
            self.log("monkey error", repr(error))
        finally:
            self.release_holds()
            from django.db import connection

            connection.close()

    def fire(self, what: str) -> bool:
        if what == "kill worker":
            queue = self.victims[0]
            names = sorted(n for n, p in list(self.world.processes.workers.items()) if p.queue == queue)
            if not names:
                return False  # its worker is being restarted by the supervisor: a moment later
            name = names[0]
            process = self.world.processes.kill(name)
            if process is None:
                return False
            self.victims.append(self.victims.pop(0))
            replacement = self.world.processes.start_worker(process.queue)
            self.log(what, f"SIGKILL {name} (queue {process.queue}); replacement {replacement} ready")
            return True
        if what in ("restart redis", "restart redis empty"):
            began = time.monotonic()
            empty = what == "restart redis empty"
            self.world.restart_redis(lose_data=empty)
            how = "empty (its data lost, as without an AOF)" if empty else "from its AOF"
            self.log(what, f"Redis SIGKILLed and restarted {how}, back after {time.monotonic() - began:.1f} s")
            return True
        if what in ("kill during runpod /run", "kill during gemini call"):
            return self._kill_mid_call(what)
        if what == "kill pod":
            from routing.models import Attempt

            running = list(Attempt.objects.filter(backend__name="pods", status__in=("submitted", "running"))
                           .values_list("handle", flat=True))
            live = {pod_id for pod_id, pod in list(self.world.runpod.pods.items()) if pod.comfy is not None}
            candidates = sorted({h.get("pod_id") for h in running if h.get("pod_id") in live})
            if not candidates:
                return False
            pod_id = self.rng.choice(candidates)
            self.world.runpod.kill_comfy(pod_id)
            jobs = sum(1 for h in running if h.get("pod_id") == pod_id)
            self.log(what, f"ComfyUI of pod {pod_id} killed with {jobs} job(s) on it")
            return True
        raise ValueError(what)


    # A kill timed into a paid call: the fake holds its answer (the provider has started the run)
    # until the call's worker is SIGKILLed, so the crash window is hit on purpose, not by luck.
    MID_CALL = {"kill during runpod /run": ("cloud", "runpod"), "kill during gemini call": ("gemini", "gemini")}

    def _kill_mid_call(self, what: str) -> bool:
        queue, provider = self.MID_CALL[what]
        armed = self.armed.get(what)
        if armed is None:  # hold the next answers and remember how many calls had come
            self._hold(provider, True)
            self.armed[what] = (self._paid_calls(provider), time.monotonic())
            return False
        seen, since = armed
        if self._paid_calls(provider) <= seen:
            if time.monotonic() - since > 60:  # no such call came: let the answers go, try later
                self._hold(provider, False)
                del self.armed[what]
            return False
        names = sorted(n for n, p in list(self.world.processes.workers.items()) if p.queue == queue)
        process = self.world.processes.kill(names[0]) if names else None
        self._hold(provider, False)
        del self.armed[what]
        if process is None:
            return False
        replacement = self.world.processes.start_worker(process.queue)
        self.log(what, f"SIGKILL {names[0]} while {provider} had started a paid run and not answered; "
                       f"replacement {replacement} ready")
        return True

    def _paid_calls(self, provider: str) -> int:
        if provider == "runpod":
            return len(self.world.runpod.jobs)
        return sum(1 for r in list(self.world.gemini.requests) if r["action"] in PAID_ACTIONS)

    def _hold(self, provider: str, on: bool):
        if provider == "runpod":
            self.world.runpod.run_answer_delay = 3600 if on else 0.0
        else:
            self.world.gemini.paid_answer_delay = 3600 if on else 0.0

    def release_holds(self):
        for what in list(self.armed):
            self._hold(self.MID_CALL[what][1], False)
        self.armed.clear()


def schedule(n: int, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(f"schedule|{seed}")
    kills, pods = (3, 3) if n >= 100 else (1, 1)
    events = [((k + 1) / (kills + 1) + rng.uniform(-0.07, 0.07), "kill worker") for k in range(kills)]
    events += [((k + 1.5) / (pods + 1.5) + rng.uniform(-0.05, 0.05), "kill pod") for k in range(pods)]
    events.append((0.45 + rng.uniform(-0.05, 0.05), "restart redis"))
    events.append((0.75 + rng.uniform(-0.05, 0.05), "restart redis empty"))
    if n >= 20:  # a handful of jobs may make no such call: the kill would wait for one in vain
        events.append((0.3 + rng.uniform(-0.05, 0.05), "kill during runpod /run"))
        events.append((0.5 + rng.uniform(-0.05, 0.05), "kill during gemini call"))
    return sorted(events)


# --- the run ---------------------------------------------------------------------------------
def submit_all(world, plans: dict, rate: float, progress: dict):
    """POST every plan to the JSON API of the real web server (gunicorn, as `make run` serves it)."""
    import requests

    sessions = {}
    for user, key in world.tokens.items():
        sessions[user] = requests.Session()
        sessions[user].headers["Authorization"] = f"Bearer {key}"
    started = time.monotonic()
    for i, plan in plans.items():
        due = started + i / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        try:
            response = sessions[plan.user].post(f"{world.web_url}/api/jobs", json=plan.body, timeout=30)
        except requests.RequestException as error:
            plan.submit_error = f"{type(error).__name__}: {error}"[:300]
            progress["submitted"] = i + 1
            continue
        if response.status_code == 201:
            plan.job_id = uuid.UUID(response.json()["id"])
        else:
            plan.submit_error = f"HTTP {response.status_code}: {response.content[:300]!r}"
        progress["submitted"] = i + 1


def wait_final(plans: dict, timeout: float, say):
    from routing.models import FINAL_JOB_STATES, Job

    ids = [plan.job_id for plan in plans.values() if plan.job_id]
    deadline, last = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        done = Job.objects.filter(id__in=ids, status__in=FINAL_JOB_STATES).count()
        if done == len(ids):
            return True
        if time.monotonic() - last > 10:
            say(f"  {done}/{len(ids)} jobs final")
            last = time.monotonic()
        time.sleep(0.5)
    return False


def reap_pods(world, timeout: float) -> dict:
    """After the run: play beat's reaper (and reconcile) with `now` an hour ahead until RunPod has
    no pod of ours left, as it would be once the idle limit has passed. Faults stay on."""
    from datetime import timedelta

    from django.utils import timezone

    from workers.pods import services as pods
    from workers.pods.models import RUNNING_REMOTELY, CloudPod, PodStatus

    began, rounds, errors = time.monotonic(), 0, []

    def attempt(call, **kwargs):  # the services meet the same faults here; one that raises is reported
        try:
            call(**kwargs)
        except Exception as error:
            errors.append(f"{call.__name__}: {type(error).__name__}: {error}"[:300])

    while time.monotonic() - began < timeout:
        later = timezone.now() + timedelta(hours=1)
        if not world.runpod.live_pod_ids() and not CloudPod.objects.filter(status__in=RUNNING_REMOTELY).exists():
            break
        rounds += 1
        for pod_id in CloudPod.objects.filter(status=PodStatus.STARTING).values_list("id", flat=True):
            attempt(pods.pod_check, pod_id=pod_id, now=later)  # never became ready: given up at its start timeout
        attempt(pods.pod_reap_idle, now=later)
        attempt(pods.pod_reconcile, now=later)  # pods RunPod runs that we do not track (a lost create answer)
        time.sleep(2)
    return {"rounds": rounds, "seconds": round(time.monotonic() - began, 1), "exceptions": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[1])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--fault-rate", type=float, default=0.10, help="share of proxied requests that fail")
    parser.add_argument("--rate", type=float, default=4.0, help="jobs submitted per second")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the jobs after submitting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and media")
    parser.add_argument("--gemini-latency", type=float, default=0.0,
                        help="seconds the fake Gemini takes to answer (like a real image call: 10-30 s)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for this run (workers and this process), e.g. --set JOB_MAX_ATTEMPTS=4")
    parser.add_argument("--break-ledger", action="store_true",
                        help="add a cent no job spent before checking: proves the run fails on a wrong ledger")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)


    def say(line: str):
        print(line, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = dict(item.split("=", 1) for item in args.set)
    world = World(seed=args.seed, fault_rate=args.fault_rate, out_dir=args.out, keep=args.keep, settings=overrides,
                  gemini_latency=args.gemini_latency)
    monkey = None
    try:
        say(f"chaos: {args.jobs} jobs, seed {args.seed}, {args.fault_rate:.0%} of backend requests fail; "
            f"logs in {world.log_dir}")
        world.start_backends()
        world.start_django()
        world.make_users(USERS, CAPPED)
        plans = make_plans(args.jobs, args.seed)
        world.start_processes()
        say(f"  ready: Redis, 3 fakes behind chaos proxies, {len(world.processes.workers)} workers + beat")
        progress = {"submitted": 0}
        started = time.monotonic()
        monkey = Monkey(world, schedule(args.jobs, args.seed), lambda: progress["submitted"] / args.jobs, started)
        monkey.start()
        submit_all(world, plans, args.rate, progress)
        submitted_at = time.monotonic()
        say(f"  {args.jobs} jobs submitted in {submitted_at - started:.0f} s")
        finished = wait_final(plans, args.timeout or max(120.0, args.jobs * 0.8), say)
        monkey.stop.set()
        monkey.join(120)
        say("  all jobs final; reaping pods" if finished else "  TIMED OUT waiting for the jobs; reaping pods")
        cleanup = reap_pods(world, 120)
        ended = time.monotonic()
        world.processes.stop_all()  # before reading the fakes' counters: nothing runs any more
        if args.break_ledger:
            break_ledger()
        crashes = [{"t": round(c["at"] - started, 1), "what": "process exited on its own, restarted by the supervisor",
                    "detail": f"{c['process']} (exit code {c['exit_code']}): {c['why']}"}
                   for c in world.processes.crashes]
        events = sorted(monkey.events + crashes, key=lambda e: e["t"])
        result = collect(world, plans, started, submitted_at, ended, events, cleanup)
        result["process_crashes"] = len(crashes)
    finally:
        if monkey:
            monkey.stop.set()
        world.close()

    hard = {
        "every job ended": result["jobs"]["not_finished"] == 0,
        "every failure unavoidable": result["failures"]["avoidable"] == 0,
        "no duplicate executions": result["duplicates"]["total"] == 0,
        "every provider-side paid run is in the ledger (the fakes' records)": result["paid_runs"]["unrecorded"] == 0
        and Decimal(result["paid_runs"]["pod_time_unrecorded"]) <= CENT,
        "ledger equals job costs (to the cent), every hold settled":
            result["ledger"]["matches_to_the_cent"] and result["ledger"]["holds_not_settled"] == 0,
        "no pod left running": result["pods"]["left_running"] == 0,
        # Pods are metered like serverless runs (billing/pods.py), so this holds on every backend.
        f"capped users charged no more than their cap plus one poll interval (${CAP_SLACK})":
            all(Decimal(c["over_by"]) <= CAP_SLACK for c in result["caps"]),
    }
    targets = [
        {"what": "success rate of the jobs that could succeed",
         "value": result["success_rate_of_jobs_that_could_succeed"], "target": f">= {SUCCESS_TARGET}",
         "met": result["success_rate_of_jobs_that_could_succeed"] >= SUCCESS_TARGET, "hard": False},
    ] + [{"what": what, "value": ok, "target": "true", "met": ok, "hard": True} for what, ok in hard.items()]
    result = {"name": "chaos", "params": {"jobs": args.jobs, "seed": args.seed, "fault_rate": args.fault_rate,
                                          "rate": args.rate, "gemini_latency": args.gemini_latency,
                                          "settings": {**SYSTEM_ENV, **overrides}},
              **result, "targets": targets,
              "invariants_hold": all(hard.values())}
    path = args.out / "chaos.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    say("== chaos run")
    for line in render(result):
        say(f"   {line}")
    for t in targets:
        say(f"   {'invariant' if t['hard'] else 'target'} {'MET ' if t['met'] else 'MISSED'}  {t['what']}: "
            f"{t['value']} (target {t['target']})")
    say(f"   figures in {path}")
    return 0 if result["invariants_hold"] else 1


def break_ledger():
    """A ledger entry no job accounts for, written straight to the table (no counter moves)."""
    from django.utils import timezone

    from billing.models import LedgerEntry

    today = timezone.now().date()
    LedgerEntry.objects.create(kind=LedgerEntry.Kind.ADJUSTMENT, amount=Decimal("0.01"), key="chaos:broken-ledger",
                               category="cloud", day=today, month=today.replace(day=1), note="--break-ledger")


if __name__ == "__main__":
    sys.exit(main())
