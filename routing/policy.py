"""The routing decision: a pure function (no database, no HTTP). Callers build the inputs.

Rules, in order (DESIGN.md, Routing):
- A candidate must be enabled, configured, not down, able to run this job (a custom
  workflow never goes to Gemini; video only where video is supported), not already failed
  for this job, and within the user's spend caps.
- A ComfyUI backend must hold every model file and node class the job's workflow needs, by
  its inventory; one that lacks any is refused with what it lacks and how to get it. An
  unknown inventory (never read, nothing declared) refuses nothing: the backend's own answer
  decides, and a stale inventory is corrected by the caller.
- A backend that lost this job's attempt to an outage (unreachable, timeout, 5xx) is not
  tried again until it has answered since; until then, like a down backend, it is a reason
  to wait, not a failure.
- A forced preference (local / cloud / gemini) keeps only that category.
- Local wins when it is usable and its queue (remote queue + our in-flight jobs) is below
  the limit. Among several local GPUs with room (a fleet), the one that would finish the job
  first: (its queue + 1) × the run time learned on it, so a GPU twice as fast takes twice the
  work, and each backend's queue stays under the limit.
- In a fleet the limit is also a horizon of work: a GPU's queue may hold at most as many
  seconds as `limit` jobs take on the fastest usable GPU (an idle GPU always has room). A GPU
  three times slower queues a third as many jobs, so a burst ends on every GPU at about the
  same time instead of on the slow one's long queue while the fast ones idle. A GPU always has
  room for the job it runs and one behind it, so it never idles while the next is routed.
- Otherwise the cheapest option by marginal cost wins (an idle running pod costs nothing
  extra, then serverless, then a new pod), compared with Gemini's price; ties go to the
  faster expected time, then to a healthy (not just unknown) backend, then to priority.
- When the only usable backend is a local one whose queue is full, the job waits (no
  backend now, `wait` set): it is admitted later in fair order, so one user's burst cannot
  fill the GPU's queue ahead of everyone else.
- A backend that already failed this job is used again only when nothing else can run it
  (a forced preference, or the only backend up): a transient fault then costs one more try,
  not the job. Attempts stay bounded by the caller (JOB_MAX_ATTEMPTS).
- Nothing left, but a down backend (or one that lost the job in an outage) could run it: the
  job waits for it (`waiting_for` "outage"); the caller bounds the wait.
- Nothing left and nothing that could ever run it: no backend, and one clear reason per
  candidate.
"""
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Optional

from workers.workflows.requirements import Inventory, Requirements, describe

WAIT_GPU, WAIT_OUTAGE = "gpu", "outage"


@dataclass(frozen=True)
class JobFacts:
    kind: str  # "image" | "video"
    preference: str  # "auto" | "local" | "cloud" | "gemini"
    custom_workflow: bool
    excluded: frozenset = frozenset()  # backend ids that already failed this job
    requires: Requirements = Requirements()  # model files and node classes its workflow needs
    lost: frozenset = frozenset()  # backend ids that lost it to an outage and have not answered since


@dataclass(frozen=True)
class Candidate:
    id: int
    name: str
    category: str  # "local" | "cloud" | "gemini"
    enabled: bool = True
    configured: bool = True
    missing: str = ""  # what configuration is missing, for the reason
    health: str = "up"  # "up" | "down" | "unknown"
    health_detail: str = ""
    supports_video: bool = True
    supports_workflows: bool = True
    queue: int = 0  # remote queue + our jobs in flight there
    cost: Decimal = Decimal("0")  # marginal cost of this job there
    seconds: float = 0.0  # expected run time
    cap_refusal: str = ""  # non-empty when the user's caps forbid this backend
    priority: int = 0
    inventory: Optional[Inventory] = None  # ComfyUI backends: what it has; None = not known
    install_hint: str = ""  # how to get a missing model there, for the reason


@dataclass
class Decision:
    backend_id: Optional[int]
    reason: str
    reasons: dict = field(default_factory=dict)  # candidate name → why it was or wasn't chosen
    wait: bool = False  # nothing free now, but something will be: see waiting_for
    waiting_for: str = ""  # WAIT_GPU: a full local queue; WAIT_OUTAGE: a backend to answer again

    @property
    def summary(self) -> str:
        """One line per backend, for the job's error message when nothing could run it."""
        return "; ".join(f"{name}: {why}" for name, why in self.reasons.items())


def decide(job: JobFacts, candidates: list[Candidate], *, local_queue_limit: int) -> Decision:
    decision = _decide(job, candidates, local_queue_limit)
    if decision.backend_id is None and not decision.wait and job.excluded:
        again = JobFacts(job.kind, job.preference, job.custom_workflow, requires=job.requires, lost=job.lost)
        retry = _decide(again, candidates, local_queue_limit)
        if retry.backend_id is not None or retry.wait:
            retry.reason = f"{retry.reason} (trying again: it failed this job before and nothing else can run it)"
            return retry
    return decision


