"""The pages in a real browser: Debian's headless Chromium driven by Playwright, against the
live server, with real Celery workers and a fake ComfyUI as the local GPU.

Never downloads a browser: without /usr/bin/chromium the module is skipped. One browser, one
worker pool and one fake ComfyUI serve the whole module (starting them is most of the time);
each test gets a fresh database, users and backends. Every page visited is saved as a
full-page screenshot under test-output/screenshots/.
"""
import os
import re
from datetime import timedelta
from decimal import Decimal

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect

from django.utils import timezone  # noqa: E402

from routing import services  # noqa: E402
from routing.models import Backend, Job, JobStatus  # noqa: E402
from tests.conftest import OUTPUT_DIR, Workers, wait_for  # noqa: E402
from tests.fakes.comfyui import FakeComfyUI  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SCREENSHOTS = OUTPUT_DIR / "screenshots"
FAST_POLLS = {"COMFYUI_WATCH_SECONDS": "1", "COMFYUI_POLL_INTERVAL": "0.2"}
PHONE = {"width": 390, "height": 844}
LIVE_TIMEOUT = 30_000  # ms: a job through routing, a worker and the fake takes a few seconds


# --- module-wide: browser, workers, fake GPU ------------------------------------------------
@pytest.fixture(scope="module")
def shared_media(tmp_path_factory):
    """One media folder for the workers (which write outputs) and the live server (which serves them)."""
    return tmp_path_factory.mktemp("browser-media")


@pytest.fixture
def media_root(settings, shared_media):
    """Replaces the per-test media folder of conftest: the module's workers outlive a test."""
    settings.MEDIA_ROOT = shared_media
    return shared_media


@pytest.fixture(scope="module")
def fake():
    server = FakeComfyUI(steps=3, step_delay=0.05, gpu_name="NVIDIA GeForce RTX 4090 (fake)",
                         vram_total=25_757_220_864).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pool(django_db_setup, redis_server, shared_media):
    redis_server.client().flushall()
    workers = Workers(redis_server.url, env={**FAST_POLLS, "MEDIA_ROOT": str(shared_media)})
    workers.start(concurrency=2, name="browser")
    yield workers
    workers.stop_all()


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API keeps an asyncio loop running in this thread, which makes Django
    # refuse ORM calls from the test ("async context"). The ORM calls here are ordinary
    # synchronous test code, so allow them while the browser is up (Playwright's advice too).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# --- per test: fresh data, a signed-out page ------------------------------------------------
@pytest.fixture
def gpu(fake, pool, local_backend, transactional_db):
    """The local backend points at the fake ComfyUI and a probe has just found it up."""
    fake.steps, fake.step_delay = 3, 0.05
    Backend.objects.filter(id=local_backend.id).update(
        url=fake.url, health="up", last_probe_at=timezone.now(), gpu_name=fake.gpu_name,
        vram_total=fake.vram_total, expected_image_seconds=15.0)
    yield fake
    # Leave nothing running into the next test's fresh database.
    wait_for(lambda: not Job.objects.exclude(status__in=("succeeded", "failed", "cancelled")).exists(),
             30, 0.1, "this test's jobs to end")
    fake.steps, fake.step_delay, fake.fail_mode = 3, 0.05, None
    fake.preview_method, fake.step_budget = None, None


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors, violations = [], []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    # Every page this module visits is held to the Content-Security-Policy: Chromium reports each
    # blocked inline style, script or source on the console.
    tab.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


