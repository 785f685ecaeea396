"""Counts every SQL statement the bench worker processes run, for the overhead benchmark.

The counter is one integer in shared memory, created when the worker's main process imports
`bench.celery_app`, so every prefork child (forked later, restarted ones too) adds to the same
number. Each database connection any child opens, in any thread, gets an execute wrapper
(`connection_created`), so nothing the job path does can slip past, whatever its shape.
A statement is what reaches `cursor.execute`/`executemany`: what Django's
CaptureQueriesContext counts (BEGIN and savepoints included; driver-level COMMIT not).

`bench.queries` reads the total from any child; the benchmark reads it before and after its
jobs and divides. The count costs one locked increment (~1 µs) per statement.
"""
import multiprocessing

from django.db.backends.signals import connection_created
from django.dispatch import receiver

from project.celery import app

from .tasks import QUEUE

STATEMENTS = multiprocessing.Value("q", 0)


def count(execute, sql, params, many, context):
    with STATEMENTS.get_lock():
        STATEMENTS.value += 1
    return execute(sql, params, many, context)


@receiver(connection_created, dispatch_uid="bench.querycount")
def _wrap(sender, connection, **kwargs):
    if count not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, count)  # first: a `with execute_wrapper()` pops the last


@app.task(name="bench.queries", ignore_result=False, queue=QUEUE)
def queries() -> int:
    """Every statement the worker processes have run since they started."""
    return STATEMENTS.value


def worker_total(timeout: float = 30) -> int:
    """Read from the bench process: a round trip to any worker child."""
    result = queries.delay()
    value = result.get(timeout=timeout)
    result.forget()
    return value
