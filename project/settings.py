"""Settings, all from the environment (and `.env` when present). SQLite by default.

Every variable is documented in README.md, Configuration. Paid backends stay off until their
keys are set; a backend without its settings shows as "not configured", never as an error.
"""
import hmac
import os
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
# No hard-coded production key: `make run` (deploy/bootstrap.sh) generates one into .env, a
# deployment sets SECRET_KEY; var/secret_key is read when present. Without DEBUG, no key = no start.
DEVELOPMENT_SECRET_KEY = "insecure-development-key-only-with-DEBUG"
SECRET_KEY = env_str("SECRET_KEY").strip() or (
    (VAR_DIR / "secret_key").read_text().strip() if (VAR_DIR / "secret_key").is_file() else ""
)
if not SECRET_KEY:
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in .env or the environment (`make run` writes a generated one "
            "into .env; for a deployment see deploy/PRODUCTION.md). With DEBUG off there is no fallback key.")
    SECRET_KEY = DEVELOPMENT_SECRET_KEY
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
    "ninja",
    "axes",
    "routing",
    "workers",
    "workers.pods",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.ContentSecurityPolicy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into its 429 page
]

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one username
# from one address, that pair is locked out for LOGIN_LOCKOUT_MINUTES, the right password
# included. Keyed on the pair, so nobody can lock a user out from somewhere else.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("LOGIN_LOCKOUT_MINUTES", 15.0) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Behind the TLS proxy every request comes from 127.0.0.1: throttling keys on the client address
# the proxy appends to X-Forwarded-For (project/clientip.py), or one user's wrong passwords would
# lock everyone out of that account.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if env_bool("HTTPS", False) else 0)
AXES_CLIENT_IP_CALLABLE = "project.clientip.client_ip"

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
        # One file per test session, so two sessions in one checkout never share it.
        config["TEST"] = {"NAME": env_str("TEST_SQLITE_NAME", str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3"))}
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
SELF = "'self'"
CONTENT_SECURITY_POLICY = {
    "default-src": [SELF], "script-src": [SELF], "style-src": [SELF], "connect-src": [SELF],
    "img-src": [SELF, "data:", "blob:"], "media-src": [SELF, "blob:"], "font-src": [SELF],
    "object-src": ["'none'"], "base-uri": [SELF], "form-action": [SELF], "frame-ancestors": ["'none'"],
}
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
# Live previews of running jobs (routing/previews.py), kept in Redis, never in the database.
PREVIEW_EVERY_SECONDS = env_float("PREVIEW_EVERY_SECONDS", 0.5)
PREVIEW_MAX_BYTES = env_int("PREVIEW_MAX_BYTES", 512 * 1024)
PREVIEW_TTL_SECONDS = env_int("PREVIEW_TTL_SECONDS", 120)
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
    # Broker priorities on Redis: one list per step, 0 is served first (job priority below).
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2  # broker_connection_timeout
# task_publish_retry_policy: with Redis down, a web request gives up sending after about a
# second (the job is stored; the sweeper sends it later) instead of hanging.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.3,
                                    "interval_max": 0.5}
# worker_cancel_long_running_tasks_on_connection_loss: off. On, the Redis worker can crash
# while restoring unacked messages during reconnection (celery/celery#9250, seen here); off,
# running tasks finish, and the sweeper re-sends whatever a lost connection dropped.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_SEND_TASK_EVENTS = True  # worker_send_task_events: Flower shows tasks live
CELERY_TASK_SEND_SENT_EVENT = False  # task_send_sent_event: an extra publish per send; Flower needs it not
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
# The prompt templates' model files are the manifest's (deploy/comfyui-manifest.json).
# A ComfyUI's inventory (its model files and node classes, from /object_info) is read again
# by the probe after it was unreachable, when a prompt showed it stale, and at least this often.
INVENTORY_MAX_AGE_SECONDS = env_int("INVENTORY_MAX_AGE_SECONDS", 300)

# --- RunPod (cloud): serverless endpoint and on-demand pods ---------------------------------
RUNPOD_API_KEY = env_str("RUNPOD_API_KEY")
RUNPOD_ENDPOINT_ID = env_str("RUNPOD_ENDPOINT_ID")
RUNPOD_ENDPOINT_BASE_URL = env_str("RUNPOD_ENDPOINT_BASE_URL", "https://api.runpod.ai/v2")
RUNPOD_API_BASE_URL = env_str("RUNPOD_API_BASE_URL", "https://api.runpod.io")
RUNPOD_REST_BASE_URL = env_str("RUNPOD_REST_BASE_URL", "https://rest.runpod.io/v1")  # billing history (reconcile)
# The endpoint's GPU class, for its price per second (billing/prices.py: RUNPOD_SERVERLESS);
# RUNPOD_PRICE_PER_SECOND is the price of a class the table does not know.
RUNPOD_ENDPOINT_GPU = env_str("RUNPOD_ENDPOINT_GPU", "RTX 4090")
RUNPOD_PRICE_PER_SECOND = env_decimal("RUNPOD_PRICE_PER_SECOND", "0.00031")
RUNPOD_HTTP_TIMEOUT = env_float("RUNPOD_HTTP_TIMEOUT", 10.0)  # every serverless API call
# Retries of a serverless read (status, health) on 408/429/5xx by the SDK's session, short back-off.
RUNPOD_HTTP_RETRIES = env_int("RUNPOD_HTTP_RETRIES", 2)
RUNPOD_POLL_INTERVAL = env_float("RUNPOD_POLL_INTERVAL", 2.0)  # seconds between /status polls
# policy.executionTimeout of each serverless job: RunPod stops (TIMED_OUT) a job running longer.
RUNPOD_EXECUTION_TIMEOUT = env_int("RUNPOD_EXECUTION_TIMEOUT", 600)
# On-demand pods: image (deploy/runpod-worker, pushed to your registry), GPU types in order
# of preference, and the limits of the autoscaler and the idle reaper.
# No default image: a pod that cannot pull its image bills until the start timeout.
RUNPOD_POD_IMAGE = env_str("RUNPOD_POD_IMAGE")  # e.g. ghcr.io/you/comfy-hybrid-runpod-worker:1
RUNPOD_POD_GPU_TYPES = env_list("RUNPOD_POD_GPU_TYPES", "NVIDIA GeForce RTX 4090,NVIDIA GeForce RTX 3090,NVIDIA A40")
RUNPOD_POD_CLOUD_TYPE = env_str("RUNPOD_POD_CLOUD_TYPE", "SECURE")  # SECURE | COMMUNITY | ALL
RUNPOD_POD_DISK_GB = env_int("RUNPOD_POD_DISK_GB", 40)
RUNPOD_POD_NAME_PREFIX = env_str("RUNPOD_POD_NAME_PREFIX", "comfy-hybrid")  # reconcile only touches these
# The network volume that holds the manifest's models (`manage.py sync_volume` fills it). Pods
# mount it at /workspace and run in its data center; empty: pods have only their image's models.
RUNPOD_NETWORK_VOLUME_ID = env_str("RUNPOD_NETWORK_VOLUME_ID")
# Registry credentials saved on RunPod (Settings → Container Registry Auth) for a private image.
RUNPOD_POD_REGISTRY_AUTH_ID = env_str("RUNPOD_POD_REGISTRY_AUTH_ID")
# A volume sync pod that has not finished after this long is stopped (its downloads resume).
RUNPOD_VOLUME_SYNC_TIMEOUT = env_int("RUNPOD_VOLUME_SYNC_TIMEOUT", 7200)
# ComfyUI of a pod through RunPod's HTTPS proxy; tests point it at the fake RunPod's proxy.
RUNPOD_POD_URL_TEMPLATE = env_str("RUNPOD_POD_URL_TEMPLATE", "https://{pod_id}-8188.proxy.runpod.net")
RUNPOD_MAX_PODS = env_int("RUNPOD_MAX_PODS", 2)
RUNPOD_POD_MAX_JOBS = env_int("RUNPOD_POD_MAX_JOBS", 3)  # jobs in flight per pod (ComfyUI queues them)
# An idle pod is kept as long as a new one would take to start (the ski-rental rule: waiting
# longer costs more than the restart it might save). 300 s left idle pods at 33 % of cloud
# spend on the worst trace of bench/cost.py; 180 s: 5 %.
RUNPOD_IDLE_SECONDS = env_int("RUNPOD_IDLE_SECONDS", 180)
RUNPOD_IDLE_SECONDS_EXPENSIVE = env_int("RUNPOD_IDLE_SECONDS_EXPENSIVE", 120)
RUNPOD_EXPENSIVE_PER_HOUR = env_decimal("RUNPOD_EXPENSIVE_PER_HOUR", "1.00")
# ...but only while that pays: unless jobs wait for a pod, or the cloud jobs of this last window
# would have cost on serverless at least what a pod costs over it, an idle pod is stopped at
# once (workers/pods/selectors.py reap_limit). 0: always the limits above.
RUNPOD_WARM_WINDOW_SECONDS = env_int("RUNPOD_WARM_WINDOW_SECONDS", 900)
# The pod's own watchdog (start.sh) stops it after this long without a job, even when this
# server is down; longer than the reaper's limit so the reaper normally acts first.
RUNPOD_POD_SELF_STOP_SECONDS = env_int("RUNPOD_POD_SELF_STOP_SECONDS", 900)
RUNPOD_POD_START_TIMEOUT = env_int("RUNPOD_POD_START_TIMEOUT", 900)  # image pull + ComfyUI start
RUNPOD_POD_WAIT_SECONDS = env_int("RUNPOD_POD_WAIT_SECONDS", 300)  # a job waiting longer fails over
RUNPOD_POD_FAILURES_TO_REPLACE = env_int("RUNPOD_POD_FAILURES_TO_REPLACE", 2)  # failed probes in a row
# Estimate of a new pod before RunPod names its rate, for a GPU type billing/prices.py does not know.
RUNPOD_POD_PRICE_PER_HOUR = env_decimal("RUNPOD_POD_PRICE_PER_HOUR", "0.69")
RUNPOD_POD_SPINUP_SECONDS = env_int("RUNPOD_POD_SPINUP_SECONDS", 180)
RUNPOD_AUTOSCALE_SECONDS = env_int("RUNPOD_AUTOSCALE_SECONDS", 15)
RUNPOD_REAP_SECONDS = env_int("RUNPOD_REAP_SECONDS", 60)
RUNPOD_RECONCILE_SECONDS = env_int("RUNPOD_RECONCILE_SECONDS", 300)
# The ledger against RunPod's billing records for the day before (billing/reconcile.py); it
# records the serverless workers' cold starts and idle timeouts once the day's records are in.
RECONCILE_SPEND_SECONDS = env_int("RECONCILE_SPEND_SECONDS", 3600)

# --- Google Gemini --------------------------------------------------------------------------
GEMINI_API_KEY = env_str("GEMINI_API_KEY")
GEMINI_BASE_URL = env_str("GEMINI_BASE_URL")
# Prices come from billing/prices.py for the configured model ids; these are for a model the
# table does not know (a 1K image at $60/M image tokens; Veo 3.1 Standard per second).
GEMINI_PRICE_PER_IMAGE = env_decimal("GEMINI_PRICE_PER_IMAGE", "0.067")
GEMINI_PRICE_PER_VIDEO_SECOND = env_decimal("GEMINI_PRICE_PER_VIDEO_SECOND", "0.40")
# "gemini": the Gemini Developer API (an AI Studio key). "vertex": Vertex AI express mode (a
# Google Cloud API key, `vertexai=True`, no project/location). See workers/clients/gemini.py.
GEMINI_TRANSPORT = env_str("GEMINI_TRANSPORT", "gemini")
# Always passed to the SDK, never left to its defaults (3.0 moved the Developer API to v1).
# Empty: v1beta for "gemini" (where image output and the Interactions API are documented), v1 for "vertex".
GEMINI_API_VERSION = env_str("GEMINI_API_VERSION")
# Images go through generateContent on an image model (Imagen is retired on both APIs);
# Nano Banana 2, no shutdown date announced (ai.google.dev/gemini-api/docs/deprecations).
GEMINI_IMAGE_MODEL = env_str("GEMINI_IMAGE_MODEL", "gemini-3.1-flash-image")
# Video: Gemini Omni Flash through the Interactions API, the Gemini API's video model now that
# its Veo ids are shut down (and google-genai 3.x offers Veo on Vertex AI only). Vertex express
# mode has no video method at all: there the default is empty (images only). Google moves: a
# setting. See workers/clients/gemini.py and tests/captures/README.md.
GEMINI_VIDEO_MODEL = env_str("GEMINI_VIDEO_MODEL", "gemini-omni-1.1-flash" if GEMINI_TRANSPORT == "gemini" else "")
# Seconds per HTTP call to Google (an image call takes 10-30 s). Below SWEEP_AFTER_SECONDS: a
# poll still inside Google's call when the sweeper re-sends it would pay for the image twice.
GEMINI_HTTP_TIMEOUT = env_float("GEMINI_HTTP_TIMEOUT", 50.0)
# Seconds between polls of a running video interaction (Google's samples use 10).
GEMINI_VIDEO_POLL_SECONDS = env_float("GEMINI_VIDEO_POLL_SECONDS", 10.0)
# Retries after a 429/5xx/timeout: the SDK's HttpRetryOptions for reads (attempts, the first
# included; its first and longest wait), and the poll chain's wait before re-sending a paid call
# Google refused with 429/503 (paid calls get one SDK attempt: a retried timeout could bill twice).
GEMINI_RETRY_ATTEMPTS = env_int("GEMINI_RETRY_ATTEMPTS", 3)
GEMINI_RETRY_SECONDS = env_float("GEMINI_RETRY_SECONDS", 2.0)
GEMINI_RETRY_MAX_SECONDS = env_float("GEMINI_RETRY_MAX_SECONDS", 30.0)
# An attempt still without a result after this many seconds (waits included) fails over.
GEMINI_IMAGE_GIVE_UP_SECONDS = env_float("GEMINI_IMAGE_GIVE_UP_SECONDS", 180.0)
GEMINI_VIDEO_GIVE_UP_SECONDS = env_float("GEMINI_VIDEO_GIVE_UP_SECONDS", 1200.0)

# --- Jobs and routing ---------------------------------------------------------------------
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
# Job priority → Redis broker priority (0 is served first), as "low=6,normal=3,high=0".
BROKER_PRIORITIES = {name: int(step) for name, step in
                     (pair.split("=") for pair in env_list("BROKER_PRIORITIES", "low=6,normal=3,high=0"))}
# Aging: a waiting job gains one priority level per this many seconds, so low jobs behind a
# stream of high ones still start.
PRIORITY_AGING_SECONDS = env_int("PRIORITY_AGING_SECONDS", 600)
# A submit that failed on a transient error is tried again on the same backend up to this many
# times in all (when resending is safe) before the job fails over. One delivery at a time holds
# an attempt's submit, for at most SUBMIT_LEASE_SECONDS (more than any submit's HTTP timeouts).
SUBMIT_RETRIES = env_int("SUBMIT_RETRIES", 3)
SUBMIT_LEASE_SECONDS = env_int("SUBMIT_LEASE_SECONDS", 300)
# Default seconds between polls of a remote job, when its client does not say.
POLL_INTERVAL_SECONDS = env_float("POLL_INTERVAL_SECONDS", 1.0)
LOCAL_QUEUE_LIMIT = env_int("LOCAL_QUEUE_LIMIT", 5)
HEALTH_PROBE_SECONDS = env_int("HEALTH_PROBE_SECONDS", 15)
HEALTH_STALE_SECONDS = env_int("HEALTH_STALE_SECONDS", 120)
# A ComfyUI backend none of whose probes a worker took for this long is lost: down at once, its
# jobs in flight moved to other backends (routing/fleet.py). Several probe rounds, so one probe
# lost with a Redis restart, or a worker busy for a moment, is not a lost machine.
WORKER_LOST_SECONDS = env_int("WORKER_LOST_SECONDS", 60)
# A job that only a backend in an outage could run waits this long for it to answer again
# before it fails (the backend is down, or lost the job's attempt and has not answered since).
OUTAGE_WAIT_SECONDS = env_int("OUTAGE_WAIT_SECONDS", 900)
# Lost messages are re-sent by the sweeper after this long without progress.
SWEEP_AFTER_SECONDS = env_int("SWEEP_AFTER_SECONDS", 60)
SWEEP_EVERY_SECONDS = env_int("SWEEP_EVERY_SECONDS", 30)
WORKFLOW_MAX_BYTES = env_int("WORKFLOW_MAX_BYTES", 512 * 1024)
WORKFLOW_MAX_NODES = env_int("WORKFLOW_MAX_NODES", 500)
# Optional allow-list of ComfyUI node types a submitted workflow may use (empty: any). Node
# packs that fetch URLs or run code can be kept out this way.
WORKFLOW_ALLOWED_CLASSES = env_list("WORKFLOW_ALLOWED_CLASSES")
OUTPUT_MAX_BYTES = env_int("OUTPUT_MAX_BYTES", 512 * 1024 * 1024)
# A job in a non-final state longer than this is failed by the sweeper (never hangs forever).
JOB_DEADLINE_SECONDS = env_int("JOB_DEADLINE_SECONDS", 3 * 3600)

# --- API and webhooks -----------------------------------------------------------------------
# Where people reach this site; used in links sent out of it (webhook payloads).
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")
SUBMIT_RATE_PER_MINUTE = env_int("SUBMIT_RATE_PER_MINUTE", 60)  # per user, form and API alike
# HMAC key of webhook signatures: never SECRET_KEY itself (receivers hold it). Unset, a key is
# derived from SECRET_KEY one way, so knowing it reveals nothing of SECRET_KEY.
WEBHOOK_SECRET = env_str("WEBHOOK_SECRET").strip() or hmac.new(
    SECRET_KEY.encode(), b"comfy-hybrid webhook signing key", "sha256").hexdigest()
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS")  # private hosts webhooks may call
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 5.0)
WEBHOOK_MAX_TRIES = env_int("WEBHOOK_MAX_TRIES", 5)

# --- Money --------------------------------------------------------------------------------
DAILY_CAP_USD = env_decimal("DAILY_CAP_USD", "5")
MONTHLY_CAP_USD = env_decimal("MONTHLY_CAP_USD", "50")
# What the whole installation may spend in a month (all users, pods' idle time included).
GLOBAL_MONTHLY_CAP_USD = env_decimal("GLOBAL_MONTHLY_CAP_USD", "500")
