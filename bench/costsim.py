"""A deterministic discrete-event simulator of where jobs run and what they cost (pure Python:
no database, no HTTP, no clock). Benchmark 5 replays traces through it under several policies.

What it models, from the project's own rules and settings:
- the local GPU runs one prompt at a time (ComfyUI); it is sometimes off. The router learns
  that only through health with hysteresis (beat probes every HEALTH_PROBE_SECONDS, down after 3
  failures in a row, up after 2 successes; a failed attempt counts as a failure). A job sent
  to a GPU that is off fails over at once; jobs on it when it goes off fail over once the
  poll notices (a few seconds);
- RunPod serverless: no capacity limit, a cold start before it runs (not billed), billed per
  execution second at RUNPOD_PRICE_PER_SECOND;
- RunPod pods: the autoscaler (every RUNPOD_AUTOSCALE_SECONDS) spawns pods for jobs waiting for
  one, up to RUNPOD_MAX_PODS, each ready RUNPOD_POD_SPINUP_SECONDS later and billed per second
  of uptime at RUNPOD_POD_PRICE_PER_HOUR; a pod runs its jobs one at a time with at most
  RUNPOD_POD_MAX_JOBS in flight; the reaper (every RUNPOD_REAP_SECONDS) terminates a pod idle
  for RUNPOD_IDLE_SECONDS while keeping it warm pays, else at once (workers/pods/selectors.py
  reap_limit, modelled by `warm_pays`); a job waiting RUNPOD_POD_WAIT_SECONDS for a pod fails
  over. Pod time with no job in flight (spin-up included) is idle cost, as in billing/pods.py;
- Gemini: no capacity limit, priced per image / per Veo second (4, 6 or 8 s).
The "ours" policy calls routing.policy.decide with candidates built the way
routing/selectors.py builds them (marginal cost, learned expected seconds, local queue).

"Wait" is the time from submission to the start of the run that produced the result.
"""
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from routing.policy import Candidate, JobFacts, decide

LOCAL, RUNPOD, PODS, GEMINI = "local", "runpod", "pods", "gemini"
BACKENDS = (LOCAL, RUNPOD, PODS, GEMINI)
IDS = {name: number for number, name in enumerate(BACKENDS, start=1)}
CATEGORY = {LOCAL: "local", RUNPOD: "cloud", PODS: "cloud", GEMINI: "gemini"}
VEO_DURATIONS = (4, 6, 8)
VIDEO_REFERENCE_SECONDS = 5  # expected video times are for a clip of about this length
LEARNING_RATE = 0.2  # routing/services.py _learn_time


@dataclass(frozen=True)
class Config:
    serverless_per_second: float
    pod_per_hour: float
    pod_spinup: float
    pod_idle: float
    reap_every: float
    autoscale_every: float
    pod_wait: float
    max_pods: int
    pod_max_jobs: int
    gemini_per_image: float
    gemini_per_video_second: float
    local_queue_limit: int
    probe_every: float
    max_attempts: int
    expected: dict  # backend -> {"image": seconds, "video": seconds}
    priority: dict  # backend -> priority
    serverless_cold_start: float = 8.0
    warm_window: float = 0.0  # RUNPOD_WARM_WINDOW_SECONDS; 0: idle pods always get pod_idle
    failure_detect: float = 6.0  # polls that fail 3 times in a row (1 + 2 + 3 s back-off)


@dataclass
class Job:
    id: int
    arrival: float
    kind: str = "image"
    duration: int = 0  # seconds of video
    custom: bool = False  # a custom ComfyUI workflow: never Gemini
    user: int = 0
    work: float = 1.0  # this job's size relative to the expected one (known only when it runs)
    preference: str = "auto"


@dataclass
class Outcome:
    job: Job
    backend: str = ""
    start: float = math.nan
    end: float = math.nan
    cost: float = 0.0
    attempts: int = 0
    failed: bool = False
    excluded: set = field(default_factory=set)
    pod_since: float = 0.0  # when it started waiting for a pod

    @property
    def wait(self) -> float:
        return self.start - self.job.arrival


def merged(intervals) -> list:
    """Overlapping off-periods joined (a crash during a night off is still one night off)."""
    result = []
    for start, end in sorted(intervals):
        if result and start <= result[-1][1]:
            result[-1] = (result[-1][0], max(result[-1][1], end))
        else:
            result.append((start, end))
    return result


