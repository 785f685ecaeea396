"""The JSON API under /api/: per-user tokens or the web session, OpenAPI at /api/openapi.json,
interactive docs at /api/docs (Swagger UI served from the django-ninja wheel, no CDN).

Validation reuses the web form (routing/forms.py), so the API and the page refuse exactly the
same input; errors are 422 with one entry per field, another user's job is 404.
"""
import json
import secrets
import uuid
from typing import Literal, Optional, Union

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, NinjaAPI, Query, Schema
from ninja.errors import ValidationError
from ninja.responses import Status
from ninja.security import HttpBearer, SessionAuth

from billing import caps
from billing.metrics import as_json, metrics, period
from project.celery import app

from .. import selectors, services
from ..forms import MAX_SIDE, MAX_VIDEO_SECONDS, JobForm
from ..health import effective_health
from ..models import Backend, Category, Job, JobKind, JobStatus, Priority
from ..serializers import job_dict
from ..tokens import token_user
from ..webhooks import WebhookRefused, validate_webhook_url


class TokenAuth(HttpBearer):
    """`Authorization: Bearer chy_...` (tokens are made on /account/tokens/ or in the admin)."""

    def authenticate(self, request, token):
        return token_user(token)


class SignedInSession(SessionAuth):
    """The web session, for the pages' own calls: CSRF is checked for a signed-in session only,
    so a write with no credentials at all is a 401 (not "CSRF check failed", a 403)."""

    def _get_key(self, request):
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)


api = NinjaAPI(title="Comfy Hybrid API", version="1.0", auth=[TokenAuth(), SignedInSession()],
               description="Submit image and video jobs and follow them; see README.md for curl examples.")


class FieldErrors(Exception):
    def __init__(self, errors: dict):
        self.errors = errors


@api.exception_handler(FieldErrors)
def _field_errors(request, exc):
    detail = [{"loc": ["body", field], "msg": message, "type": "value_error"}
              for field, messages in exc.errors.items() for message in messages]
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(ValidationError)
def _schema_errors(request, exc):
    """The schema's own refusals in the shape of ours: loc ["body", field] (ninja adds the
    parameter's name, "body"), a message and a type; pydantic's echo of the input is dropped."""
    detail = []
    for error in exc.errors:
        loc = list(error.get("loc") or [])
        if loc[:2] == ["body", "body"]:
            loc = loc[:1] + loc[2:]
        detail.append({"loc": loc, "msg": error.get("msg", "invalid"), "type": error.get("type", "value_error")})
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(services.RateLimited)
def _rate_limited(request, exc):
    response = api.create_response(request, {"detail": str(exc)}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


# --- schemas (they are also the OpenAPI documentation) --------------------------------------
class JobIn(Schema):
    """Give `prompt` or `workflow`, not both. The rules no schema can say (one of the two, a
    workflow ComfyUI can run and that saves an output) are checked too, and answer 422."""
    kind: Literal["image", "video"] = "image"
    preference: Literal["auto", "local", "cloud", "gemini"] = "auto"
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    workflow: Optional[dict] = Field(None, description="A ComfyUI workflow in API format")
    width: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="Empty: random")
    duration_seconds: Optional[int] = Field(None, ge=1, le=MAX_VIDEO_SECONDS, description="Video only (default 4)")
    priority: Literal["low", "normal", "high"] = "normal"
    webhook_url: Optional[str] = Field(None, max_length=500, description="Called with the job when it ends")


class FieldError(Schema):
    loc: list[Union[str, int]]  # ["body", "<field>"]
    msg: str
    type: str


class ValidationErrors(Schema):
    """422: one entry per refused field, in words to show the user."""
    detail: list[FieldError]


class AttemptOut(Schema):
    number: int
    backend: str
    status: str
    error: str
    started_at: Optional[str]
    finished_at: Optional[str]
    seconds: Optional[float]
    cost: str
    outage: bool  # lost to an outage of its backend (unreachable, timeout, 5xx)
    gpu: str  # the backend's GPU when the attempt was submitted ("" if it does not say)


class OutputOut(Schema):
    url: str
    mime: str
    size: int
    sha256: str
    filename: str


class QueuePosition(Schema):
    ahead: int
    backend: str