def _shot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _sign_in(page, username="alice", password="alice-password-1", next_url="/"):
    page.goto(f"/login/?next={next_url}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(next_url) + "$"))


def _until_js(page, expression, timeout=10):
    """Wait until a JavaScript expression is true. (page.wait_for_function evaluates a string
    with eval inside the page, which the Content-Security-Policy refuses, as it should.)"""
    wait_for(lambda: page.evaluate(expression), timeout, 0.1, expression)


def _mark_no_reload(page):
    """A flag on the window: still there later means the page was updated in place."""
    page.evaluate("window.__noReload = true")


def _was_not_reloaded(page) -> bool:
    return page.evaluate("window.__noReload === true")


# --- the scenarios --------------------------------------------------------------------------
def test_a_user_signs_in_through_the_login_form_and_sees_where_to_start(page, gpu, alice):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    _shot(page, "01-sign-in-error")

    page.get_by_label("Password").fill("alice-password-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="My jobs")).to_be_visible()
    expect(page.locator(".empty")).to_contain_text("Submit your first one")
    expect(page.locator(".topbar")).to_contain_text("alice")
    _shot(page, "02-my-jobs-empty")


def test_a_prompt_job_from_the_form_goes_live_to_succeeded_and_shows_its_image(page, gpu, alice):
    gpu.steps, gpu.step_delay = 15, 0.1  # about 1.5 s of "running": long enough to see it change
    _sign_in(page, next_url="/submit/")
    hint = page.locator('[data-hint-for="auto"]')
    expect(hint).to_contain_text("local")
    expect(hint).to_contain_text("free")
    expect(page.locator("[data-estimate]")).to_contain_text("Expected: local")
    expect(page.get_by_label("Video length (s)")).to_be_hidden()
    _shot(page, "03-submit")

    page.locator(".segmented label", has_text="Video").click()  # the estimate follows the kind
    expect(hint).to_contain_text("~4 min")
    expect(page.get_by_label("Video length (s)")).to_be_visible()
    page.locator(".segmented label", has_text="Image").click()
    expect(hint).to_contain_text("~15 s")

    page.get_by_role("button", name="Submit job").click()  # nothing written yet
    expect(page.get_by_role("alert").first).to_contain_text("fix the field")
    expect(page.locator(".field-prompt .error")).to_contain_text("Write a prompt")
    _shot(page, "04-submit-error")

    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk, oil painting")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    _mark_no_reload(page)
    status = page.locator("#job-status")
    expect(status).not_to_have_text("Succeeded")
    expect(status).to_have_text("Succeeded", timeout=LIVE_TIMEOUT)
    assert _was_not_reloaded(page), "the job page reloaded instead of updating in place"

    image = page.locator(".gallery img").first
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    expect(page.locator(".gallery a[download], .gallery a[href*='download=1']").first).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("local")
    expect(page.locator(".flash.success")).to_have_count(0)  # "queued" is out of date now
    _shot(page, "05-job-succeeded")

    page.set_viewport_size(PHONE)
    _shot(page, "06-job-succeeded-phone")
    page.goto("/submit/")
    expect(page.locator('[data-hint-for="auto"]')).to_contain_text("local")
    _shot(page, "07-submit-phone")


def test_my_jobs_list_shows_each_status_change_live(page, gpu, alice):
    gpu.steps, gpu.step_delay = 25, 0.1
    _sign_in(page)
    job = services.job_submit(user=alice, kind="image", preference="auto", prompt="a red fox in the snow", seed=3)
    page.reload()
    _mark_no_reload(page)
    row = page.locator(f'tr[data-job="{job.id}"]')
    expect(row.locator(".status")).to_have_text(re.compile("Running|Submitted|Routed|Queued"))
    expect(row.get_by_role("button", name="Cancel")).to_be_visible()
    expect(row.locator(".status")).to_have_text(re.compile("Running"), timeout=LIVE_TIMEOUT)
    _shot(page, "08-my-jobs-running")
    expect(row.locator(".status")).to_have_text("Succeeded", timeout=LIVE_TIMEOUT)
    expect(row.get_by_role("button", name="Run again")).to_be_visible()
    assert _was_not_reloaded(page), "the list reloaded instead of updating in place"
    _shot(page, "09-my-jobs-done")

    page.set_viewport_size(PHONE)
    _shot(page, "10-my-jobs-phone")


def test_a_running_job_is_cancelled_from_its_page(page, gpu, alice):
    gpu.steps, gpu.step_delay = 400, 0.1  # 40 s: still running when the button is pressed
    _sign_in(page)
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="a slow castle", seed=4)
    page.goto(f"/jobs/{job.id}/")
    expect(page.locator("#job-status")).to_have_text("Running", timeout=LIVE_TIMEOUT)
    expect(page.locator(".progress")).to_be_visible()
    _shot(page, "11-job-running")

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("Cancelled")
    expect(page.locator(".flash")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED
    wait_for(lambda: ("POST", "/interrupt") in gpu.received, 15, 0.1, "the GPU to be told to stop")
    _shot(page, "12-job-cancelled")


def test_a_job_that_fails_on_the_gpu_says_why_and_what_to_do_next(page, gpu, alice):
    gpu.fail_mode = "runtime_error"
    try:
        _sign_in(page)
        job = services.job_submit(user=alice, kind="image", preference="local", prompt="a broken robot", seed=5)
        page.goto(f"/jobs/{job.id}/")
        expect(page.locator("#job-status")).to_have_text("Failed", timeout=LIVE_TIMEOUT)
    finally:
        gpu.fail_mode = None
    expect(page.locator(".job-error")).not_to_be_empty()
    expect(page.get_by_role("alert")).to_contain_text("What to do next")
    expect(page.get_by_role("button", name="Run again")).to_be_visible()
    _shot(page, "13-job-failed")


def test_switching_the_backend_preference_is_saved_and_kept_after_a_reload(page, gpu, alice):
    _sign_in(page, next_url="/backends/")
    expect(page.locator('[data-backend="local"] .badge')).to_have_text("available")
    expect(page.get_by_label("Auto (cheapest that can run it)")).to_be_checked()

    page.get_by_label("Local GPU only").check()
    expect(page.locator(".saved-note")).to_have_text("Saved.")
    _shot(page, "14-backends-saved")

    page.reload()
    expect(page.get_by_label("Local GPU only")).to_be_checked()
    page.goto("/submit/")
    expect(page.get_by_role("radio", name=re.compile("^Local GPU only"))).to_be_checked()

    page.set_viewport_size(PHONE)
    page.goto("/backends/")
    expect(page.locator('[data-hint-for="local"]')).to_contain_text("free")
    _shot(page, "15-backends-phone")


def test_the_cost_monitor_shows_spend_and_jobs_as_charts(page, gpu, alice):
    _a_few_days_of_jobs(alice)
    _sign_in(page, next_url="/costs/")
    expect(page.get_by_role("heading", name="Your costs this month")).to_be_visible()
    chart = page.locator("#spend-chart svg.chart")
    expect(chart).to_be_visible()
    assert chart.bounding_box()["width"] > 200
    expect(page.locator("svg.chart")).to_have_count(2)
    _shot(page, "16-costs")


def test_a_missing_page_says_what_to_do_next(page, gpu, alice):
    _sign_in(page)
    page.goto("/jobs/00000000-0000-0000-0000-000000000000/")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("my jobs", re.I)).first).to_be_visible()
    _shot(page, "17-not-found")