def veo_seconds(duration: int) -> int:
    return next((d for d in VEO_DURATIONS if d >= max(1, duration)), VEO_DURATIONS[-1])


def run_seconds(config: Config, backend: str, job: Job) -> float:
    """What the job really takes on that backend (the router only knows the expectation)."""
    base = config.expected[backend][job.kind]
    scale = job.duration / VIDEO_REFERENCE_SECONDS if job.kind == "video" else 1.0
    return base * scale * job.work


def paid_price(config: Config, backend: str, job: Job) -> float:
    """Per-job price of the per-use backends (pods are billed by uptime instead)."""
    if backend == GEMINI:
        if job.kind == "video":
            return config.gemini_per_video_second * veo_seconds(job.duration)
        return config.gemini_per_image
    if backend == RUNPOD:
        return config.serverless_per_second * run_seconds(config, RUNPOD, job)
    return 0.0


class Health:
    """routing/health.py: down after 3 failures in a row, up after 2 successes."""

    def __init__(self):
        self.state, self.failures, self.successes = "unknown", 0, 0

    def record(self, ok: bool) -> None:
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= 2 or self.state == "unknown":
                self.state = "up"
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= 3:
                self.state = "down"


class Pod:
    def __init__(self, number: int, created: float, ready_at: float):
        self.number, self.created, self.ready_at = number, created, ready_at
        self.usable, self.terminated = False, None
        self.flight = deque()  # jobs in flight, run one at a time in order
        self.running_since = None
        self.last_end = None
        self.busy = 0.0
        self.busy_since = None


