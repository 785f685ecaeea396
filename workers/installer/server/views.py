"""The local install page: system check, Install, live progress, Pause / Resume / Cancel.

Everyone signed in sees the status; only staff may start or steer an install (it writes to
the GPU machine's disk and registers a backend for all users).
"""
from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from . import selectors, services
from ..pipeline import STEPS
from ..progress import human_bytes, human_seconds
from .models import ACTIVE_INSTALL_STATES, InstallRun, InstallStatus


class InstallForm(forms.Form):
    path = forms.CharField(required=False, max_length=400, label="Install folder",
                           help_text="On the GPU machine. Empty: the worker user's ~/comfyui")
    skip_models = forms.BooleanField(required=False, label="Skip the models (install ComfyUI only)")
    with_optional = forms.BooleanField(required=False, label="Also download the optional video models")
    service = forms.BooleanField(required=False, initial=True, label="Start ComfyUI automatically (service)")
    start = forms.BooleanField(required=False, initial=True, label="Start and verify ComfyUI when done")

    def options(self) -> dict:
        data = self.cleaned_data
        return {"path": data["path"].strip(), "skip_models": data["skip_models"],
                "with_optional": data["with_optional"], "service": data["service"], "start": data["start"]}


def staff_required(view):
    @wraps(view)
    @login_required
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff can change the local install.")
        return view(request, *args, **kwargs)
    return wrapper


@login_required
def install_page(request):
    """Staff see the machine check and install; everyone else only whether ComfyUI runs and an
    install's progress, without the server's paths or hardware details."""
    run, staff = selectors.latest_run(), request.user.is_staff
    running = selectors.comfyui_answering()
    preview = {"plan": None, "error": ""}
    if staff:  # an install under way shows its worker's plan; otherwise what an install would do now
        active = run is not None and not run.is_final and run.plan
        preview = {"plan": run.plan, "error": ""} if active else selectors.install_preview(run.options if run else None)
    return render(request, "workers/install.html", {
        "run": run, "plan": preview["plan"], "plan_error": preview["error"], "form": InstallForm(),
        "estimate": human_seconds(preview["plan"]["estimate_seconds"]) if preview["plan"] else "",
        "can_start": staff and selectors.active_run() is None, "staff": staff, "running": running,
        "runs": selectors.recent_runs(limit=6) if staff else [], **_live_context(request, run),
    })


@login_required
def install_live(request, run_id: int):
    """The live part of the page (status, steps, buttons), polled every second by app.js."""
    return render(request, "workers/_install_live.html", _live_context(request, _run(run_id)))


@staff_required
@require_POST
def install_start(request):
    form = InstallForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Check the install options.")
        return redirect("install")
    try:
        services.install_start(user=request.user, options=form.options())
    except services.InstallConflict as conflict:
        messages.error(request, str(conflict))
    else:
        messages.success(request, "Install started. This page updates by itself; you can leave and come back.")
    return redirect("install")


@staff_required
@require_POST
def install_pause(request, run_id: int):
    done = services.install_pause(run_id=_run(run_id).id)
    _tell(request, done, "Pausing after the current chunk.", "This install is not running.")
    return redirect("install")


@staff_required
@require_POST
def install_resume(request, run_id: int):
    try:
        run = _run(run_id)
        done = services.install_resume(run_id=run.id, holder_gone=selectors.holder_gone(run)) is not None
    except services.InstallConflict as conflict:
        messages.error(request, str(conflict))
        return redirect("install")
    _tell(request, done, "Resuming from where it stopped.", "Only a paused, failed or stalled install can resume.")
    return redirect("install")


@staff_required
@require_POST
def install_cancel(request, run_id: int):
    run = _run(run_id)
    done = services.install_cancel(run_id=run.id, holder_gone=selectors.holder_gone(run))
    _tell(request, done, "Cancelling.", "This install has already ended.")
    return redirect("install")


def _run(run_id: int) -> InstallRun:
    try:
        return selectors.run_get(run_id=run_id)
    except InstallRun.DoesNotExist:
        raise Http404("No such install")


def _tell(request, done: bool, success: str, refused: str) -> None:
    (messages.success if done else messages.warning)(request, success if done else refused)


def _live_context(request, run) -> dict:
    if run is None:
        return {"run": None}
    gone = selectors.holder_gone(run)
    stalled = gone or selectors.is_stalled(run)
    manage = request.user.is_staff
    return {
        "run": run, "steps": step_rows(run), "stalled": stalled, "holder_gone": gone, "can_manage": manage,
        "can_pause": manage and run.status in (InstallStatus.PENDING, InstallStatus.RUNNING) and not stalled
        and run.control == "none",
        "can_resume": manage and (run.status in (InstallStatus.PAUSED, InstallStatus.FAILED) or stalled),
        "can_cancel": manage and run.status in ACTIVE_INSTALL_STATES and run.control != "cancel",
    }


# A step's status shown with the site's status colours.
STEP_CSS = {"done": "succeeded", "failed": "failed", "running": "running", "paused": "paused",
            "skipped": "cancelled", "cancelled": "cancelled"}


def step_rows(run: InstallRun) -> list:
    """Every step with display strings; steps the worker has not reported yet are pending."""
    reported = {step.get("name"): step for step in run.steps or []}
    rows = []
    for name, title in STEPS:
        step = {"name": name, "title": title, "status": "pending", "progress": 0, "message": "",
                **reported.get(name, {})}
        running = step["status"] == "running"
        step["css"] = STEP_CSS.get(step["status"], "pending")
        step["bytes"] = (f"{human_bytes(step.get('bytes_done'))} / {human_bytes(step['bytes_total'])}"
                         if step.get("bytes_total") else "")
        step["speed_text"] = f"{human_bytes(step['speed'])}/s" if running and step.get("speed") else ""
        step["eta_text"] = human_seconds(step["eta"]) if running and step.get("eta") else ""
        rows.append(step)
    return rows
