"""20 jobs routed at the same moment against a $5 cap, each estimated at $1.

Used in-process on SQLite (tests/billing/test_caps.py) and as a script on PostgreSQL, where a test
runs `python -m tests.billing.cap_race` with DATABASE_URL pointing at a scratch database.
"""
import json
import sys
import threading
from decimal import Decimal


def seed(n: int, cap: Decimal, user_name: str = "racer"):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from billing.models import SpendCap
    from routing.defaults import ensure_default_backends
    from routing.models import Backend, Job

    ensure_default_backends()
    Backend.objects.filter(name="local").update(enabled=False)
    # A ComfyUI cloud backend (no key needed) whose estimate is exactly $1: 25 s × $0.04/s.
    Backend.objects.create(name="racecloud", kind="comfyui", category="cloud", url="http://127.0.0.1:9",
                           price_per_second=Decimal("0.04"), expected_image_seconds=25.0, health="up",
                           last_probe_at=timezone.now())
    user = get_user_model().objects.create_user(user_name, "", "pw-for-the-race-1")
    SpendCap.objects.create(user=user, daily=cap, monthly=cap * 10)
    return [Job.objects.create(user=user, prompt=f"race {i}").id for i in range(n)]


def race(job_ids) -> dict:
    """Route every job from its own thread, all released at once by a barrier."""
    from django.db import connection

    from billing.ledger import ledger_total
    from billing.models import LedgerEntry
    from routing import services
    from routing.models import Job

    barrier = threading.Barrier(len(job_ids))
    errors = []

    def route(job_id):
        try:
            barrier.wait()
            services.job_route(job_id=job_id)
        except Exception as error:  # reported, so the test shows what broke
            errors.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=route, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    jobs = Job.objects.filter(id__in=job_ids)
    held = sum((e.amount for e in LedgerEntry.objects.filter(kind="hold")), Decimal("0"))
    return {"routed": jobs.filter(status="routed").count(), "failed": jobs.filter(status="failed").count(),
            "held": str(held), "spent": str(ledger_total()), "errors": errors,
            "messages": sorted(set(jobs.filter(status="failed").values_list("error", flat=True)))}


def main():
    """Script mode for PostgreSQL: race on a scratch database (tests/pg_scratch.py)."""
    from tests.pg_scratch import scratch_database

    with scratch_database("comfy_cap_race") as vendor:
        result = race(seed(int(sys.argv[1]) if len(sys.argv) > 1 else 20, Decimal("5")))
        result["vendor"] = vendor
        print(json.dumps(result))


if __name__ == "__main__":
    main()