class Simulator:
    """One trace under one policy. `policy(sim, outcome) -> backend | "wait" | None`."""

    def __init__(self, config: Config, jobs: list, policy, *, has_local: bool = True, local_off=(),
                 patient_local: bool = False, idle_in_estimate: bool = False):
        self.config, self.policy, self.has_local = config, policy, has_local
        self.idle_in_estimate = idle_in_estimate  # the proposal: a new pod's estimate includes its idle tail
        self.patient_local = patient_local  # local-only: jobs sit in the GPU's queue while it is off
        self.jobs = sorted(jobs, key=lambda j: (j.arrival, j.id))
        self.outcomes = {job.id: Outcome(job) for job in self.jobs}
        self.expected = {b: dict(kinds) for b, kinds in config.expected.items()}
        self.now, self._events, self._seq = 0.0, [], 0
        self.local_on, self.health = has_local, Health()
        self.local_flight, self.local_running_since, self.admission = deque(), None, []
        self.local_run = 0  # numbers each run, so a run lost to a power-off never "finishes"
        self.pods, self.pending_pod, self.pod_cost, self.idle_cost = [], [], 0.0, 0.0
        self.serverless_cost = self.gemini_cost = 0.0
        self.cloud_attempts = deque()  # (when, kind) of each attempt on serverless or pods, for warm_pays
        self.round_robin = 0
        for start, end in merged(local_off) if has_local else ():
            self._at(start, self._local_goes_off)
            self._at(end, self._local_comes_on)
        for job in self.jobs:
            self._at(job.arrival, self._route, self.outcomes[job.id])

    # --- the event loop -------------------------------------------------------------------
    def _at(self, when: float, action, *args) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action, args))

    def run(self) -> "Simulator":
        horizon = (self.jobs[-1].arrival if self.jobs else 0.0)
        if self.has_local:
            self._at(0.0, self._probe)
        self._at(self.config.autoscale_every, self._autoscale)
        self._at(self.config.reap_every, self._reap)
        while self._events:
            when, _, action, args = heapq.heappop(self._events)
            self.now = when
            if action in (self._probe, self._autoscale, self._reap) and self._finished(horizon):
                continue  # stop the periodic ticks once nothing is left to do
            action(*args)
        return self

    def _finished(self, horizon: float) -> bool:
        return (self.now > horizon and not self.local_flight and not self.admission and not self.pending_pod
                and all(p.terminated is not None for p in self.pods)
                and all(not math.isnan(o.end) or o.failed for o in self.outcomes.values()))

    # --- routing --------------------------------------------------------------------------
    def _route(self, outcome: Outcome) -> None:
        if outcome.attempts >= self.config.max_attempts:
            outcome.failed = True
            return
        choice = self.policy(self, outcome)
        if choice == "wait":
            self.admission.append(outcome)
        elif choice is None:
            outcome.failed = True
        else:
            outcome.attempts += 1
            {LOCAL: self._to_local, RUNPOD: self._to_serverless, PODS: self._to_pods,
             GEMINI: self._to_gemini}[choice](outcome)

    def candidates(self, outcome: Outcome) -> list:
        """routing/selectors.py candidates_for, from the simulator's state."""
        job, result = outcome.job, []
        for name in BACKENDS:
            seconds = self.expected[name][job.kind]
            cost = Decimal("0")
            if name == RUNPOD:
                cost = Decimal(str(self.config.serverless_per_second * seconds))
            elif name == GEMINI:
                cost = Decimal(str(paid_price(self.config, GEMINI, job)))
            elif name == PODS:
                cost, seconds = self.pod_estimate(seconds)
            result.append(Candidate(
                id=IDS[name], name=name, category=CATEGORY[name], configured=name != LOCAL or self.has_local,
                health=self.health.state if name == LOCAL else "up", supports_workflows=name != GEMINI,
                queue=len(self.local_flight) if name == LOCAL else 0, cost=cost.quantize(Decimal("0.000001")),
                seconds=seconds, priority=self.config.priority[name]))
        return result

    def facts(self, outcome: Outcome) -> JobFacts:
        job = outcome.job
        return JobFacts(kind=job.kind, preference=job.preference, custom_workflow=job.custom,
                        excluded=frozenset(IDS[name] for name in outcome.excluded))

    def pod_estimate(self, seconds: float) -> tuple:
        """The pod entry of billing/pricing.py, with the room workers/pods/selectors.py pod_room reads."""
        ready = [p for p in self.pods if p.usable and p.terminated is None]
        starting = [p for p in self.pods if not p.usable and p.terminated is None]
        waiting = len(self.pending_pod)
        if self._room(ready) > waiting:
            return Decimal("0"), seconds
        if self._room(ready) + self._room(starting) > waiting:
            oldest = min(p.created for p in starting)
            return Decimal("0"), seconds + max(0.0, self.config.pod_spinup - (self.now - oldest))
        total = self.config.pod_spinup + seconds
        billed = total + (self.config.pod_idle if self.idle_in_estimate else 0.0)
        return Decimal(str(self.config.pod_per_hour * billed / 3600)), total

    def _room(self, pods) -> int:
        return sum(max(0, self.config.pod_max_jobs - len(p.flight)) for p in pods)

    def _fail_over(self, outcome: Outcome, backend: str, delay: float) -> None:
        outcome.excluded.add(backend)
        self._at(self.now + delay, self._route, outcome)

    def _succeed(self, outcome: Outcome, backend: str, start: float, seconds: float, cost: float) -> None:
        outcome.backend, outcome.start, outcome.end, outcome.cost = backend, start, self.now, cost
        kind = outcome.job.kind
        self.expected[backend][kind] += (seconds - self.expected[backend][kind]) * LEARNING_RATE

    # --- the local GPU --------------------------------------------------------------------
    def _to_local(self, outcome: Outcome) -> None:
        if not self.local_on and not self.patient_local:
            self.health.record(False)  # connection refused: the attempt fails at once
            self._fail_over(outcome, LOCAL, 1.0)
            return
        self.local_flight.append(outcome)
        self._local_next()

    def _local_next(self) -> None:
        if self.local_on and self.local_running_since is None and self.local_flight:
            outcome = self.local_flight[0]
            self.local_running_since, self.local_run = self.now, self.local_run + 1
            seconds = run_seconds(self.config, LOCAL, outcome.job)
            self._at(self.now + seconds, self._local_done, outcome, seconds, self.local_run)

    def _local_done(self, outcome: Outcome, seconds: float, run: int) -> None:
        if run != self.local_run or self.local_running_since is None:
            return  # the GPU went off meanwhile: this run was lost
        self.local_flight.popleft()
        self._succeed(outcome, LOCAL, self.local_running_since, seconds, 0.0)
        self.local_running_since = None
        self.health.record(True)
        self._local_next()
        self._admit()

    def _admit(self) -> None:
        """routing/services.py jobs_admit_waiting: fewest in flight per user, then oldest."""
        while self.admission:
            in_flight = {}
            for o in self.local_flight:
                in_flight[o.job.user] = in_flight.get(o.job.user, 0) + 1
            self.admission.sort(key=lambda o: (in_flight.get(o.job.user, 0), o.job.arrival))
            outcome = self.admission.pop(0)
            before = len(self.admission)
            self._route(outcome)
            if len(self.admission) > before:
                break  # still no room

    def _local_goes_off(self) -> None:
        self.local_on = False
        self.local_run += 1
        if self.patient_local:
            self.local_running_since = None  # the run is lost; it starts again when the GPU is back
            return
        lost, self.local_flight, self.local_running_since = list(self.local_flight), deque(), None
        for outcome in lost:
            self.health.record(False)
            self._fail_over(outcome, LOCAL, self.config.failure_detect)

    def _local_comes_on(self) -> None:
        self.local_on = True
        self._local_next()

    def _probe(self) -> None:
        self.health.record(self.local_on)
        self._admit()
        self._at(self.now + self.config.probe_every, self._probe)

    # --- per-use backends -----------------------------------------------------------------
    def _to_serverless(self, outcome: Outcome) -> None:
        self.cloud_attempts.append((self.now, outcome.job.kind))
        start = self.now + self.config.serverless_cold_start
        seconds = run_seconds(self.config, RUNPOD, outcome.job)
        cost = paid_price(self.config, RUNPOD, outcome.job)
        self.serverless_cost += cost
        self._at(start + seconds, self._succeed, outcome, RUNPOD, start, seconds, cost)

    def _to_gemini(self, outcome: Outcome) -> None:
        seconds = run_seconds(self.config, GEMINI, outcome.job)
        cost = paid_price(self.config, GEMINI, outcome.job)
        self.gemini_cost += cost
        self._at(self.now + seconds, self._succeed, outcome, GEMINI, self.now, seconds, cost)

    # --- pods -----------------------------------------------------------------------------
    def _to_pods(self, outcome: Outcome) -> None:
        self.cloud_attempts.append((self.now, outcome.job.kind))
        outcome.pod_since = self.now
        self.pending_pod.append(outcome)
        self._dispatch_pending()

    def _dispatch_pending(self) -> None:
        """pod_place: least loaded usable pod with room, oldest waiting job first."""
        while self.pending_pod:
            usable = [p for p in self.pods if p.usable and p.terminated is None
                      and len(p.flight) < self.config.pod_max_jobs]
            if not usable:
                return
            pod = min(usable, key=lambda p: (len(p.flight), p.ready_at))
            outcome = self.pending_pod.pop(0)
            if not pod.flight:
                pod.busy_since = self.now
            pod.flight.append(outcome)
            self._pod_next(pod)

    def _pod_next(self, pod: Pod) -> None:
        if pod.running_since is None and pod.flight:
            pod.running_since = self.now
            seconds = run_seconds(self.config, PODS, pod.flight[0].job)
            self._at(self.now + seconds, self._pod_done, pod, seconds)

    def _pod_done(self, pod: Pod, seconds: float) -> None:
        outcome = pod.flight.popleft()
        self._succeed(outcome, PODS, pod.running_since, seconds, 0.0)
        pod.running_since, pod.last_end = None, self.now
        if not pod.flight:
            pod.busy += self.now - pod.busy_since
            pod.busy_since = None
        self._pod_next(pod)

    def _autoscale(self) -> None:
        """workers/pods/services.py autoscale: fail long waits, spawn for the backlog, dispatch."""
        for outcome in [o for o in self.pending_pod if self.now - o.pod_since > self.config.pod_wait]:
            self.pending_pod.remove(outcome)
            self._fail_over(outcome, PODS, 0.0)
        live = [p for p in self.pods if p.terminated is None]
        need = len(self.pending_pod) - self._room(live)
        if need > 0:
            count = min(math.ceil(need / self.config.pod_max_jobs), self.config.max_pods - len(live))
            for _ in range(max(0, count)):
                pod = Pod(len(self.pods) + 1, self.now, self.now + self.config.pod_spinup)
                self.pods.append(pod)
                self._at(pod.ready_at, self._pod_ready, pod)
        self._dispatch_pending()
        self._at(self.now + self.config.autoscale_every, self._autoscale)

    def _pod_ready(self, pod: Pod) -> None:
        pod.usable = True
        self._dispatch_pending()

    def _reap(self) -> None:
        limit = self.config.pod_idle if self.warm_pays() else 0.0
        for pod in self.pods:
            if pod.usable and pod.terminated is None and not pod.flight:
                idle_since = pod.last_end if pod.last_end is not None else pod.ready_at
                if self.now - idle_since > limit:
                    self._terminate(pod)
        self._at(self.now + self.config.reap_every, self._reap)

    def warm_pays(self) -> bool:
        """workers/pods/selectors.py reap_limit: keep idle pods warm while jobs wait for a pod, or
        while the cloud attempts of the last warm_window would have cost at least a pod's price
        over it on serverless (at the serverless expected seconds for their kind)."""
        window = self.config.warm_window
        if not window or self.pending_pod:
            return True
        while self.cloud_attempts and self.cloud_attempts[0][0] <= self.now - window:
            self.cloud_attempts.popleft()  # older than the window: never counted again
        seconds = sum(self.expected[RUNPOD][kind] for _, kind in self.cloud_attempts)
        return seconds * self.config.serverless_per_second >= self.config.pod_per_hour * window / 3600

    def _terminate(self, pod: Pod) -> None:
        pod.terminated = self.now
        uptime = pod.terminated - pod.created
        rate = self.config.pod_per_hour / 3600
        self.pod_cost += uptime * rate
        self.idle_cost += (uptime - pod.busy) * rate

    # --- results --------------------------------------------------------------------------
    def summary(self) -> dict:
        done = [o for o in self.outcomes.values() if not o.failed]
        waits = sorted(o.wait for o in done)
        paid = self.serverless_cost + self.gemini_cost + self.pod_cost
        return {
            "jobs": len(self.outcomes), "failed": sum(o.failed for o in self.outcomes.values()),
            "total_cost": round(paid, 4), "serverless_cost": round(self.serverless_cost, 4),
            "pod_cost": round(self.pod_cost, 4), "gemini_cost": round(self.gemini_cost, 4),
            "idle_pod_cost": round(self.idle_cost, 4),
            "idle_share_of_cloud": round(self.idle_cost / paid, 4) if paid else 0.0,
            "p50_wait_s": round(_pct(waits, 50), 1), "p95_wait_s": round(_pct(waits, 95), 1),
            "max_wait_s": round(waits[-1], 1) if waits else 0.0,
            "by_backend": {b: sum(1 for o in done if o.backend == b) for b in BACKENDS},
            "failovers": sum(max(0, o.attempts - 1) for o in self.outcomes.values()),
            "pods_started": len(self.pods),
        }


