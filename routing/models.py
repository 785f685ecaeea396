"""Jobs, attempts, backends, outputs and per-user preferences.

State changes never go through `save()` on a loaded row: services use conditional updates
(`filter(id=..., status__in=expected).update(...)`) so that a task delivered twice is a no-op.
The moves of Job.status and Attempt.status, and the one update that makes them, are in
routing/transitions.py.
"""
import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from project import queues

MONEY = {"max_digits": 14, "decimal_places": 6, "default": Decimal("0")}


class Category(models.TextChoices):
    """What a user chooses between; each category has its own Celery queue."""

    LOCAL = "local", "Local GPU"
    CLOUD = "cloud", "Cloud GPU (RunPod)"
    GEMINI = "gemini", "Google Gemini"


QUEUE_FOR_CATEGORY = {
    Category.LOCAL: queues.LOCAL,
    Category.CLOUD: queues.CLOUD,
    Category.GEMINI: queues.GEMINI,
}


class PreferenceChoice(models.TextChoices):
    AUTO = "auto", "Auto (cheapest that can run it)"
    LOCAL = "local", "Local GPU only"
    CLOUD = "cloud", "Cloud GPU only"
    GEMINI = "gemini", "Gemini only"


class JobKind(models.TextChoices):
    IMAGE = "image", "Image"
    VIDEO = "video", "Video"


class Priority(models.IntegerChoices):
    LOW = 0, "Low"
    NORMAL = 1, "Normal"
    HIGH = 2, "High"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    ROUTED = "routed", "Routed"
    SUBMITTED = "submitted", "Submitted"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_JOB_STATES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_JOB_STATES = (JobStatus.QUEUED, JobStatus.ROUTED, JobStatus.SUBMITTED, JobStatus.RUNNING)


class AttemptStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUBMITTED = "submitted", "Submitted"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_ATTEMPT_STATES = (AttemptStatus.PENDING, AttemptStatus.SUBMITTED, AttemptStatus.RUNNING)


