from django.apps import AppConfig
from django.core.checks import Tags, register
from django.db.models.signals import post_migrate

from project.checks import secret_keys


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self):
        from .defaults import ensure_default_backends

        register(secret_keys, Tags.security, deploy=True)

        post_migrate.connect(ensure_default_backends, sender=self)