def _a_few_days_of_jobs(user):
    """Three local jobs and one paid Gemini image spread over this month's first days."""
    from billing.models import LedgerEntry

    local, gemini = Backend.objects.get(name="local"), Backend.objects.get(name="gemini")
    now = timezone.now()
    for back, (backend, cost) in enumerate([(local, "0"), (local, "0"), (gemini, "0.039"), (local, "0")]):
        when = max(now - timedelta(days=back), now.replace(day=1, hour=0, minute=0, second=1))
        job = Job.objects.create(user=user, prompt=f"day {back}", status=JobStatus.SUCCEEDED, backend=backend,
                                 cost=Decimal(cost), finished_at=when)
        Job.objects.filter(id=job.id).update(created_at=when)
        if Decimal(cost):
            entry = LedgerEntry.objects.create(
                kind=LedgerEntry.Kind.CHARGE, amount=Decimal(cost), key=f"charge:browser:{job.id}", user=user,
                backend=backend, category=backend.category, day=when.date(), month=when.date().replace(day=1))
            LedgerEntry.objects.filter(id=entry.id).update(created_at=when)


def test_a_live_preview_shows_while_the_sampler_runs_and_goes_when_the_job_ends(page, gpu, alice):
    gpu.steps, gpu.preview_method, gpu.step_budget = 20, "auto", 0  # the sampler is held at its first step
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="a slow castle", seed=8)
    _sign_in(page, next_url=f"/jobs/{job.id}/")

    # A frame sent while no poll is watching the socket is not seen (the watch window ends and a
    # new one opens): let the sampler take one step at a time until a preview is on the page.
    preview = page.locator(".live-preview img")
    for _ in range(19):
        gpu.step_budget += 1
        try:
            expect(preview).to_be_visible(timeout=2_000)
            break
        except AssertionError:
            continue
    expect(preview).to_be_visible()
    _until_js(page, "document.querySelector('.live-preview img').naturalWidth > 0")  # a real image
    expect(page.locator(".eta")).to_be_visible()
    _shot(page, "18-live-preview")
    gpu.step_budget = None  # the sampler goes on to the end

    expect(page.locator(".gallery img").first).to_be_visible(timeout=LIVE_TIMEOUT)
    expect(preview).to_have_count(0)
    assert Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED


def test_every_page_works_at_phone_width_with_every_menu_link_in_sight(page, gpu, alice):
    _a_few_days_of_jobs(alice)
    page.set_viewport_size(PHONE)
    _sign_in(page)
    for name, path in (("jobs", "/"), ("submit", "/submit/"), ("backends", "/backends/"), ("costs", "/costs/"),
                       ("local-gpu", "/install/"), ("tokens", "/account/tokens/")):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path  # no sideways page
        for link in page.locator(".topbar nav a").all():
            box = link.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (path, link.inner_text())
        _shot(page, f"19-phone-{name}")
    page.goto("/costs/")
    cards = page.locator(".figures > div")
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert abs(first["y"] - second["y"]) < 1 and second["x"] > first["x"]  # two stat cards a row, not one


def test_my_jobs_shows_a_thumbnail_of_each_job_and_the_gallery_everything_made(page, gpu, alice):
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="a red fox in the snow", seed=5)
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, 30, 0.2, "the job to succeed")
    _sign_in(page)
    thumb = page.locator(f'tr[data-job="{job.id}"] .thumb img')
    expect(thumb).to_be_visible()
    _until_js(page, "[...document.querySelectorAll('.thumb img')].every(i => i.naturalWidth > 0)")
    _shot(page, "20-my-jobs-thumbnails")
    page.get_by_role("link", name="Gallery").click()
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    image = page.locator(".gallery.wall img").first
    expect(image).to_be_visible()
    _until_js(page, "document.querySelector('.gallery.wall img').naturalWidth > 0")
    _shot(page, "21-gallery")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    _shot(page, "22-gallery-phone")
    image.click()
    page.wait_for_url(re.compile(f"/jobs/{job.id}/$"))


