"""Races that only PostgreSQL shows (SQLite runs one writer at a time), on a scratch database.

- `cancel N`: a user's cancel against the job's completion, at the same moment, N times.
  `job_cancel` and `attempt_succeed` both change a job, its attempt and the spend counters;
  two transactions that take those row locks in different orders deadlock.
- `submit N`: N submissions by one user at once against SUBMIT_RATE_PER_MINUTE; counted,
  then inserted, more than the limit got through.

Run as `python -m tests.routing.lock_race cancel|submit N` with CAP_RACE_ADMIN_URL (tests/billing/test_caps.py)."""
import json
import sys
import threading
from decimal import Decimal


def seed(n: int):
    """N running jobs, each with a submitted attempt on a per-second cloud backend and its hold."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from billing import ledger
    from routing.defaults import ensure_default_backends
    from routing.models import Attempt, Backend, Job

    ensure_default_backends()
    backend = Backend.objects.create(name="lockcloud", kind="comfyui", category="cloud", url="http://127.0.0.1:9",
                                     price_per_second=Decimal("0.001"), expected_image_seconds=5.0, health="up")
    user = get_user_model().objects.create_user("locker", "", "pw-for-the-race-1")
    attempts = []
    for i in range(n):
        job = Job.objects.create(user=user, prompt=f"race {i}", status="running", backend=backend)
        attempt = Attempt.objects.create(job=job, backend=backend, number=1, status="submitted",
                                         handle={"prompt_id": str(i)}, running_at=timezone.now())
        ledger.hold(attempt=attempt, amount=Decimal("0.005"))
        attempts.append(attempt.id)
    return user, attempts


def race(user, attempt_ids) -> dict:
    """For each attempt, one thread cancels its job while another records its success."""
    from django.db import connection

    from billing.ledger import ledger_total
    from routing import services
    from routing.models import Attempt, Job
    from workers.clients import Done

    errors = []

    def run(barrier, action):
        try:
            barrier.wait()
            action()
        except Exception as error:  # reported: a deadlock is an OperationalError here
            errors.append(repr(error)[:300])
        finally:
            connection.close()

    for attempt_id in attempt_ids:
        job_id = Attempt.objects.values_list("job_id", flat=True).get(id=attempt_id)
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=run, args=(barrier, lambda: services.job_cancel(user=user, job_id=job_id))),
            threading.Thread(target=run, args=(barrier, lambda: services.attempt_succeed(
                attempt_id=attempt_id, done=Done(outputs=[], seconds=2.0), client=None))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    outcomes, inconsistent = {}, []
    for job in Job.objects.filter(user=user).prefetch_related("attempts"):
        [attempt] = job.attempts.all()
        outcomes[f"{job.status}/{attempt.status}"] = outcomes.get(f"{job.status}/{attempt.status}", 0) + 1
        if job.status not in ("cancelled", "succeeded") or job.cost != ledger_total(job=job, user=user):
            inconsistent.append(str(job.id))
    return {"errors": errors, "outcomes": outcomes, "inconsistent": inconsistent}


def submit_race(n: int, limit: int) -> dict:
    """N threads submit a job for one user at the same moment; the limit must hold exactly."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection

    from routing import services
    from routing.defaults import ensure_default_backends
    from routing.models import Job

    ensure_default_backends()
    settings.SUBMIT_RATE_PER_MINUTE = limit
    user = get_user_model().objects.create_user("burst", "", "pw-for-the-race-1")
    barrier, refused, errors = threading.Barrier(n), [], []

    def submit(i):
        try:
            barrier.wait()
            services.job_submit(user=user, kind="image", preference="auto", prompt=f"burst {i}")
        except services.RateLimited:
            refused.append(i)
        except Exception as error:
            errors.append(repr(error)[:300])
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return {"created": Job.objects.filter(user=user).count(), "refused": len(refused), "errors": errors}


def main():
    from tests.pg_scratch import scratch_database

    scenario, n = sys.argv[1], int(sys.argv[2])
    with scratch_database("comfy_lock_race") as vendor:
        result = race(*seed(n)) if scenario == "cancel" else submit_race(n, limit=10)
        result["vendor"] = vendor
        print(json.dumps(result))


if __name__ == "__main__":
    main()
