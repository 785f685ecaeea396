"""A scratch PostgreSQL database for a race script: created, migrated, used, dropped.

The race scripts (tests/billing/cap_race.py, tests/routing/lock_race.py) run as their own process, with
DATABASE_URL pointing at the scratch database before Django is set up."""
import contextlib
import os


@contextlib.contextmanager
def scratch_database(prefix: str):
    """Yields once Django is set up on a fresh, migrated database; drops it afterwards."""
    import psycopg

    admin_url = os.environ["CAP_RACE_ADMIN_URL"]  # e.g. postgres://postgres@127.0.0.1:5432/postgres
    name = f"{prefix}_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        os.environ["DATABASE_URL"] = admin_url.rsplit("/", 1)[0] + f"/{name}"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        try:
            yield connections["default"].vendor
        finally:
            connections.close_all()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
