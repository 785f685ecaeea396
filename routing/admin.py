from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from project import queues

from . import dispatch, fleet, selectors, services, tokens
from .models import ApiToken, Attempt, Backend, Job, JobStatus, Output, Preference


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "category", "enabled", "health", "queue_depth", "gpu_name", "celery_queue",
                    "latency_ms", "last_probe_at", "price_per_second", "price_per_image")
    list_filter = ("kind", "category", "enabled", "health")
    search_fields = ("name", "url", "gpu_name")
    list_editable = ("enabled",)
    readonly_fields = ("health", "consecutive_failures", "consecutive_successes", "last_probe_at", "last_ok_at",
                       "down_since", "last_error", "latency_ms", "queue_depth", "gpu_name", "vram_total",
                       "inventory_table", "inventory_at")
    exclude = ("inventory", "probe_sent_at")
    actions = ["remove_from_fleet", "verify_serverless_inventory"]

    @admin.action(description="Verify the serverless inventory with a probe job (a few paid seconds)")
    def verify_serverless_inventory(self, request, queryset):
        endpoints = [b for b in queryset if b.kind == Backend.Kind.RUNPOD]
        for backend in endpoints:
            dispatch.send_on_commit(dispatch.INVENTORY_PROBE, [backend.id], queue=queues.CLOUD)
        skipped = len(queryset) - len(endpoints)
        note = f"; {skipped} skipped (only a RunPod serverless endpoint has one)" if skipped else ""
        self.message_user(request, f"Probe job sent for {len(endpoints)} endpoint(s): the next health probe "
                                   f"reads its answer{note}.", messages.SUCCESS if endpoints else messages.WARNING)

    @admin.display(description="Celery queue")
    def celery_queue(self, backend):
        return backend.queue

    @admin.action(description="Remove from the fleet (its jobs move to other backends)")
    def remove_from_fleet(self, request, queryset):
        outcomes = [fleet.backend_remove(backend_id=backend.id) for backend in queryset]
        self.message_user(request, "; ".join(outcomes), messages.SUCCESS)

    @admin.display(description="Inventory (what it can run)")
    def inventory_table(self, backend):
        summary = selectors.inventory_summary(backend)
        if not summary["known"]:
            return "Not known yet: read from ComfyUI's /object_info by the next probe, or declared in config as " \
                   '{"inventory": {"models": {"checkpoints": ["file.safetensors"]}, "nodes": [...]}}'
        rows = format_html_join("", "<li><strong>{}</strong>: {}</li>",
                                ((folder, ", ".join(files)) for folder, files in summary["models"].items()))
        nodes = "unknown" if summary["node_count"] is None else summary["node_count"]
        checked = (backend.config or {}).get("inventory_probe_last") or {}
        if checked.get("error"):
            check = format_html("<p>Last probe job: {}</p>", checked["error"])
        elif "declared_missing" in checked:
            missing = ", ".join(checked["declared_missing"]) or "nothing"
            check = format_html("<p>Last probe job ({}): declared but missing on the worker: {}</p>",
                                checked.get("at", ""), missing)
        else:
            check = ""
        return format_html("<ul>{}</ul><p>{} node classes; source: {}</p>{}", rows, nodes, summary["source"], check)


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ("number", "backend", "status", "outage", "worker", "gpu", "started_at", "finished_at", "seconds", "cost",
              "error")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


class OutputInline(admin.TabularInline):
    model = Output
    extra = 0
    can_delete = False
    fields = ("index", "filename", "mime", "size", "sha256")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("short_id", "user", "kind", "preference", "priority", "status", "backend", "progress",
                    "failovers", "retries", "cost", "created_at", "finished_at")
    list_filter = ("status", "kind", "preference", "priority", "backend", "created_at")
    search_fields = ("id", "prompt", "user__username", "error")
    date_hierarchy = "created_at"
    readonly_fields = ("id", "status", "backend", "reason", "decision", "progress", "error", "failovers", "retries",
                       "waiting", "waiting_for", "waiting_since", "cost",
                       "created_at", "updated_at", "started_at", "finished_at")
    inlines = [AttemptInline, OutputInline]
    actions = ["cancel_jobs", "retry_jobs"]
    list_select_related = ("user", "backend")

    @admin.display(description="Job")
    def short_id(self, job):
        return str(job.id)[:8]

    def save_model(self, request, obj, form, change):
        """A job added here is routed at once, like one from the form (not by the next sweep)."""
        super().save_model(request, obj, form, change)
        if not change and obj.status == JobStatus.QUEUED:
            dispatch.send_on_commit(dispatch.ROUTE, [str(obj.id)], queue=queues.CONTROL, priority=obj.priority)

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        done = sum(services.job_cancel(user=job.user, job_id=job.id) for job in queryset)
        self.message_user(request, f"Cancelled {done} job(s).", messages.SUCCESS)

    @admin.action(description="Run selected jobs again (as new jobs)")
    def retry_jobs(self, request, queryset):
        queued, limited = 0, []
        for job in queryset:
            try:
                services.job_retry(user=job.user, job_id=job.id)
                queued += 1
            except services.RateLimited as refusal:  # the owner's rate limit holds here too
                limited.append(f"{job.user}: {refusal}")
        self.message_user(request, f"Queued {queued} new job(s).", messages.SUCCESS)
        if limited:
            self.message_user(request, "Not queued: " + "; ".join(sorted(set(limited))), messages.WARNING)


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "number", "backend", "status", "started_at", "finished_at", "seconds", "cost")
    list_filter = ("status", "backend", "retryable", "outage")
    search_fields = ("id", "job__id", "error")
    readonly_fields = [f.name for f in Attempt._meta.fields]


@admin.register(Output)
class OutputAdmin(admin.ModelAdmin):
    list_display = ("filename", "job", "mime", "size", "created_at")
    search_fields = ("filename", "job__id", "sha256")
    readonly_fields = [f.name for f in Output._meta.fields]


@admin.register(Preference)
class PreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "preference", "updated_at")
    list_filter = ("preference",)
    search_fields = ("user__username",)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Staff can make a token for a user; the key is shown once, in the confirmation message."""

    form = ApiTokenForm
    list_display = ("name", "user", "prefix", "created_at", "last_used_at")
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        token, key = tokens.token_create(user=obj.user, name=obj.name)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token.digest
        self.message_user(request, f"Token for {obj.user}: {key} — copy it now, it is not shown again.",
                          messages.WARNING)
