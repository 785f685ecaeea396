"""RunPod end to end: real Redis, real Celery workers, the fake RunPod and fake ComfyUIs.

Beat is played by the test: it calls the autoscaler and the reaper itself (with `now` for
the reaper), so nothing waits for minutes. Everything else runs in the worker processes.
"""
import base64
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import ledger
from billing.models import LedgerEntry
from billing.reconcile import reconcile
from routing import services
from routing.models import Backend, Job, JobStatus
from tests.conftest import configure, wait_for
from tests.fakes.comfyui import make_mp4
from tests.fakes.runpod import ENDPOINT_ID, FakeRunPod, png_b64
from workers.pods import services as pod_services
from workers.pods import autoscale as pod_autoscale
from workers.pods.models import CloudPod, PodStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def fake():
    with FakeRunPod(pod_start_delay=0.3, queue_delay=0.1, run_delay=0.2) as server:
        yield server


@pytest.fixture
def cloud(settings, workers, fake, local_backend, fake_comfyui):
    """RunPod configured against the fake; the local GPU answers but its queue is full."""
    configure(settings, workers, RUNPOD_API_KEY="test-key", RUNPOD_API_BASE_URL=fake.url,
              RUNPOD_ENDPOINT_BASE_URL=fake.serverless_url, RUNPOD_POD_URL_TEMPLATE=fake.pod_url_template,
              RUNPOD_POD_IMAGE="comfy-hybrid-worker:test", RUNPOD_MAX_PODS=2, RUNPOD_POD_MAX_JOBS=3,
              RUNPOD_POLL_INTERVAL=0.2, COMFYUI_POLL_INTERVAL=0.2, COMFYUI_WATCH_SECONDS=1.0)
    Backend.objects.filter(id=local_backend.id).update(
        url=fake_comfyui.url, health="up", last_probe_at=timezone.now(), queue_depth=settings.LOCAL_QUEUE_LIMIT)
    return fake


def submit(user, count=1, **fields):
    options = {"kind": "image", "preference": "auto", "prompt": "a lighthouse", **fields}
    return [services.job_submit(user=user, seed=i, **options) for i in range(count)]


def play_beat_until(condition, timeout, message):
    """What beat does every RUNPOD_AUTOSCALE_SECONDS, compressed: autoscale, then look again."""
    def tick():
        pod_autoscale.autoscale()
        return condition()

    return wait_for(tick, timeout, 0.3, message)


def all_final(jobs):
    return all(Job.objects.get(id=job.id).is_final for job in jobs)


def _day_window(entries):
    """The UTC day the entries were written on (a run across midnight cannot be compared by day)."""
    days = {entry.created_at.astimezone(dt_timezone.utc).date() for entry in entries}
    if len(days) != 1:
        pytest.skip("the run crossed midnight UTC")
    start = datetime.combine(days.pop(), datetime.min.time(), tzinfo=dt_timezone.utc)
    return start, start + timedelta(days=1)


def test_a_backlog_with_local_busy_spawns_pods_that_run_the_jobs_and_are_stopped_when_idle(
        cloud, workers, alice, settings):
    fake = cloud
    workers.start(concurrency=4)
    jobs = submit(alice, 10)

    play_beat_until(lambda: all_final(jobs), 90, "the backlog to finish on pods")

    pods = Backend.objects.get(name="pods")
    finished = [Job.objects.get(id=job.id) for job in jobs]
    assert [job.status for job in finished] == [JobStatus.SUCCEEDED] * 10, [job.error for job in finished]
    assert {job.backend_id for job in finished} == {pods.id}
    used = {job.attempts.get().handle["pod_id"] for job in finished}
    assert len(used) == 2 and used <= set(fake.pods)  # both pods worked
    assert all(job.outputs.get().file.read().startswith(b"\x89PNG") for job in finished)
    rows = list(CloudPod.objects.all())
    assert len(rows) == 2 and all(row.ready_at for row in rows)

    last_end = max(job.finished_at for job in finished)
    pod_services.pod_reap_idle(now=last_end + timedelta(seconds=301))

    wait_for(lambda: set(fake.terminated) == used, 20, message="RunPod to see both pods terminated")
    wait_for(lambda: set(CloudPod.objects.values_list("status", flat=True)) == {PodStatus.TERMINATED}, 10,
             message="the rows to record the termination")
    rows = list(CloudPod.objects.all())
    assert sum(row.jobs_processed for row in rows) == 10
    assert all(row.uptime_cost > 0 and row.idle_cost > 0 and row.terminated_at for row in rows)
    assert all(Job.objects.get(id=job.id).cost > 0 for job in jobs)  # each job's seconds on its pod
    for row in rows:  # what RunPod bills for each pod is, exactly, its jobs' charges plus its idle time
        charged = sum(a.attempt.cost for a in row.assignments.select_related("attempt"))
        assert charged + row.idle_cost == row.uptime_cost
    assert ledger.ledger_total() == sum(row.uptime_cost for row in rows)

    # ...and agrees with what RunPod's billing API says it billed for each pod
    settings.RUNPOD_REST_BASE_URL = fake.rest_url
    start, end = _day_window(LedgerEntry.objects.all())
    report = reconcile(start=start, end=end)
    pod_lines = [line for line in report.lines if line.provider == "runpod pods"]
    assert len(pod_lines) == 2 and report.clean, [(line.what, line.billed, line.ledger) for line in report.lines]
    assert all(line.ledger >= line.billed for line in pod_lines)  # our clock starts a moment before RunPod's


