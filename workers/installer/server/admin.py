from django.contrib import admin

from .models import InstallRun


@admin.register(InstallRun)
class InstallRunAdmin(admin.ModelAdmin):
    """Read-mostly: state is written by the installer; pause/resume/cancel live on the page."""

    list_display = ("id", "status", "step", "progress", "install_path", "created_by", "created_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("install_path", "message", "error")
    readonly_fields = ("status", "step", "steps", "progress", "bytes_done", "bytes_total", "speed", "eta", "message",
                       "error", "control", "options", "install_path", "plan", "generation", "heartbeat_at",
                       "created_by", "created_at", "updated_at", "started_at", "finished_at")

    def has_add_permission(self, request):
        return False  # installs start from the install page, which dispatches the task
