"""On-demand RunPod pods as rows, so a restart of this server orphans nothing.

A row exists BEFORE the pod is asked for (status starting, no RunPod id yet) and outlives it
(terminated, with its costs). Which job ran on which pod is a PodAssignment row, so "busy",
"idle since" and "jobs processed" come from our own job records, never from process memory.
State changes are conditional updates (services.py), like everywhere else.
"""

from django.db import models

from routing.models import MONEY, Attempt, Backend


class PodStatus(models.TextChoices):
    STARTING = "starting", "Starting"  # asked for (or being asked for); not answering yet
    READY = "ready", "Ready"  # ComfyUI answers; has not run a job yet
    BUSY = "busy", "Busy"  # has jobs in flight
    IDLE = "idle", "Idle"  # answers, ran jobs, none in flight now
    TERMINATING = "terminating", "Terminating"  # the reaper (or a failure) decided; API call pending
    TERMINATED = "terminated", "Terminated"
    FAILED = "failed", "Failed"  # never became usable, or its ComfyUI died; terminated too


LIVE = (PodStatus.STARTING, PodStatus.READY, PodStatus.BUSY, PodStatus.IDLE)
USABLE = (PodStatus.READY, PodStatus.BUSY, PodStatus.IDLE)  # can take a job now
RUNNING_REMOTELY = LIVE + (PodStatus.TERMINATING,)  # may still be billing


class CloudPod(models.Model):
    backend = models.ForeignKey(Backend, on_delete=models.PROTECT, related_name="pods")
    name = models.CharField(max_length=100, unique=True, help_text="Name given to RunPod; reconcile matches it")
    runpod_id = models.CharField(max_length=64, unique=True, null=True, blank=True,
                                 help_text="RunPod pod id, known once the create call answered")
    url = models.URLField(blank=True, help_text="The pod's ComfyUI (RunPod proxy)")
    gpu_type = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=PodStatus.choices, default=PodStatus.STARTING, db_index=True)
    cost_per_hour = models.DecimalField(**MONEY)
    probe_failures = models.PositiveSmallIntegerField(default=0, help_text="Failed ComfyUI probes in a row")
    # What this pod's ComfyUI holds (its image, and the network volume as it was when read), in the
    # backend inventory's shape. Read before the pod is ready; a pod whose inventory is not known
    # gets no job (placement.py).
    inventory = models.JSONField(default=dict, blank=True, help_text="Model files and node classes it has")
    last_error = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    last_job_ended_at = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)

    jobs_processed = models.PositiveIntegerField(default=0)
    busy_seconds = models.FloatField(default=0.0, help_text="Time with at least one job in flight")
    uptime_cost = models.DecimalField(**MONEY)
    idle_cost = models.DecimalField(**MONEY, help_text="Pod time that served no job (wasted)")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.runpod_id or 'not created'}, {self.status})"


class SyncStatus(models.TextChoices):
    STARTING = "starting", "Starting"  # the pod is being asked for, or its sync has not answered yet
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


LIVE_SYNCS = (SyncStatus.STARTING, SyncStatus.RUNNING)


class VolumeSync(models.Model):
    """One fill or update of the network volume, run on a short-lived pod (workers/pods/volume.py)."""

    name = models.CharField(max_length=100, unique=True, help_text="Name given to RunPod's pod")
    volume_id = models.CharField(max_length=64)
    runpod_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    url = models.URLField(blank=True, help_text="The sync pod's status (RunPod proxy)")
    gpu_type = models.CharField(max_length=100, blank=True)
    cost_per_hour = models.DecimalField(**MONEY)
    status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.STARTING, db_index=True)
    files = models.JSONField(default=list, blank=True, help_text="What it fetches: name, url, dest, size, sha256")
    progress = models.JSONField(default=dict, blank=True, help_text="The sync pod's last GET /sync answer")
    message = models.TextField(blank=True)
    cost = models.DecimalField(**MONEY, help_text="The sync pod's uptime, recorded as the installation's spend")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"volume sync {self.name} ({self.status})"


class PodAssignment(models.Model):
    """This attempt runs (ran) on this pod. Written by the service that chooses the pod,
    before the attempt is submitted, so a redelivered submit goes to the same pod."""

    attempt = models.OneToOneField(Attempt, on_delete=models.CASCADE, related_name="pod_assignment")
    pod = models.ForeignKey(CloudPod, on_delete=models.CASCADE, related_name="assignments")
    created_at = models.DateTimeField(auto_now_add=True)
    cost = models.DecimalField(**MONEY, help_text="What the job was charged for its seconds on this pod, copied when the pod ends")
    cost_settled = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at"]

    def __str__(self):
        return f"{self.attempt_id} on {self.pod.name}"
