"""The JSON form of jobs and backends, shared by the API and webhooks. No secrets, no URLs
of backends: only what the job's owner may see (errors and reasons as routing/errors.py
shows them to users)."""
from django.urls import reverse

from .errors import for_users
from .models import Job
from .selectors import attempts_of, job_watch


def _money(value) -> str:
    return f"{value:.6f}"


def _time(value):
    return value.isoformat() if value else None


def job_dict(job: Job, base_url: str) -> dict:
    attempts = attempts_of(job)
    watch = job_watch(job, attempts)
    preview = reverse("api-1.0:job_preview", args=[job.id]) if watch["preview_version"] else None
    return {
        "id": str(job.id), "status": job.status, "kind": job.kind, "preference": job.preference,
        "priority": job.get_priority_display().lower(), "prompt": job.prompt,
        "custom_workflow": job.is_custom_workflow, "width": job.width, "height": job.height, "seed": job.seed,
        "duration_seconds": job.duration_seconds, "backend": job.backend.name if job.backend else None,
        "reason": for_users(job.reason), "progress": job.progress, "cost": _money(job.cost), "error": for_users(job.error),
        "failovers": job.failovers, "retries": job.retries, "waiting": job.waiting,
        "waiting_for": job.waiting_for if job.waiting else "", "queue_position": watch["position"],
        "created_at": _time(job.created_at), "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "eta_seconds": watch["eta"],
        "preview_url": f"{base_url.rstrip('/')}{preview}?v={watch['preview_version']}" if preview else None,
        "attempts": [{
            "number": a.number, "backend": a.backend.name, "status": a.status, "error": for_users(a.error),
            "started_at": _time(a.started_at), "finished_at": _time(a.finished_at), "seconds": a.seconds,
            "cost": _money(a.cost), "outage": a.outage, "gpu": a.gpu,
        } for a in attempts],
        "outputs": [{
            "url": base_url.rstrip("/") + reverse("output-file", args=[o.id]), "mime": o.mime, "size": o.size,
            "sha256": o.sha256, "filename": o.filename,
        } for o in job.outputs.all()],
    }