def test_a_pod_whose_comfyui_dies_mid_job_fails_the_job_over(cloud, workers, alice, settings, local_backend):
    fake = cloud
    fake.pod_comfy_kwargs = {"step_delay": 0.3, "steps": 20}  # a 6 s job: time to kill it mid-way
    configure(settings, workers, RUNPOD_MAX_PODS=1, RUNPOD_POD_FAILURES_TO_REPLACE=1)
    workers.start(concurrency=3)
    job = submit(alice)[0]

    def running_on_a_pod():
        attempt = Job.objects.get(id=job.id).attempts.first()
        return attempt and attempt.status == "running" and attempt.handle.get("pod_id")

    pod_id = play_beat_until(running_on_a_pod, 30, "the job to run on a pod")
    Backend.objects.filter(id=local_backend.id).update(queue_depth=0)  # the local GPU has room again
    fake.kill_comfy(pod_id)

    job = wait_for(lambda: Job.objects.get(id=job.id) if all_final([job]) else None, 30, 0.2, "the failover")
    assert job.status == JobStatus.SUCCEEDED, job.error
    attempts = list(job.attempts.order_by("number"))
    assert [(a.backend.name, a.status) for a in attempts] == [("pods", "failed"), ("local", "succeeded")]
    assert attempts[0].retryable and job.failovers == 1

    play_beat_until(lambda: pod_id in fake.terminated, 20, "the dead pod to be replaced")
    row = CloudPod.objects.get(runpod_id=pod_id)
    wait_for(lambda: CloudPod.objects.get(id=row.id).status == PodStatus.FAILED, 10, message="the row to end failed")


def test_an_orphan_pod_on_runpod_is_found_and_terminated_by_reconcile(cloud, workers):
    fake = cloud
    orphan = fake.add_orphan_pod(name="comfy-hybrid-left-by-a-crash")
    someone_elses = fake.add_orphan_pod(name="my-jupyter-notebook")
    workers.start(queues="cloud")
    from workers.pod_tasks import reconcile_pods

    reconcile_pods.apply_async()

    wait_for(lambda: fake.terminated == [orphan], 20, message="reconcile to terminate the orphan")
    assert someone_elses in fake.pods
    assert "not tracked here; terminating it" in workers.logs[0].read_text()


def test_a_serverless_job_stores_its_image_and_video_at_once_and_costs_its_execution_time(
        cloud, workers, alice, settings):
    fake = cloud
    configure(settings, workers, RUNPOD_ENDPOINT_ID=ENDPOINT_ID)
    video = make_mp4("clip")
    fake.script({"status": "COMPLETED", "run_delay": 0.5, "output": {
        "images": [{"filename": "f_00001_.png", "type": "base64", "data": png_b64()}],
        "videos": [{"filename": "clip_00001_.mp4", "type": "base64", "data": base64.b64encode(video).decode()}]}})
    workers.start()

    job = submit(alice, preference="cloud")[0]

    job = wait_for(lambda: Job.objects.get(id=job.id) if all_final([job]) else None, 30, 0.2, "the serverless job")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.backend.name == "runpod"
    outputs = {output.mime: output for output in job.outputs.all()}
    assert outputs["video/mp4"].file.read() == video and outputs["image/png"].size > 0
    attempt = job.attempts.get()
    assert attempt.seconds == pytest.approx(0.5, abs=0.05)
    assert attempt.cost == (settings.RUNPOD_PRICE_PER_SECOND * 500 / 1000).quantize(attempt.cost)


