"""Pods in the admin: read-mostly (rows change through the services); one action terminates."""
from django.contrib import admin, messages

from . import services
from .models import CloudPod, PodAssignment


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