def _pct(ordered: list, q: float) -> float:
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- policies -----------------------------------------------------------------------------
def ours(sim: Simulator, outcome: Outcome):
    decision = decide(sim.facts(outcome), sim.candidates(outcome), local_queue_limit=sim.config.local_queue_limit)
    if decision.wait:
        return "wait"
    return BACKENDS[decision.backend_id - 1] if decision.backend_id else None


def cloud_only(sim: Simulator, outcome: Outcome):
    """Everything on RunPod serverless: no GPU of one's own, no Gemini, no pods to manage."""
    return RUNPOD


def local_only(sim: Simulator, outcome: Outcome):
    """Everything on the own GPU, queued however long (and through its off periods)."""
    return LOCAL


def round_robin(sim: Simulator, outcome: Outcome):
    """Turns over every backend that can run the job and is not known to be down."""
    usable = [b for b in BACKENDS if b not in outcome.excluded
              and not (b == GEMINI and outcome.job.custom)
              and not (b == LOCAL and (not sim.has_local or sim.health.state == "down"))]
    if not usable:
        return None
    sim.round_robin += 1
    return usable[sim.round_robin % len(usable)]


# "ours-before" is the shipped policy as it was before a new pod was priced with the idle
# minutes the reaper bills after its last job (RUNPOD_IDLE_SECONDS): kept to show the change.
POLICIES = {"ours": ours, "cloud-only": cloud_only, "local-only": local_only, "round-robin": round_robin,
            "ours-before": ours}


def simulate(config: Config, jobs: list, policy: str, *, has_local: bool, local_off=()) -> Simulator:
    if policy == "local-only" and not has_local:
        raise ValueError("local-only needs a local GPU")
    return Simulator(config, [_copy(job) for job in jobs], POLICIES[policy], has_local=has_local,
                     local_off=local_off, patient_local=policy == "local-only",
                     idle_in_estimate=policy != "ours-before").run()


def _copy(job: Job) -> Job:
    return Job(**vars(job))
