"""`manage.py install_comfyui`: the installer in a terminal, with progress bars.

The run is recorded as an InstallRun like one started from the web page, so the page shows
its progress and its Pause / Cancel buttons work on it. Ctrl-C pauses (run the command again
to resume from where it stopped); a paused, failed or queued install is taken over.
"""
import argparse
import sys

from django.core.management.base import BaseCommand, CommandError

from workers.installer.server import selectors, services
from workers.installer.server import adapter
from workers.installer.cli import add_install_arguments, options_from_args
from workers.installer.console import ConsoleReporter, CtrlCPauses, confirm_on_terminal
from workers.installer.server.models import InstallStatus

STOPPED = 3  # exit code for paused / cancelled


class Command(BaseCommand):
    help = ("Install (or resume, or repair) ComfyUI on this machine: GPU check, ComfyUI, models, PyTorch, "
            "service, start, verify, and register it as the local backend.")

    def add_arguments(self, parser):
        add_install_arguments(parser)

    def handle(self, *args, **opts):
        if not opts["yes"] and not sys.stdin.isatty():
            raise CommandError("Nothing to ask here: pass --yes to install without a prompt.")
        options = options_from_args(argparse.Namespace(**opts)).as_dict()
        run_id, generation = self._run_for(options)
        with CtrlCPauses() as ctrl_c:
            confirm = None if opts["yes"] else confirm_on_terminal(self.stdout)
            outcome = adapter.execute(run_id=run_id, generation=generation, report=ConsoleReporter(self.stdout),
                                      extra_control=ctrl_c, confirm=confirm)
        self._finish(run_id, outcome)

    def _run_for(self, options: dict) -> tuple:
        active = selectors.active_run()
        if active is None:  # a new install, or the same folder's failed or cancelled one again
            run = services.install_start(user=None, options=options, send=False)
            if run.generation > 1:
                self.stdout.write(f"Continuing install #{run.id} from where it stopped.")
            return run.id, run.generation
        # A killed installer's row still says "running"; its folder lock, freed by the OS the
        # moment the process died, says otherwise: take over at once, not after the heartbeat ages.
        gone = selectors.holder_gone(active)
        if active.status == InstallStatus.RUNNING and not (gone or selectors.is_stalled(active)):
            raise CommandError(f"Install #{active.id} is running on a worker right now; pause or cancel it on the "
                               "install page first.")
        generation = services.install_take_over(run_id=active.id, options=options, holder_gone=gone)
        if generation is None:
            raise CommandError(f"Install #{active.id} changed state meanwhile; run the command again.")
        self.stdout.write(f"Continuing install #{active.id} from where it stopped.")
        return active.id, generation

    def _finish(self, run_id: int, outcome: str) -> None:
        run = selectors.run_get(run_id=run_id)
        if outcome == InstallStatus.SUCCEEDED:
            self.stdout.write(self.style.SUCCESS(run.message))
        elif outcome == InstallStatus.FAILED:
            raise CommandError(run.error)
        elif outcome in (InstallStatus.PAUSED, InstallStatus.CANCELLED):
            raise CommandError(f"{run.message} Run the command again to continue.", returncode=STOPPED)
        else:
            raise CommandError(f"Install #{run_id} was taken over elsewhere ({outcome}).")
