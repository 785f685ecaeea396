from django.apps import AppConfig


class PodsConfig(AppConfig):
    """RunPod on-demand pods: rows in the database, never only memory (a restart orphans nothing)."""

    name = "workers.pods"
    label = "pods"
    verbose_name = "Cloud pods"