def test_a_serverless_jobs_progress_on_runpod_shows_on_the_job_and_its_page_while_it_runs(
        cloud, workers, alice, alice_client, settings):
    fake = cloud
    configure(settings, workers, RUNPOD_ENDPOINT_ID=ENDPOINT_ID)
    fake.script({"status": "COMPLETED", "hold": True,  # running, with this progress, until released
                 "progress": {"percent": 37, "node": "3", "class_type": "KSampler", "step": "7/20"},
                 "output": {"images": [{"filename": "f_00001_.png", "type": "base64", "data": png_b64()}]}})
    workers.start()
    job = submit(alice, preference="cloud")[0]

    running = wait_for(lambda: Job.objects.filter(id=job.id, status=JobStatus.RUNNING, progress=37).first(), 30,
                       0.1, "the job to show the progress its RunPod worker sent")
    page = alice_client.get(reverse("job-live", args=[job.id])).content.decode()
    fake.release()

    job = wait_for(lambda: Job.objects.get(id=job.id) if all_final([job]) else None, 30, 0.2, "the serverless job")
    assert running.backend.name == "runpod"
    assert 'aria-label="Progress" value="37" max="100"' in page and "<span>37%" in page  # the bar and its label
    assert job.status == JobStatus.SUCCEEDED and job.progress == 100, job.error


def test_reconciliation_records_the_serverless_worker_time_no_job_was_charged_for(cloud, workers, alice, settings):
    fake = cloud
    fake.worker_overhead_seconds = 40.0  # RunPod bills each job's cold start and idle timeout too
    configure(settings, workers, RUNPOD_ENDPOINT_ID=ENDPOINT_ID, RUNPOD_REST_BASE_URL=fake.rest_url)
    workers.start()
    jobs = submit(alice, 2, preference="cloud")
    wait_for(lambda: all_final(jobs), 30, 0.2, "the serverless jobs")
    assert all(Job.objects.get(id=job.id).backend.name == "runpod" for job in jobs)
    start, end = _day_window(LedgerEntry.objects.all())
    price = settings.RUNPOD_PRICE_PER_SECOND

    before = reconcile(start=start, end=end, now=end)  # not recording: the gap is shown
    [line] = [line for line in before.lines if line.provider == "runpod serverless"]
    assert line.difference == price * 80 and not before.clean  # 2 jobs x 40 s beyond their executionTime

    later = end + timedelta(hours=3)  # the day has ended and RunPod has written its records
    after = reconcile(start=start, end=end, record=True, now=later)  # recorded once
    assert after.recorded == [(f"runpod-overhead:{ENDPOINT_ID}:{start.date()}", price * 80)] and after.clean
    assert reconcile(start=start, end=end, record=True, now=later).recorded == []
    [overhead] = LedgerEntry.objects.filter(key__startswith="runpod-overhead:")
    assert overhead.kind == "idle" and overhead.user_id is None  # the installation's, against its cap
    assert ledger.ledger_total() == sum(Job.objects.get(id=job.id).cost for job in jobs) + price * 80


def test_a_job_cancelled_by_the_user_is_cancelled_on_runpod(cloud, workers, alice, settings):
    fake = cloud
    fake.run_delay = 60
    configure(settings, workers, RUNPOD_ENDPOINT_ID=ENDPOINT_ID)
    workers.start()
    job = submit(alice, preference="cloud")[0]
    handle = wait_for(lambda: Job.objects.get(id=job.id).attempts.filter(running_at__isnull=False).first(), 20,
                      0.1, "the job to run on RunPod")

    assert services.job_cancel(user=alice, job_id=job.id)

    remote_id = handle.handle["job_id"]
    wait_for(lambda: fake.cancelled == [remote_id], 20, message="RunPod to see /cancel")
    assert fake.jobs[remote_id].status == "CANCELLED"
    job = Job.objects.get(id=job.id)
    assert job.status == JobStatus.CANCELLED
    # The seconds it ran on RunPod are billed there, so they are charged here, not released.
    attempt = job.attempts.get()
    assert attempt.cost > 0 and job.cost == attempt.cost == ledger.ledger_total(job=job, user=alice)
    # RunPod ran it a little before we first saw it running: after the cancel, what it reports
    # beyond the user's charge is recorded as the installation's, so the ledger is RunPod's bill.
    from billing.pricing import metered_cost

    billed = metered_cost(attempt.backend, fake.jobs[remote_id].as_status()["executionTime"] / 1000)
    wait_for(lambda: ledger.ledger_total(job=job) == max(billed, attempt.cost), 20, 0.1, "the run to be recorded")
    assert attempt.cost <= settings.RUNPOD_PRICE_PER_SECOND * Decimal(str(fake.billed_seconds()[remote_id]))
