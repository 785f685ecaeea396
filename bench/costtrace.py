"""Deterministic traces for the cost benchmark (seeded `random.Random`; same seed, same trace).

The design's three use cases, then a month of mixed work:
- a creator with a GPU: one working day of images and a few videos, the GPU always on;
- a creator without a GPU: the same day, no local backend at all;
- a burst of 10 image jobs while the local GPU is busy with a long video;
- 30 days, four creators with daily rhythms (evenings busier, weekends busier), 12 % video,
  a quarter custom workflows (never Gemini), batch bursts of 5-20 images or 3-6 videos, and a
  local GPU that is off on most nights, during evening gaming sessions, for a three-day trip
  and for short crashes.
"""
import random
from dataclasses import dataclass, field

from .costsim import Job, merged

HOUR, DAY = 3600.0, 86400.0
VIDEO_LENGTHS = (4, 5, 6, 8)


@dataclass
class Scenario:
    name: str
    title: str
    jobs: list
    has_local: bool = True
    local_off: list = field(default_factory=list)


def _job(rng, number: int, arrival: float, user: int, *, kind: str = "", video_share: float = 0.12,
         custom_share: float = 0.25) -> Job:
    kind = kind or ("video" if rng.random() < video_share else "image")
    return Job(id=number, arrival=arrival, kind=kind, duration=rng.choice(VIDEO_LENGTHS) if kind == "video" else 0,
               custom=rng.random() < custom_share, user=user, work=rng.lognormvariate(0, 0.25))


def creator_day(seed: int) -> list:
    """One creator's ten-hour day: about 12 images an hour, a video an hour, two small bursts."""
    rng, jobs, t = random.Random(seed), [], 0.0
    while True:
        t += rng.expovariate(13 / HOUR)
        if t > 10 * HOUR:
            break
        jobs.append(_job(rng, len(jobs) + 1, t, 1, video_share=1 / 13))
    for at in (2.5 * HOUR, 7 * HOUR):
        jobs += [_job(rng, 0, at, 1, kind="image") for _ in range(6)]
    return _numbered(jobs)


def _numbered(jobs: list) -> list:
    """Ids in arrival order, 1, 2, 3..."""
    jobs.sort(key=lambda j: j.arrival)
    for number, job in enumerate(jobs, start=1):
        job.id = number
    return jobs


def busy_burst(seed: int) -> list:
    rng = random.Random(seed)
    video = Job(id=1, arrival=0.0, kind="video", duration=8, user=1, work=1.0)
    return [video] + [_job(rng, n, 20.0, 2, kind="image", custom_share=0.3) for n in range(2, 12)]


def month(seed: int, days: int = 30) -> Scenario:
    rng, jobs, off = random.Random(seed), [], []
    for day in range(days):
        start, weekend = day * DAY, day % 7 in (5, 6)
        for user in range(1, 5):
            jobs += _user_day(rng, user, start, weekend)
        if rng.random() < 0.3:
            at, user = start + rng.uniform(10, 23) * HOUR, rng.randint(1, 4)
            jobs += [_job(rng, 0, at, user, kind="image") for _ in range(rng.randint(5, 20))]
        if rng.random() < 0.1:
            at, user = start + rng.uniform(10, 23) * HOUR, rng.randint(1, 4)
            jobs += [_job(rng, 0, at, user, kind="video") for _ in range(rng.randint(3, 6))]
        off += _gpu_off(rng, day, start)
    trip = min(12, max(0, days - 4))
    off.append((trip * DAY, (trip + 3) * DAY))
    _numbered(jobs)
    return Scenario("month", f"{days} days, 4 creators, mixed image/video, GPU sometimes off", jobs,
                    local_off=merged(off))


def _user_day(rng, user: int, start: float, weekend: bool) -> list:
    """Active 10:00-24:00 with a busier evening; some days a creator does nothing."""
    if rng.random() < 0.25:
        return []
    rate = rng.lognormvariate(0, 0.4) * (1.5 if weekend else 1.0)
    jobs, t = [], start + 10 * HOUR
    while True:
        hour = (t - start) / HOUR
        t += rng.expovariate(rate * (1.6 if hour >= 18 else 0.8) / HOUR)
        if t >= start + 24 * HOUR:
            return jobs
        jobs.append(_job(rng, 0, t, user))


def _gpu_off(rng, day: int, start: float) -> list:
    off = []
    if rng.random() < 0.6:  # the PC is shut down for the night
        off.append((start + 2 * HOUR, start + 9 * HOUR))
    if rng.random() < 3 / 7:  # a gaming evening: the GPU is taken
        begin = start + rng.uniform(19, 21) * HOUR
        off.append((begin, begin + rng.uniform(2, 4) * HOUR))
    if rng.random() < 2 / 7:  # ComfyUI crashed and is restarted a little later
        begin = start + rng.uniform(10, 24) * HOUR
        off.append((begin, begin + rng.uniform(5, 20) * 60))
    return off


def scenarios(seed: int, days: int) -> list:
    day = creator_day(seed)
    return [
        Scenario("creator_with_gpu", "a creator with a GPU: one day, GPU always on", day),
        Scenario("creator_without_gpu", "a creator without a GPU: the same day, no local backend",
                 [Job(**vars(job)) for job in day], has_local=False),
        Scenario("burst_local_busy", "a burst of 10 images while the local GPU renders a long video",
                 busy_burst(seed)),
        month(seed, days),
    ]
