"""Counts every SQL statement the bench worker processes run, for the overhead benchmark.

The counter is one integer in shared memory, created when the worker's main process imports
`bench.celery_app`, so every prefork child (forked later, restarted ones too) adds to the same
number. Each database connection any child opens, in any thread, gets an execute wrapper
(`connection_created`), so nothing the job path does can slip past, whatever its shape.
A statement is what reaches `cursor.execute`/`executemany`: what Django's
CaptureQueriesContext counts (BEGIN and savepoints included; driver-level COMMIT not).

Transaction control (BEGIN, SAVEPOINT, RELEASE, ROLLBACK) is also counted on its own, so a
figure can be read with or without it. `bench.queries` reads both totals from any child; the
benchmark reads them before and after its jobs and divides. The count costs one locked
increment (~1 µs) per statement.
"""
import multiprocessing

from django.db.backends.signals import connection_created
from django.dispatch import receiver

from project.celery import app

from .tasks import QUEUE

STATEMENTS = multiprocessing.Value("q", 0)
TRANSACTION_CONTROL = multiprocessing.Value("q", 0)
CONTROL_VERBS = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK")


def is_transaction_control(sql: str) -> bool:
    return sql.lstrip()[:9].upper().startswith(CONTROL_VERBS)


def count(execute, sql, params, many, context):
    with STATEMENTS.get_lock():
        STATEMENTS.value += 1
    if is_transaction_control(sql):
        with TRANSACTION_CONTROL.get_lock():
            TRANSACTION_CONTROL.value += 1
    return execute(sql, params, many, context)


@receiver(connection_created, dispatch_uid="bench.querycount")
def _wrap(sender, connection, **kwargs):
    if count not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, count)  # first: a `with execute_wrapper()` pops the last


@app.task(name="bench.queries", ignore_result=False, queue=QUEUE)
def queries() -> list:
    """[statements, of which transaction control] the worker processes have run since they started."""
    return [STATEMENTS.value, TRANSACTION_CONTROL.value]


def worker_total(timeout: float = 30) -> list:
    """Read from the bench process: a round trip to any worker child."""
    result = queries.delay()
    value = result.get(timeout=timeout)
    result.forget()
    return value