class HealthState(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    UP = "up", "Up"
    DOWN = "down", "Down"


class Backend(models.Model):
    """One place jobs can run: a ComfyUI server, a RunPod endpoint, or Gemini.

    URLs are set by staff only (admin or settings): nothing a user submits ever makes the
    server fetch a URL of the user's choosing.
    """

    class Kind(models.TextChoices):
        COMFYUI = "comfyui", "ComfyUI server"
        RUNPOD = "runpod", "RunPod serverless"
        POD = "pod", "RunPod on-demand pods"
        GEMINI = "gemini", "Google Gemini"

    name = models.SlugField(max_length=60, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    category = models.CharField(max_length=20, choices=Category.choices)
    url = models.URLField(blank=True, help_text="Base URL (ComfyUI) or API base override.")
    enabled = models.BooleanField(default=True)
    supports_video = models.BooleanField(default=True)
    supports_workflows = models.BooleanField(default=True, help_text="Runs custom ComfyUI workflows")
    priority = models.IntegerField(default=0, help_text="Lower is tried first among equals")

    # Cost model (USD). Local ComfyUI is free; cloud charges per second, Gemini per output.
    price_per_second = models.DecimalField(
        **MONEY, help_text="RunPod serverless: 0 = billing/prices.py for RUNPOD_ENDPOINT_GPU")
    price_per_image = models.DecimalField(**MONEY, help_text="Gemini: 0 = billing/prices.py for the configured model")
    price_per_video_second = models.DecimalField(**MONEY, help_text="Veo: 0 = billing/prices.py for the configured model")
    # Learned expected run time per job kind, seconds (exponential moving average).
    expected_image_seconds = models.FloatField(default=20.0)
    expected_video_seconds = models.FloatField(default=180.0)

    # Health, written by beat probes and task outcomes (hysteresis in routing/health.py).
    health = models.CharField(max_length=10, choices=HealthState.choices, default=HealthState.UNKNOWN)
    consecutive_failures = models.PositiveIntegerField(default=0)
    consecutive_successes = models.PositiveIntegerField(default=0)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    down_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The oldest probe sent to its queue that no worker has taken yet (cleared by the worker that
    # runs it). A ComfyUI backend's probe unanswered for WORKER_LOST_SECONDS: its machine or
    # worker is gone (routing/fleet.py).
    probe_sent_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    queue_depth = models.PositiveIntegerField(default=0, help_text="Remote queue_remaining")
    gpu_name = models.CharField(max_length=200, blank=True)
    vram_total = models.BigIntegerField(null=True, blank=True, help_text="bytes")
    config = models.JSONField(default=dict, blank=True, help_text="Non-secret options only")
    # What it can run: {"models": {folder: [files]}, "nodes": [classes], "source": ...}. Read from
    # ComfyUI's /object_info by the probe; declared in config["inventory"] for the serverless
    # endpoint. Empty: not known yet (the router does not refuse on it).
    inventory = models.JSONField(default=dict, blank=True, help_text="Model files and node classes it has")
    inventory_at = models.DateTimeField(null=True, blank=True, help_text="When it was read; empty: read again")

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self):
        return self.name

    @property
    def on_own_queue(self) -> bool:
        """A local GPU's ComfyUI (each machine of a fleet) has its own queue: only the worker
        beside it takes it. A ComfyUI that staff add as a cloud server is reached from anywhere,
        through `cloud`."""
        return self.kind == self.Kind.COMFYUI and self.category == Category.LOCAL

    @property
    def queue(self) -> str:
        if self.on_own_queue:
            return queues.for_comfyui(self.name)
        return QUEUE_FOR_CATEGORY[self.category]


class JobQuerySet(models.QuerySet):
    def update(self, **fields):
        # auto_now is skipped by QuerySet.update(); every state change here is an update(),
        # and the sweeper relies on updated_at to find jobs whose message was lost.
        fields.setdefault("updated_at", timezone.now())
        return super().update(**fields)


class Job(models.Model):
    objects = JobQuerySet.as_manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=10, choices=JobKind.choices, default=JobKind.IMAGE)
    preference = models.CharField(max_length=10, choices=PreferenceChoice.choices, default=PreferenceChoice.AUTO)
    prompt = models.TextField(blank=True)
    negative_prompt = models.TextField(blank=True)
    width = models.PositiveIntegerField(default=512)
    height = models.PositiveIntegerField(default=512)
    seed = models.BigIntegerField(default=0)
    duration_seconds = models.PositiveIntegerField(default=0, help_text="Video length")
    workflow = models.JSONField(null=True, blank=True, help_text="Custom ComfyUI API workflow")

    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)

    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # Queued behind a full local GPU queue, or for a backend in an outage; admitted in fair
    # order when there is room or the backend answers again.
    waiting = models.BooleanField(default=False)
    waiting_for = models.CharField(max_length=10, blank=True, help_text="gpu (queue full) / outage")
    waiting_since = models.DateTimeField(null=True, blank=True)
    backend = models.ForeignKey(Backend, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    reason = models.TextField(blank=True, help_text="Why the current backend was chosen")
    decision = models.JSONField(default=dict, blank=True, help_text="Reasons per candidate")
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    failovers = models.PositiveSmallIntegerField(default=0, help_text="Attempts moved to another backend")
    retries = models.PositiveSmallIntegerField(default=0, help_text="Attempts tried again on the same backend")
    cost = models.DecimalField(**MONEY)
    # Called once when the job ends (signed, retried): see routing/webhooks.py.
    webhook_url = models.URLField(blank=True, max_length=500)
    webhook_state = models.CharField(max_length=12, blank=True, help_text="pending / delivered / failed")
    webhook_tries = models.PositiveSmallIntegerField(default=0, help_text="delivery tries made so far")
    # When the next try is due: a pending webhook past it (its message lost with Redis) is sent
    # again by the sweeper.
    webhook_due_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"]), models.Index(fields=["user", "-created_at"]),
                   models.Index(fields=["waiting", "status", "-priority", "created_at"])]

    def __str__(self):
        return f"{self.kind} job {str(self.id)[:8]} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_JOB_STATES

    @property
    def is_custom_workflow(self) -> bool:
        return self.workflow is not None