class JobOut(Schema):
    id: str
    status: str
    kind: str
    preference: str
    priority: str
    prompt: str
    custom_workflow: bool
    width: int
    height: int
    seed: int
    duration_seconds: int
    backend: Optional[str]
    reason: str
    progress: int
    cost: str
    error: str
    failovers: int  # attempts moved to another backend
    retries: int  # attempts tried again on the same backend
    waiting: bool
    waiting_for: str  # "gpu" (the local queue is full) or "outage" (a backend must answer again)
    queue_position: Optional[QueuePosition]
    eta_seconds: Optional[int]  # about how long until it is done, from its backend's learned times
    preview_url: Optional[str]  # while it runs: its latest live preview image (GET it with your token)
    created_at: Optional[str]
    started_at: Optional[str]
    finished_at: Optional[str]
    attempts: list[AttemptOut]
    outputs: list[OutputOut]


class JobList(Schema):
    count: int
    results: list[JobOut]


class BackendOut(Schema):
    name: str
    kind: str
    category: str
    status: str
    expected_cost: str
    expected_seconds: float
    queue: int
    gpu: str
    vram_total: Optional[int]
    supports_video: bool
    supports_workflows: bool


class Message(Schema):
    detail: str


MAX_OFFSET = 10**12
PRIORITIES = {"low": Priority.LOW, "normal": Priority.NORMAL, "high": Priority.HIGH}


def _base(request) -> str:
    return request.build_absolute_uri("/")


# --- jobs ----------------------------------------------------------------------------------
@api.post("/jobs", response={201: JobOut, 400: Message, 401: Message, 422: ValidationErrors, 429: Message},
          tags=["jobs"])
def job_create(request, body: JobIn):
    """Submit a job: a prompt (filled into a bundled ComfyUI template) or a full API-format
    ComfyUI workflow. It is queued at once; follow it with GET /api/jobs/{id}."""
    try:
        workflow_text = json.dumps(body.workflow) if body.workflow is not None else ""
    except (RecursionError, ValueError):
        raise FieldErrors({"workflow": ["The workflow is not valid JSON: it is nested too deeply."]})
    form = JobForm({**body.dict(exclude={"workflow", "priority", "webhook_url"}),
                    "seed": "" if body.seed is None else body.seed,
                    "duration_seconds": "" if body.duration_seconds is None else body.duration_seconds,
                    "workflow": workflow_text})
    if not form.is_valid():
        raise FieldErrors({("body" if k == "__all__" else k): v for k, v in form.errors.items()})
    if body.webhook_url:
        try:
            validate_webhook_url(body.webhook_url)
        except WebhookRefused as refused:
            raise FieldErrors({"webhook_url": [str(refused)]})
    data = form.cleaned_data
    job = services.job_submit(
        user=request.auth, kind=data["kind"], preference=data["preference"], prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt") or "", width=data["width"], height=data["height"],
        seed=data["seed"] if data.get("seed") is not None else secrets.randbelow(2**32),
        duration_seconds=data.get("duration_seconds") or 0, workflow=data.get("workflow"),
        priority=PRIORITIES[body.priority], webhook_url=body.webhook_url or "",
    )
    return Status(201, job_dict(job, _base(request)))


@api.get("/jobs", response={200: JobList, 401: Message, 422: ValidationErrors}, tags=["jobs"])
def job_list(request, status: str = "", backend: str = "", limit: int = 50,
             offset: int = Query(0, ge=0, le=MAX_OFFSET)):
    """Your jobs, newest first. Filter by status (queued, running, succeeded…) or backend
    category (local, cloud, gemini)."""
    jobs = selectors.jobs_for_user(user=request.auth, status=status if status in JobStatus.values else "",
                                   backend=backend if backend in Category.values else "")
    limit = max(1, min(limit, 200))  # (the offset is bounded by its schema: a database takes 64-bit offsets)
    page = jobs.prefetch_related("attempts__backend", "outputs")[offset:offset + limit]
    return {"count": jobs.count(), "results": [job_dict(job, _base(request)) for job in page]}


