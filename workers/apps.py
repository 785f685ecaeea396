from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers"

    def ready(self):
        from .schedules import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
