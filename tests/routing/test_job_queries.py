"""The database work of one job, from submission to success, on the local GPU: counted, so a
change that adds a query to every job is seen (issue 18: a job costs a few queries, not forty).
The path is driven in-process (the same service calls the tasks make) against the fake ComfyUI."""
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext

from django.utils import timezone

from billing import ledger
from routing import selectors, services
from routing.inventory import inventory_forget, inventory_store
from routing.models import Backend, Job, JobStatus
from workers.workflows.requirements import requirements_of

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "q"}}}
# Statements from the API call to succeeded (measured 25; 42 before routing moved to submission and
# the repeated reads went, 26 before the attempt count was read with the job's row). Transaction
# bookkeeping (SAVEPOINT / RELEASE) is not counted.
MOST = 25


def statements(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def test_a_local_job_costs_at_most_a_couple_dozen_statements_from_submission_to_success(
        db, settings, local_backend, fake_comfyui, alice, monkeypatch, django_capture_on_commit_callbacks):
    settings.COMFYUI_WATCH_SECONDS = 2
    Backend.objects.filter(id=local_backend.id).update(url=fake_comfyui.url, health="up")
    inventory_store(backend_id=local_backend.id, inventory={"models": {}, "nodes": ["EmptyImage", "SaveImage"]},
                    source="object_info")
    selectors.routing_inventories(list(Backend.objects.defer("inventory")))  # a warm process has them parsed
    sent = []
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, **options: sent.append(name))
    with CaptureQueriesContext(connection) as submitted:
        with django_capture_on_commit_callbacks(execute=True):
            job = services.job_submit(user=alice, kind="image", preference="local", workflow=WORKFLOW)
    attempt = job.attempts.get()  # routed where it was submitted: no message to the control worker
    assert sent == ["workers.tasks.submit_attempt"]
    with CaptureQueriesContext(connection) as ran:
        with django_capture_on_commit_callbacks(execute=True):
            assert services.attempt_submit(attempt_id=attempt.id, worker="w@host") is True
            seq = 0
            while services.attempt_poll(attempt_id=attempt.id, seq=seq) is not None:
                seq += 1
    assert Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED
    every = statements(submitted) + statements(ran)
    assert len(every) <= MOST, "\n".join(every)


def test_a_routing_error_where_the_job_was_submitted_leaves_it_to_the_control_worker(
        db, alice, local_backend, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, **options: sent.append((name, args)))
    monkeypatch.setattr(services, "job_route", lambda **kwargs: 1 / 0)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_submit(user=alice, kind="image", preference="local", prompt="a fox")
    assert sent == [("workers.tasks.route_job", [str(job.id)])]
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED  # stored, and routed by the worker


def test_the_routers_parsed_inventories_follow_every_change(db, local_backend, alice):
    job = Job.objects.create(user=alice, prompt="a fox")

    def lacks_wan():
        [local] = [c for c in selectors.candidates_for(job) if c.name == "local"]
        return local.inventory.lacks(requirements_of(
            {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan.safetensors"}}}))

    inventory_store(backend_id=local_backend.id, inventory={"models": {"diffusion_models": ["wan.safetensors"]},
                                                            "nodes": ["UNETLoader"]}, source="object_info")
    assert lacks_wan() == []
    inventory_store(backend_id=local_backend.id, inventory={"models": {}, "nodes": ["UNETLoader"]},
                    source="object_info", now=timezone.now() + timezone.timedelta(seconds=1))
    assert lacks_wan() == ["diffusion_models/wan.safetensors"]  # the new read, not the parsed old one
    inventory_store(backend_id=local_backend.id, inventory={"models": {"diffusion_models": ["wan.safetensors"]},
                                                            "nodes": ["UNETLoader"]}, source="object_info",
                    now=timezone.now() + timezone.timedelta(seconds=2))
    assert lacks_wan() == []
    inventory_forget(backend_id=local_backend.id, lacks=["diffusion_models/wan.safetensors"])
    assert lacks_wan() == ["diffusion_models/wan.safetensors"]  # forgotten at once (inventory_at cleared)


def test_routing_a_paid_job_reads_the_caps_once_and_holds_with_one_update_per_counter(
        db, alice, local_backend, monkeypatch):
    monkeypatch.setattr("routing.dispatch.send", lambda name, args, **options: None)
    Backend.objects.exclude(id=local_backend.id).update(enabled=False)
    Backend.objects.create(name="paidcloud", kind="comfyui", category="cloud", url="http://127.0.0.1:9", health="up",
                           price_per_second=Decimal("0.001"), expected_image_seconds=10.0)
    for number in range(2):  # the first makes the user's counters, the second finds them
        job = Job.objects.create(user=alice, kind="image", preference="cloud", prompt="a fox")
        with CaptureQueriesContext(connection) as routed:
            attempt = services.job_route(job_id=job.id)
    assert attempt.backend.name == "paidcloud" and ledger.held(attempt) == Decimal("0.01")
    money = [sql for sql in statements(routed) if "billing_spend" in sql]
    # the user's caps, the three counters in one read, then the take: one conditional UPDATE each
    assert [sql.split()[0] for sql in money] == ["SELECT", "SELECT", "UPDATE", "UPDATE", "UPDATE"], money
    assert not any('COUNT(*)' in sql and "routing_attempt" in sql for sql in statements(routed))  # read with the job
