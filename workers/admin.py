"""Django's admin autodiscovery imports this module: the installer's admin is registered there."""
from workers.installer.server import admin  # noqa: F401