class Attempt(models.Model):
    """One try of a job on one backend. The remote handle is stored so nothing is lost."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts")
    backend = models.ForeignKey(Backend, on_delete=models.PROTECT, related_name="attempts")
    number = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=12, choices=AttemptStatus.choices, default=AttemptStatus.PENDING)
    handle = models.JSONField(default=dict, blank=True, help_text="Remote job handle")
    error = models.TextField(blank=True)
    retryable = models.BooleanField(default=False)
    # Lost to an outage of its backend (unreachable, timeout, 5xx, restarted): the job may wait
    # for that backend to answer again instead of counting it as having failed the job.
    outage = models.BooleanField(default=False)
    progress = models.PositiveSmallIntegerField(default=0)
    seconds = models.FloatField(null=True, blank=True, help_text="Remote execution time")
    cost = models.DecimalField(**MONEY)
    # Each poll task carries the sequence number it expects; a stale duplicate is dropped,
    # so a redelivered poll can never fork a second poll chain.
    poll_seq = models.PositiveIntegerField(default=0)
    # Each of the next two serves both phases of an attempt, which its status tells apart (pending:
    # being sent; sent: polled; never both at once), so its name says what the phases share: when a
    # task last took the attempt, and how its backend answered lately. One field for both, not two:
    # no column is ever idle, and the rename (from polled_at, poll_errors) keeps the data.
    claimed_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When a task last claimed it: pending, the submit's lease (a redelivered submit waits "
                  "SUBMIT_LEASE_SECONDS); sent, the last poll (the sweeper resends a chain silent too long)")
    remote_errors = models.PositiveSmallIntegerField(
        default=0, help_text="Its backend's errors in a row: pending, submits to send again (SUBMIT_RETRIES); "
                             "sent, failed polls (MAX_POLL_ERRORS)")
    submit_tries = models.PositiveSmallIntegerField(default=0, help_text="Times a submit was started")
    # Where it ran, as it was when submitted (a fleet's machines change): the Celery worker that
    # submitted it and the backend's GPU.
    worker = models.CharField(max_length=200, blank=True, help_text="Celery worker that submitted it")
    gpu = models.CharField(max_length=200, blank=True, help_text="The backend's GPU when it was submitted")
    queue_position = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs ahead on the backend")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    running_at = models.DateTimeField(null=True, blank=True, help_text="First seen running on the backend")
    call_open = models.BooleanField(default=False, help_text="A call that may start a paid run is under way")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="attempt_number_unique")]
        indexes = [models.Index(fields=["backend", "status"]), models.Index(fields=["status", "claimed_at"])]

    def __str__(self):
        return f"attempt {self.number} of {self.job_id} on {self.backend_id}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_ATTEMPT_STATES


def output_path(instance, filename):
    return f"outputs/{instance.job_id}/{instance.attempt_id}/{instance.index:02d}-{filename}"


class Output(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="outputs")
    attempt = models.ForeignKey(Attempt, on_delete=models.CASCADE, related_name="outputs")
    index = models.PositiveSmallIntegerField()
    file = models.FileField(upload_to=output_path, max_length=300)
    filename = models.CharField(max_length=200)
    mime = models.CharField(max_length=100)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["attempt", "index"], name="output_index_unique")]

    def __str__(self):
        return self.filename

    @property
    def is_video(self) -> bool:
        return self.mime.startswith("video/")


class Preference(models.Model):
    """The backend preference a user last chose; the submit form starts from it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="backend_preference")
    preference = models.CharField(max_length=10, choices=PreferenceChoice.choices, default=PreferenceChoice.AUTO)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.user}: {self.preference}"


class ApiToken(models.Model):
    """A per-user API key. Only its SHA-256 is stored; the key itself is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"
