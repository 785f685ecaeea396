"""The local installer's state, in the database: a page refresh or a web server restart
loses nothing, and the worker that runs the install and the page that shows it share it.

Like jobs, an InstallRun changes state only through conditional updates in
workers/installer/server/services.py. `generation` grows on every (re-)dispatch: a task carries the
generation it was sent with, so a stale or duplicate message can never run beside the
current one, and `heartbeat_at` lets a redelivered task take over from a dead worker.
"""
from django.conf import settings
from django.db import models
from django.utils import timezone


class InstallStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the local worker"
    RUNNING = "running", "Installing"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Installed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_INSTALL_STATES = (InstallStatus.SUCCEEDED, InstallStatus.FAILED, InstallStatus.CANCELLED)
ACTIVE_INSTALL_STATES = (InstallStatus.PENDING, InstallStatus.RUNNING, InstallStatus.PAUSED)
HEARTBEAT_STALE_SECONDS = 120  # a running install silent this long is presumed dead (services.py)


class InstallControl(models.TextChoices):
    NONE = "none", "None"
    PAUSE = "pause", "Pause requested"
    CANCEL = "cancel", "Cancel requested"


class InstallRunQuerySet(models.QuerySet):
    def update(self, **fields):
        fields.setdefault("updated_at", timezone.now())  # auto_now is skipped by update()
        return super().update(**fields)


class InstallRun(models.Model):
    objects = InstallRunQuerySet.as_manager()

    status = models.CharField(max_length=12, choices=InstallStatus.choices, default=InstallStatus.PENDING)
    step = models.CharField(max_length=20, blank=True, help_text="The step running (or that stopped)")
    steps = models.JSONField(default=list, blank=True, help_text="Per-step status, progress, bytes, speed, ETA")
    progress = models.PositiveSmallIntegerField(default=0, help_text="Whole install, 0-100")
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    speed = models.FloatField(default=0, help_text="bytes per second")
    eta = models.FloatField(null=True, blank=True, help_text="seconds")
    message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    control = models.CharField(max_length=8, choices=InstallControl.choices, default=InstallControl.NONE)
    options = models.JSONField(default=dict, blank=True, help_text="Installer options (path, skip models...)")
    install_path = models.CharField(max_length=500, blank=True)
    plan = models.JSONField(default=dict, blank=True, help_text="System check and what the install needs")
    generation = models.PositiveIntegerField(default=1)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="install_runs")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"install #{self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_INSTALL_STATES
