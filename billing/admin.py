from django.contrib import admin

from .models import LedgerEntry, SpendCap, SpendCounter


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records are shown, never edited: corrections are new ledger entries."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "amount", "user", "category", "backend", "job", "pod_id", "day", "note")
    list_filter = ("kind", "category", "backend", "created_at")
    search_fields = ("key", "user__username", "job__id", "pod_id", "note")
    date_hierarchy = "created_at"
    list_select_related = ("user", "backend", "job")


@admin.register(SpendCounter)
class SpendCounterAdmin(ReadOnlyAdmin):
    list_display = ("scope", "user", "period", "amount")
    readonly_fields = ("scope", "user", "period", "micros")
    list_filter = ("scope", "period")
    search_fields = ("user__username",)


@admin.register(SpendCap)
class SpendCapAdmin(admin.ModelAdmin):
    list_display = ("user", "daily", "monthly")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