def _decide(job: JobFacts, candidates: list[Candidate], local_queue_limit: int) -> Decision:
    reasons, usable, outages = {}, [], []
    for candidate in candidates:
        refusal, transient = _refusal(job, candidate)
        if refusal:
            reasons[candidate.name] = refusal
            if transient:
                outages.append(candidate.name)
        else:
            usable.append(candidate)
    if not usable and outages:
        return Decision(None, f"Waiting for {' or '.join(outages)} to answer again: "
                        + "; ".join(f"{name} {reasons[name]}" for name in outages),
                        reasons, wait=True, waiting_for=WAIT_OUTAGE)
    if not usable:
        if not candidates:
            reasons["(none)"] = "no backend is set up"
        return Decision(None, "No backend can run this job", reasons)
    chosen, why = _choose(usable, local_queue_limit)
    if chosen is None:
        for candidate in usable:
            reasons[candidate.name] = why
        return Decision(None, f"Waiting for the local GPU: {why}", reasons, wait=True, waiting_for=WAIT_GPU)
    horizon = local_horizon([c.seconds for c in usable if c.category == "local"], local_queue_limit)
    for candidate in usable:
        reasons[candidate.name] = why if candidate is chosen else _runner_up(candidate, chosen, local_queue_limit,
                                                                             horizon)
    return Decision(chosen.id, f"{chosen.name}: {why}", reasons)


def _refusal(job: JobFacts, c: Candidate) -> tuple[str, bool]:
    """Why this candidate cannot take the job now ("" if it can), and whether that passes by
    itself (an outage) rather than needing someone to change something."""
    permanent = _permanent_refusal(job, c)
    if permanent:
        return permanent, False
    if c.health == "down":
        return f"offline{(' — ' + c.health_detail) if c.health_detail else ''}", True
    if c.id in job.lost:
        return "lost this job's last attempt in an outage and has not answered since", True
    return "", False


def _permanent_refusal(job: JobFacts, c: Candidate) -> str:
    if job.preference != "auto" and c.category != job.preference:
        return f"not used: you chose {job.preference} only"
    if not c.enabled:
        return "disabled by the administrator"
    if not c.configured:
        return f"not configured ({c.missing})" if c.missing else "not configured"
    lacks = c.inventory.lacks(job.requires) if c.inventory is not None and c.supports_workflows else []
    if lacks:  # before "already failed": what it lacks is the reason the user can act on
        return f"lacks {describe(lacks)}{(' — ' + c.install_hint) if c.install_hint else ''}"
    if c.id in job.excluded:
        return "already failed this job"
    if job.custom_workflow and not c.supports_workflows:
        return "cannot run custom ComfyUI workflows"
    if job.kind == "video" and not c.supports_video:
        return "does not make videos"
    if c.cap_refusal:
        return c.cap_refusal
    return ""


def _choose(usable: list[Candidate], limit: int) -> tuple[Optional[Candidate], str]:
    local = [c for c in usable if c.category == "local"]
    horizon = local_horizon([c.seconds for c in local], limit)
    free = sorted((c for c in local if has_room(c.queue, c.seconds, limit=limit, horizon=horizon)), key=_local_order)
    if free:
        best = free[0]
        if len(local) == 1:
            return best, f"local GPU is free (queue {best.queue} of {limit}), costs nothing"
        return best, (f"finishes it first among the local GPUs (queue {best.queue} of {limit}, done in about "
                      f"{finish_seconds(best):.0f}s), costs nothing")
    paid = sorted((c for c in usable if c.category != "local"), key=_paid_order)
    shortest = min(local, key=lambda c: c.queue) if local else None
    if paid:
        best = paid[0]
        note = f", local queue full ({shortest.queue} of {limit})" if local else ""
        return best, f"cheapest available at ${best.cost:.4f}, about {best.seconds:.0f}s{note}"
    if len(local) == 1:
        return None, f"its queue is full ({shortest.queue} of {limit}) and nothing else can run this job"
    return None, (f"every local GPU's queue is full (the shortest {shortest.queue} of {limit}; a slower GPU's "
                  "holds fewer jobs) and nothing else can run this job")


def local_horizon(seconds: list[float], limit: int) -> float:
    """The most work one local GPU's queue may hold, in seconds: `limit` jobs at the fastest
    GPU's learned time. 0 when no time is known (then only the limit counts)."""
    known = [s for s in seconds if s > 0]
    return limit * min(known) if known else 0.0


def has_room(queue: int, seconds: float, *, limit: int, horizon: float) -> bool:
    """Room for one more job: its queue is below the limit and holds less work than the horizon
    (with GPUs of one speed the two are the same rule). Below ALWAYS_ROOM it has room however
    slow it is: a slow GPU still works, a new one learns its time, and the next job is already
    queued there when the running one ends (routing it then would leave the GPU idle meanwhile)."""
    if queue >= limit:
        return False
    return queue < ALWAYS_ROOM or not horizon or queue * seconds < horizon


ALWAYS_ROOM = 2  # the job a GPU runs and the next one


def finish_seconds(c: Candidate) -> float:
    """When a local GPU would finish one more job: the jobs ahead of it and itself, at the run
    time learned on that backend. A GPU twice as fast takes twice the queue."""
    return (c.queue + 1) * max(c.seconds, 0.0)


def _local_order(c: Candidate):
    return (finish_seconds(c), c.queue, c.health != "up", c.priority)


def _paid_order(c: Candidate):
    return (c.cost, c.seconds, c.health != "up", c.priority)


def _runner_up(c: Candidate, chosen: Candidate, limit: int, horizon: float) -> str:
    if c.category == "local":
        if c.queue >= limit:
            return f"usable, but its queue is full ({c.queue} of {limit})"
        if not has_room(c.queue, c.seconds, limit=limit, horizon=horizon):
            return (f"usable, but its queue holds about {c.queue * c.seconds:.0f}s of work, as much as {limit} jobs "
                    "take on the fastest GPU")
        return f"usable, but would finish later (queue {c.queue}, done in about {finish_seconds(c):.0f}s)"
    return f"usable at ${c.cost:.4f}, about {c.seconds:.0f}s; {chosen.name} was preferred"
