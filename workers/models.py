"""The workers app's models: the installer's runs, defined with the installer's server side
(workers/installer/server/models.py) and imported here so that Django registers them under this
app, as its migrations expect. The pods have their own app (workers/pods)."""
from workers.installer.server.models import (ACTIVE_INSTALL_STATES, HEARTBEAT_STALE_SECONDS,  # noqa: F401
                                             InstallControl, InstallRun, InstallStatus)