@api.get("/jobs/{job_id}", response={200: JobOut, 401: Message, 404: Message, 422: ValidationErrors}, tags=["jobs"])
def job_get(request, job_id: uuid.UUID):
    """One of your jobs: status, attempts, cost and output URLs. Anyone else's is a 404."""
    return job_dict(_own(request, job_id), _base(request))


@api.post("/jobs/{job_id}/cancel", tags=["jobs"],
          response={200: JobOut, 401: Message, 404: Message, 409: Message, 422: ValidationErrors})
def job_cancel(request, job_id: uuid.UUID):
    """Cancel a job that has not finished; a running attempt is cancelled on its backend too."""
    job = _own(request, job_id)
    if not services.job_cancel(user=request.auth, job_id=job.id):
        return Status(409, {"detail": f"The job has already finished ({job.status}); nothing to cancel."})
    job.refresh_from_db()
    return job_dict(job, _base(request))


PREVIEW_RESPONSE = {"200": {"description": "The latest live preview of the running job", "content": {
    mime: {"schema": {"type": "string", "format": "binary"}} for mime in ("image/jpeg", "image/png")}}}


@api.get("/jobs/{job_id}/preview", response={401: Message, 404: Message, 422: ValidationErrors}, tags=["jobs"],
         openapi_extra={"responses": PREVIEW_RESPONSE})
def job_preview(request, job_id: uuid.UUID):
    """While the job runs on a ComfyUI that streams previews (samplers, `--preview-method`): the
    latest one (a few per second at most). 404 when there is none, or the job is not running."""
    preview = selectors.job_preview(_own(request, job_id))
    if preview is None:
        return Status(404, {"detail": "No live preview for this job (it is not running, or its backend sends none)."})
    response = HttpResponse(preview[1], content_type=preview[0])
    response["Cache-Control"] = "no-store"
    return response


def _own(request, job_id: uuid.UUID) -> Job:
    return get_object_or_404(Job.objects.select_related("backend"), id=job_id, user=request.auth)


# --- backends, costs, health ----------------------------------------------------------------
@api.get("/backends", response={200: list[BackendOut], 401: Message, 422: ValidationErrors}, tags=["backends"])
def backend_list(request, kind: Literal["image", "video"] = "image"):
    """Every backend with its live status and the expected cost and time of a job of `kind`."""
    cards = selectors.backend_cards(kind=JobKind(kind), local_queue_limit=settings.LOCAL_QUEUE_LIMIT)
    return [{
        "name": c["backend"].name, "kind": c["backend"].kind, "category": c["backend"].category,
        "status": c["status"], "expected_cost": f"{c['cost']:.6f}", "expected_seconds": c["seconds"],
        "queue": c["queue"], "gpu": c["backend"].gpu_name, "vram_total": c["backend"].vram_total,
        "supports_video": c["backend"].supports_video, "supports_workflows": c["backend"].supports_workflows,
    } for c in cards]


@api.get("/costs", response={200: dict, 401: Message, 422: ValidationErrors}, tags=["costs"])
def cost_figures(request, days: int = 30, scope: Literal["me", "all"] = "me"):
    """Jobs, spend, savings, success rates and projections for the last `days` days. Staff may
    ask for `scope=all` (the whole installation)."""
    start, end = period(max(1, min(days, 366)))
    user = None if scope == "all" and request.auth.is_staff else request.auth
    figures = as_json(metrics(start=start, end=end, user=user))
    if user is not None:
        figures["caps"] = as_json(caps.user_remaining(user_id=user.id))
    figures["scope"] = "all" if user is None else "me"
    return figures


@api.get("/health", auth=None, tags=["health"])
def health(request):
    """Liveness of the database and the broker, and each backend's stored health."""
    try:
        connection.ensure_connection()
        database = "ok"
    except Exception as error:  # any driver error means "down"
        database = f"error: {error.__class__.__name__}"
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        broker = "ok"
    except Exception as error:
        broker = f"error: {error.__class__.__name__}"
    backends = {b.name: ("disabled" if not b.enabled else effective_health(b)) for b in Backend.objects.all()}
    ok = database == "ok" and broker == "ok"
    return api.create_response(request, {"ok": ok, "database": database, "broker": broker, "backends": backends},
                               status=200 if ok else 503)
