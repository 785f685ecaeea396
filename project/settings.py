"""Settings, all from the environment (and `.env` when present). SQLite by default.

Every variable is documented in README.md, Configuration. Paid backends stay off until their
keys are set; a backend without its settings shows as "not configured", never as an error.
"""
from pathlib import Path

import dj_database_url

from . import queues
from .env import (
    env_bool,
    env_decimal,
    env_float,
    env_int,
    env_list,
    env_str,
    load_dotenv,
)

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")

VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# No hard-coded production key: without SECRET_KEY a per-checkout key is generated into
# var/secret_key by `make run`; this fallback only exists so `manage.py` works in tests.
SECRET_KEY = env_str("SECRET_KEY") or (
    (VAR_DIR / "secret_key").read_text().strip()
    if (VAR_DIR / "secret_key").is_file()
    else "insecure-development-key-set-SECRET_KEY-in-production"
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_celery_beat",
    "routing",
    "workers",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "project.context.links",
            ],
        },
    },
]


def _database():
    url = env_str("DATABASE_URL")
    if url:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    else:
        config = {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "db.sqlite3"}
    if config["ENGINE"].endswith("sqlite3"):
        # Several worker processes write at once: WAL lets readers run beside one writer,
        # and IMMEDIATE takes the write lock at BEGIN so two writers queue on the busy
        # timeout instead of failing with "database is locked" on lock upgrade.
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Tests use a file (not :memory:) so that real worker processes share the database.
        config["TEST"] = {"NAME": env_str("TEST_SQLITE_NAME", str(VAR_DIR / "test-db.sqlite3"))}
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Serve app static files straight from their folders: no collectstatic step for a newcomer.
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"  # never served publicly: outputs go through an owner-checking view
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("HTTPS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Celery -------------------------------------------------------------------------------
# Every name below is checked against
# https://docs.celeryq.dev/en/stable/userguide/configuration.html (unknown names are ignored
# silently, so each carries the setting it maps to).
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)  # broker_url
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)  # result_backend
CELERY_TASK_IGNORE_RESULT = True  # task_ignore_result: state lives in the database
CELERY_ACCEPT_CONTENT = ["json"]  # accept_content
CELERY_TASK_SERIALIZER = "json"  # task_serializer
CELERY_RESULT_SERIALIZER = "json"  # result_serializer
CELERY_TASK_ACKS_LATE = True  # task_acks_late: a worker killed mid-task loses nothing
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # task_reject_on_worker_lost: requeue on kill -9
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # worker_prefetch_multiplier: no hoarding of jobs
CELERY_TASK_TIME_LIMIT = 300  # task_time_limit: hard default, tasks set their own
CELERY_TASK_SOFT_TIME_LIMIT = 240  # task_soft_time_limit
CELERY_TASK_DEFAULT_QUEUE = queues.CONTROL  # task_default_queue
CELERY_TASK_CREATE_MISSING_QUEUES = True  # task_create_missing_queues
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # broker_connection_retry_on_startup
CELERY_BROKER_TRANSPORT_OPTIONS = {  # broker_transport_options
    # An unacked message of a dead worker is redelivered after this many seconds. Tasks here
    # run for seconds; countdowns stay far below it, so no live ETA task is redelivered.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600),
    # Sending must not hang a web request when Redis is down (issue 8: "no 500").
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "max_retries": 1,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2  # broker_connection_timeout
CELERY_WORKER_SEND_TASK_EVENTS = True  # worker_send_task_events: Flower shows tasks live
CELERY_TASK_SEND_SENT_EVENT = True  # task_send_sent_event
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"  # beat_scheduler
CELERY_TIMEZONE = "UTC"  # timezone
# Our own redelivery cap (Celery has none for Redis): a task id seen more often is dropped
# and its failure handler runs. See workers/base.py.
TASK_MAX_DELIVERIES = env_int("TASK_MAX_DELIVERIES", 5)

FLOWER_URL = env_str("FLOWER_URL", "http://127.0.0.1:5555")

# --- Backends -----------------------------------------------------------------------------
COMFYUI_URL = env_str("COMFYUI_URL", "http://127.0.0.1:8188")
COMFYUI_HTTP_TIMEOUT = env_float("COMFYUI_HTTP_TIMEOUT", 10.0)
COMFYUI_HEALTH_TIMEOUT = env_float("COMFYUI_HEALTH_TIMEOUT", 2.0)
# How long one poll task listens on ComfyUI's WebSocket for a running prompt before it
# hands the worker back and re-schedules itself.
COMFYUI_WATCH_SECONDS = env_float("COMFYUI_WATCH_SECONDS", 5.0)
COMFYUI_POLL_INTERVAL = env_float("COMFYUI_POLL_INTERVAL", 1.0)
COMFYUI_CHECKPOINT = env_str("COMFYUI_CHECKPOINT", "v1-5-pruned-emaonly.safetensors")
COMFYUI_VIDEO_CHECKPOINT = env_str("COMFYUI_VIDEO_CHECKPOINT", "wan2.1_t2v_1.3B_fp16.safetensors")

# --- RunPod (cloud): serverless endpoint and on-demand pods ---------------------------------
RUNPOD_API_KEY = env_str("RUNPOD_API_KEY")
RUNPOD_ENDPOINT_ID = env_str("RUNPOD_ENDPOINT_ID")
RUNPOD_ENDPOINT_BASE_URL = env_str("RUNPOD_ENDPOINT_BASE_URL", "https://api.runpod.ai/v2")
RUNPOD_API_BASE_URL = env_str("RUNPOD_API_BASE_URL", "https://api.runpod.io")
# Flex price per second of the endpoint's GPU (RTX 4090 PRO class, RunPod docs 2026-06).
RUNPOD_PRICE_PER_SECOND = env_decimal("RUNPOD_PRICE_PER_SECOND", "0.00031")

# --- Google Gemini --------------------------------------------------------------------------
GEMINI_API_KEY = env_str("GEMINI_API_KEY")
GEMINI_BASE_URL = env_str("GEMINI_BASE_URL")
# gemini-2.5-flash-image class pricing: 1290 output tokens × $30/M ≈ $0.039 per image.
GEMINI_PRICE_PER_IMAGE = env_decimal("GEMINI_PRICE_PER_IMAGE", "0.039")
# Veo 3.1 Standard at 720p/1080p (ai.google.dev pricing, 2026-10).
GEMINI_PRICE_PER_VIDEO_SECOND = env_decimal("GEMINI_PRICE_PER_VIDEO_SECOND", "0.40")

# --- Jobs and routing ---------------------------------------------------------------------
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
LOCAL_QUEUE_LIMIT = env_int("LOCAL_QUEUE_LIMIT", 5)
HEALTH_PROBE_SECONDS = env_int("HEALTH_PROBE_SECONDS", 15)
HEALTH_STALE_SECONDS = env_int("HEALTH_STALE_SECONDS", 120)
# Lost messages are re-sent by the sweeper after this long without progress.
SWEEP_AFTER_SECONDS = env_int("SWEEP_AFTER_SECONDS", 60)
SWEEP_EVERY_SECONDS = env_int("SWEEP_EVERY_SECONDS", 30)
WORKFLOW_MAX_BYTES = env_int("WORKFLOW_MAX_BYTES", 512 * 1024)
WORKFLOW_MAX_NODES = env_int("WORKFLOW_MAX_NODES", 500)
OUTPUT_MAX_BYTES = env_int("OUTPUT_MAX_BYTES", 512 * 1024 * 1024)
# A job in a non-final state longer than this is failed by the sweeper (never hangs forever).
JOB_DEADLINE_SECONDS = env_int("JOB_DEADLINE_SECONDS", 3 * 3600)

# --- Money --------------------------------------------------------------------------------
DAILY_CAP_USD = env_decimal("DAILY_CAP_USD", "5")
MONTHLY_CAP_USD = env_decimal("MONTHLY_CAP_USD", "50")
