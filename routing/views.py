"""Pages: submit, my jobs, job detail (with a live partial), outputs for their owner only."""
import secrets

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.conf import settings
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from . import selectors, services, tokens
from .forms import JobForm
from billing.selectors import user_month_summary
from workers.installer.server.selectors import install_in_progress

from .models import ApiToken, Category, Job, JobKind, JobStatus, Output, Preference, PreferenceChoice, Priority


def _own_job(request, job_id) -> Job:
    try:
        return selectors.job_for_user(user=request.user, job_id=job_id)
    except (Job.DoesNotExist, ValueError):
        raise Http404("No such job")


@login_required
def job_submit(request):
    if request.method == "POST":
        form = JobForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                job = _submit(request.user, form.cleaned_data)
            except services.RateLimited as limited:
                form.add_error(None, str(limited))
            else:
                messages.success(request, "Your job is queued. This page updates by itself.")
                return redirect("job-detail", job_id=job.id)
    unavailable = selectors.unavailable_preferences()  # shown as such, never preselected
    if request.method != "POST":
        preference = Preference.objects.filter(user=request.user).values_list("preference", flat=True).first()
        form = JobForm(initial={"preference": preference if preference and preference not in unavailable else "auto"})
    return render(request, "routing/submit.html", {"form": form, "unavailable": unavailable})


def _submit(user, data) -> Job:
    return services.job_submit(
        user=user, kind=data["kind"], preference=data["preference"], prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt") or "", width=data["width"], height=data["height"],
        seed=data["seed"] if data.get("seed") is not None else secrets.randbelow(2**32),
        duration_seconds=data.get("duration_seconds") or 0, workflow=data.get("workflow"),
        priority=int(data.get("priority") or Priority.NORMAL),
    )


@login_required
def job_list(request):
    status, backend = request.GET.get("status", ""), request.GET.get("backend", "")
    jobs = selectors.jobs_for_user(user=request.user, status=status if status in JobStatus.values else "",
                                   backend=backend if backend in Category.values else "").prefetch_related("outputs")[:200]
    return render(request, "routing/job_list.html", {
        "jobs": jobs, "status": status, "backend": backend,
        "statuses": JobStatus.choices, "categories": Category.choices,
    })


@login_required
def job_rows(request):
    """The job table body alone, polled by the list page for live status."""
    status, backend = request.GET.get("status", ""), request.GET.get("backend", "")
    jobs = selectors.jobs_for_user(user=request.user, status=status if status in JobStatus.values else "",
                                   backend=backend if backend in Category.values else "").prefetch_related("outputs")[:200]
    return render(request, "routing/_job_rows.html", {"jobs": jobs})


GALLERY_PAGE = 48


@login_required
def gallery(request):
    """Everything you made, newest first: images and videos, each linking to its job."""
    outputs = Output.objects.filter(job__user=request.user).select_related("job").order_by("-created_at", "-id")
    page = Paginator(outputs, GALLERY_PAGE).get_page(request.GET.get("page"))
    return render(request, "routing/gallery.html", {"page": page})


@login_required
def job_detail(request, job_id):
    job = _own_job(request, job_id)
    return render(request, "routing/job_detail.html", _job_context(job))


@login_required
def job_live(request, job_id):
    """The live part of the job page (status, progress, attempts, outputs), polled by JS."""
    job = _own_job(request, job_id)
    return render(request, "routing/_job_live.html", _job_context(job))


ROUTING_LATE_SECONDS = 15  # routing takes a second or two; this long means no control worker


def _job_context(job) -> dict:
    attempts = selectors.attempts_of(job)
    watch = selectors.job_watch(job, attempts)
    waited = (timezone.now() - job.created_at).total_seconds()
    late = job.status == "queued" and not job.waiting and not job.decision and waited > ROUTING_LATE_SECONDS
    return {"job": job, "position": watch["position"], "timeline": selectors.job_timeline(job, attempts),
            "preview_version": watch["preview_version"], "eta": watch["eta"],
            "routing_late": int(waited) if late else None}


@login_required
def job_preview(request, job_id):
    """The running job's latest live preview image (its owner only); 404 when there is none."""
    preview = selectors.job_preview(_own_job(request, job_id))
    if preview is None:
        raise Http404("No preview")
    response = HttpResponse(preview[1], content_type=preview[0])
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def job_cancel(request, job_id):
    job = _own_job(request, job_id)
    if services.job_cancel(user=request.user, job_id=job.id):
        messages.info(request, "The job was cancelled.")
    else:
        messages.warning(request, "The job had already finished; nothing to cancel.")
    return redirect("job-detail", job_id=job.id)


@login_required
@require_POST
def job_retry(request, job_id):
    job = _own_job(request, job_id)
    try:
        new = services.job_retry(user=request.user, job_id=job.id)
    except services.RateLimited as limited:
        messages.error(request, str(limited))
        return redirect("job-detail", job_id=job.id)
    messages.success(request, "A new job with the same settings is queued.")
    return redirect("job-detail", job_id=new.id)


@login_required
def output_file(request, output_id):
    output = get_object_or_404(Output, id=output_id, job__user=request.user)
    download = request.GET.get("download") == "1"
    return FileResponse(output.file.open("rb"), content_type=output.mime, as_attachment=download,
                        filename=output.filename)


@login_required
def backend_selector(request):
    kind = request.GET.get("kind") if request.GET.get("kind") in JobKind.values else JobKind.IMAGE
    current = Preference.objects.filter(user=request.user).values_list("preference", flat=True).first() or "auto"
    return render(request, "routing/backends.html", {
        "cards": selectors.backend_cards(kind=kind, local_queue_limit=settings.LOCAL_QUEUE_LIMIT,
                                         installing=_installing()),
        "kind": kind, "kinds": JobKind.choices, "current": current, "choices": PreferenceChoice.choices,
        "month": user_month_summary(user=request.user),
    })


@login_required
def backend_cards(request):
    """The live part of the selector page (statuses change as probes come in)."""
    kind = request.GET.get("kind") if request.GET.get("kind") in JobKind.values else JobKind.IMAGE
    return render(request, "routing/_backend_cards.html", {
        "cards": selectors.backend_cards(kind=kind, local_queue_limit=settings.LOCAL_QUEUE_LIMIT,
                                         installing=_installing()),
        "kind": kind,
    })


@login_required
@require_POST
def preference_save(request):
    preference = request.POST.get("preference", "")
    if preference not in PreferenceChoice.values:
        return JsonResponse({"error": f"Unknown preference {preference!r}; choose one of "
                                      f"{', '.join(PreferenceChoice.values)}."}, status=400)
    services.preference_set(user=request.user, preference=preference)
    return JsonResponse({"preference": preference, "saved": True})


def _installing() -> bool:
    """True while the local ComfyUI installer runs."""
    return install_in_progress()


@login_required
def api_tokens(request):
    """Make, list and revoke API tokens. A new token's key is shown once, on this response."""
    new_key = None
    if request.method == "POST":
        if "revoke" in request.POST:
            token_id = request.POST["revoke"].strip()
            if token_id.isdigit() and len(token_id) <= 18 and tokens.token_revoke(
                    user=request.user, token_id=int(token_id)):
                messages.info(request, "The token was revoked.")
            else:
                messages.error(request, "No such token of yours to revoke; nothing was changed.")
            return redirect("api-tokens")
        _, new_key = tokens.token_create(user=request.user, name=request.POST.get("name", "").strip())
    return render(request, "routing/tokens.html", {
        "tokens": ApiToken.objects.filter(user=request.user), "new_key": new_key,
    })
