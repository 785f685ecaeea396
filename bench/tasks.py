"""Baseline tasks: raw Celery on the project's own app and configuration.

The project sets task_ignore_result=True (state lives in the database); the baselines need a
result to wait on, so they opt back in with ignore_result=False. They run on their own
queue, consumed by the same worker processes as the project's queues.
"""
from project.celery import app

QUEUE = "bench"


@app.task(name="bench.noop", ignore_result=False, queue=QUEUE)
def noop():
    """Nothing at all: what one Celery task costs on this broker and these workers."""
    return None


@app.task(name="bench.echo", ignore_result=False, queue=QUEUE)
def echo(value):
    """A `delay().get()` round trip: producer → broker → worker → result backend → producer."""
    return value
