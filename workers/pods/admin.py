"""Pods in the admin: read-mostly (rows change through the services); one action terminates.
Volume syncs: "Add" starts one (or shows the one under way); each row shows its progress."""
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse

from workers.installer.errors import Failure
from workers.installer.progress import human_bytes

from . import services, volume
from .models import CloudPod, PodAssignment, VolumeSync


class PodAssignmentInline(admin.TabularInline):
    model = PodAssignment
    extra = 0
    can_delete = False
    fields = ("attempt", "created_at", "cost", "cost_settled")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(CloudPod)
class CloudPodAdmin(admin.ModelAdmin):
    list_display = ("name", "runpod_id", "status", "gpu_type", "cost_per_hour", "created_at", "ready_at",
                    "last_job_ended_at", "terminated_at", "jobs_processed", "uptime_cost", "idle_cost")
    list_filter = ("status", "gpu_type", "backend")
    search_fields = ("name", "runpod_id", "last_error")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in CloudPod._meta.fields]
    inlines = [PodAssignmentInline]
    actions = ["terminate_pods"]

    def has_add_permission(self, request):
        return False  # pods are created by the autoscaler, never by hand

    def has_delete_permission(self, request, obj=None):
        return False  # the rows are the record of what was billed

    @admin.action(description="Terminate selected pods now")
    def terminate_pods(self, request, queryset):
        done = sum(services.pod_give_up(pod_id=pod.id, error="terminated by staff in the admin") for pod in queryset)
        self.message_user(request, f"Terminating {done} pod(s).", messages.SUCCESS)


@admin.register(VolumeSync)
class VolumeSyncAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "progress_text", "gpu_type", "cost", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = [f.name for f in VolumeSync._meta.fields] + ["progress_text"]

    @admin.display(description="Progress")
    def progress_text(self, row):
        status = row.progress or {}
        done, total = status.get("bytes_done", 0), status.get("bytes_total", 0)
        sizes = f"{human_bytes(done)} of {human_bytes(total)} · " if total else ""
        return f"{sizes}{row.message}"

    def has_delete_permission(self, request, obj=None):
        return False  # the record of what the sync pods cost

    def add_view(self, request, form_url="", extra_context=None):
        """"Add volume sync" starts one: fetch the manifest's models onto the network volume."""
        try:
            row, started = volume.volume_sync_start()
        except volume.SyncRefused as refused:
            self.message_user(request, str(refused), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:pods_volumesync_changelist"))
        except Failure as failure:
            self.message_user(request, f"{failure.cause} — {failure.fix}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:pods_volumesync_changelist"))
        note = "Started" if started else "A sync is already under way:"
        self.message_user(request, f"{note} {row.name}: {len(row.files)} file(s); beat follows it and ends its pod.",
                          messages.SUCCESS if started else messages.WARNING)
        return HttpResponseRedirect(reverse("admin:pods_volumesync_change", args=[row.id]))
