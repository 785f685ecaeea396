from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self):
        from .defaults import ensure_default_backends

        post_migrate.connect(ensure_default_backends, sender=self)
