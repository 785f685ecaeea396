"""Fill or update the RunPod network volume with the manifest's models.

    python manage.py sync_volume [--with-optional] [--no-wait]

Starts a short-lived pod in the volume's data center that downloads the models onto the volume
(resumable, SHA-256 verified: workers/pods/volume.py), prints its progress, and ends it when it
is done. Stopped (Ctrl-C, or killed), the sync goes on: beat checks it and terminates its pod at
the end; running the command again follows it. A sync that failed resumes its downloads.
"""
import time

from django.core.management.base import BaseCommand, CommandError

from workers.installer.errors import Failure
from workers.installer.progress import human_bytes
from workers.pods import volume
from workers.pods.models import LIVE_SYNCS, SyncStatus, VolumeSync

CHECK_EVERY = 5.0


def progress_line(row: VolumeSync) -> str:
    status = row.progress or {}
    done, total = status.get("bytes_done", 0), status.get("bytes_total", 0)
    share = f" ({100 * done // total}%)" if total else ""
    sizes = f"{human_bytes(done)} of {human_bytes(total)}{share}; " if total else ""
    return f"[{row.status}] {sizes}{row.message or 'waiting for the sync pod'}"


class Command(BaseCommand):
    help = "Fill or update the RunPod network volume with the manifest's models, on a short-lived pod."

    def add_arguments(self, parser):
        parser.add_argument("--with-optional", action="store_true", help="also the manifest's optional models")
        parser.add_argument("--no-wait", action="store_true", help="start it and return (beat finishes it)")
        parser.add_argument("--manifest", default="", help="manifest JSON (default: deploy/comfyui-manifest.json)")

    def handle(self, *args, with_optional, no_wait, manifest, **options):
        try:
            row, started = volume.volume_sync_start(with_optional=with_optional, spawn_here=True,
                                                    manifest_path=manifest or volume.DEFAULT_MANIFEST)
        except volume.SyncRefused as refused:
            raise CommandError(str(refused)) from None
        except Failure as failure:  # an unreadable manifest
            raise CommandError(f"{failure.cause} — {failure.fix}") from None
        files = row.files
        self.stdout.write(f"{'Started' if started else 'Following the sync under way:'} {row.name}: "
                          f"{len(files)} file(s), {human_bytes(sum(f['size'] for f in files))}, "
                          f"onto network volume {row.volume_id}")
        if started:
            volume.volume_sync_spawn(sync_id=row.id)
        if no_wait:
            return
        last = ""
        while True:
            status = volume.volume_sync_check(sync_id=row.id)
            row.refresh_from_db()
            line = progress_line(row)
            if line != last:
                self.stdout.write(line)
                last = line
            if status not in LIVE_SYNCS:
                break
            time.sleep(CHECK_EVERY)
        if row.status != SyncStatus.DONE:
            raise CommandError(f"The sync failed: {row.message}")
        self.stdout.write(self.style.SUCCESS(f"The volume holds every model; the sync pod cost ${row.cost:.4f}"))
