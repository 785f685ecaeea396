"""Installer tasks (the one-click local ComfyUI installer issue).

One task runs an install (or the rest of one) on the `local` queue, on the GPU machine.
Pause ends the task with the partial download and its state on disk; Resume dispatches it
again with a new generation and it continues from the byte where it stopped.

With Redis, a message unacknowledged for longer than the broker's visibility timeout is
delivered again while the first task still runs: the duplicate finds the run claimed
(fresh heartbeat) and returns at once. After a worker is killed, the redelivered message
takes the run over once the heartbeat is stale, and resumes it.
"""
from celery import shared_task

from project import queues

from workers.base import CappedTask

from . import adapter, services

# A 20 GB model on a 10 Mbit/s line takes about 4.5 hours; the soft limit leaves a clean
# "failed: press Resume" (partial downloads kept) instead of a killed process.
INSTALL_SOFT_LIMIT = 8 * 3600
INSTALL_HARD_LIMIT = INSTALL_SOFT_LIMIT + 300


class InstallTask(CappedTask):
    def on_give_up(self, run_id, generation, *args, **kwargs):
        services.install_give_up(run_id=run_id, generation=generation)


# Named as before it moved here, so a message queued by an older release still finds it.
@shared_task(name="workers.install_tasks.run_install", queue=queues.LOCAL, base=InstallTask, acks_late=True,
             soft_time_limit=INSTALL_SOFT_LIMIT, time_limit=INSTALL_HARD_LIMIT)
def run_install(run_id, generation):
    return adapter.execute(run_id=run_id, generation=generation)