def test_every_page_passes_the_content_security_policy(page, gpu, alice, admin_user):
    job = services.job_submit(user=alice, kind="image", preference="local", prompt="a lighthouse")
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, 30, 0.2, "the job to succeed")
    _sign_in(page)
    for path in ("/", "/submit/", f"/jobs/{job.id}/", "/costs/", "/backends/", "/account/tokens/", "/api/docs"):
        response = page.goto(path)
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
    expect(page.locator("#swagger-ui .info .title").first).to_be_visible()  # Swagger UI ran under the policy
    page.context.clear_cookies()
    _sign_in(page, username=admin_user.username, password="password", next_url="/admin/")
    for path in ("/admin/", "/admin/routing/job/", f"/admin/routing/job/{job.id}/change/", "/admin/metrics/",
                 "/install/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    # (the page fixture fails the test on any violation Chromium reported along the way)


# --- the first hour of a new user (issue 22), at desktop and phone widths -------------------------
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": PHONE}


@pytest.mark.parametrize("size", SIZES)
def test_the_first_hour_of_a_new_user(page, gpu, alice, settings, size):
    from routing.models import Attempt

    settings.GEMINI_API_KEY = ""  # (the live server runs in this process: Gemini is not set up)
    page.set_viewport_size(SIZES[size])
    _sign_in(page, next_url="/submit/")
    # 1. a choice nothing here can run is shown as such and cannot be picked
    gemini = page.locator('input[name="preference"][value="gemini"]')
    expect(gemini).to_be_disabled()
    expect(page.get_by_text("Not set up on this installation (GEMINI_API_KEY missing)")).to_be_visible()
    _shot(page, f"23-{size}-submit-gemini-not-set-up")
    # 4. a long prompt: one error that says how long it is; nothing cut, nothing sent
    page.get_by_label("Prompt", exact=True).fill("a fox " * 700)
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_text("At most 4000 characters; this one has 4199")).to_be_visible()
    expect(page.get_by_text("Write a prompt, or paste")).to_have_count(0)
    assert not Job.objects.exists()
    _shot(page, f"24-{size}-submit-too-long")
    # 3. a custom workflow: no size to fill in, and it is labelled with the size it makes
    workflow = ('{"1": {"class_type": "EmptyImage", "inputs": {"width": 640, "height": 384, "batch_size": 1,'
                ' "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "w"}}}')
    page.goto("/submit/")
    page.get_by_label("Prompt", exact=True).fill("")
    page.locator("details").filter(has=page.locator("textarea[name=workflow]")).locator("summary").click()
    page.locator("textarea[name=workflow]").fill(workflow)
    page.get_by_label("Width").fill("")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]+/$"))
    # 2. the first seconds of a job say what is happening, not that a worker is missing
    assert "probably not running" not in page.content()
    expect(page.locator(".job-head")).to_contain_text("640×384")
    expect(page.locator(".flash.success")).to_have_count(0, timeout=LIVE_TIMEOUT)  # gone once it moved on
    _shot(page, f"25-{size}-custom-workflow-job")
    # 7. a final message reads as sentences; 8. figures say what they count
    job = Job.objects.latest("created_at")
    wait_for(lambda: Job.objects.get(id=job.id).is_final, 30, 0.2, "the workflow job to end")
    failed = Job.objects.create(user=alice, kind="image", preference="local", prompt="a long " * 30,
                                status=JobStatus.FAILED)
    Attempt.objects.create(job=failed, backend_id=job.backend_id, number=1, status="failed",
                           error="ComfyUI at http://127.0.0.1:9 is not reachable (is it running?)")
    Job.objects.filter(id=failed.id).update(error=services._no_backend_message(failed, "local: offline", 1))
    page.goto(f"/jobs/{failed.id}/")
    expect(page.locator(".job-error")).to_contain_text("(is it running?). No other backend could take the job")
    expect(page.locator(".job-head .full-prompt summary")).to_contain_text("Whole prompt")
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[size]["width"]
    _shot(page, f"26-{size}-failed-job-long-prompt")
    page.goto("/costs/")
    expect(page.get_by_text("of finished jobs succeeded")).to_be_visible()
    _shot(page, f"27-{size}-costs")
    page.goto("/backends/")
    assert "Google Gemini · Google Gemini" not in page.content()
    _shot(page, f"28-{size}-backends")
    # 9. the Local GPU page knows ComfyUI already answers, and shows this user no server paths
    page.goto("/install/")
    expect(page.get_by_text("ComfyUI already answers")).to_be_visible()
    assert "Install folder" not in page.content()
    _shot(page, f"29-{size}-local-gpu")


@pytest.mark.parametrize("size", SIZES)
def test_a_job_added_in_the_admin_runs_at_once_and_the_admin_has_the_favicon(page, gpu, alice, admin_user, size):
    page.set_viewport_size(SIZES[size])
    _sign_in(page, username=admin_user.username, password="password", next_url="/admin/")
    assert page.locator('link[rel="icon"]').count() == 1  # 11. the admin's tab has the site's icon
    page.goto("/admin/routing/job/add/")
    page.locator("select#id_user").select_option(label="alice")
    page.locator("select#id_preference").select_option("local")
    page.locator("textarea#id_prompt").fill("added in the admin")
    _shot(page, f"30-{size}-admin-add-job")
    page.locator('input[name="_save"]').click()
    # 5. routed by the save itself: no beat runs here, so the sweeper would never have picked it up
    job = wait_for(lambda: Job.objects.filter(prompt="added in the admin", status=JobStatus.SUCCEEDED).first(),
                   30, 0.2, "the admin's job to run")
    assert job.user == alice and job.backend.name == "local"
