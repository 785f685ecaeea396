"""The project's Celery app plus the bench-only tasks, for `celery -A bench.celery_app worker`.

The workers the benchmarks start run this app: every project task (same configuration,
same broker) and the raw baseline tasks, served by the same processes. So "same broker and
worker count" holds by construction. bench/querycount.py counts their SQL statements.
"""
from project.celery import app

from . import querycount, tasks  # noqa: F401  (registers bench.noop, bench.echo and bench.queries)

__all__ = ("app",)
