"""The deployment files: docker-compose.yml, the Dockerfile, the systemd units, and the
production settings guide (`check --deploy` clean with exactly the environment it documents).

No container is started (there is no Docker engine here): the compose file is checked as YAML
for the structure the design asks for, and the systemd units with `systemd-analyze verify`.
"""
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from project import queues
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
CHECKOUT = "/opt/comfy-hybrid"  # where the units expect the checkout


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _command(service: dict) -> list:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def _app_services(compose) -> dict:
    """The services that run the project (its image, deploy/Dockerfile); not ComfyUI's."""
    return {name: s for name, s in compose["services"].items()
            if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def _workers(compose) -> dict:
    """The workers a plain `docker compose up` starts: Celery's, and the first machine's GPU
    worker (`manage.py gpu_worker`; the gpu profile's nodes are extra machines' queues)."""
    return {name: s for name, s in _app_services(compose).items()
            if _command(s)[:4] == ["celery", "-A", "project", "worker"]
            or (_command(s)[:3] == ["python", "manage.py", "gpu_worker"] and "gpu" not in s.get("profiles", []))}


def _queues_of(service: dict) -> list:
    command = _command(service)
    if "gpu_worker" in command:  # the queue of the backend it registers (the first one's is `local`)
        return [queues.for_comfyui(command[command.index("--name") + 1])]
    return command[command.index("-Q") + 1].split(",")


# --- docker-compose.yml ----------------------------------------------------------------------
def test_compose_is_valid_yaml_with_every_service(compose):
    assert {"web", "beat", "flower", "redis", "postgres", "migrate"} <= set(compose["services"])
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), name


def test_every_process_runs_from_one_image_with_its_own_command(compose):
    apps = _app_services(compose)
    assert len(apps) >= 9  # migrate, web, five workers, beat, flower
    assert len({s["image"] for s in apps.values()}) == 1
    assert len({(s["build"]["context"], s["build"]["dockerfile"]) for s in apps.values()}) == 1
    assert (DEPLOY / apps["web"]["build"]["context"] / apps["web"]["build"]["dockerfile"]).resolve() == \
        DEPLOY / "Dockerfile"
    commands = [tuple(_command(s)) for s in apps.values()]
    assert len(set(commands)) == len(commands)


def test_web_is_gunicorn_and_static_files_come_from_whitenoise(compose):
    from django.conf import settings

    assert _command(compose["services"]["web"])[:2] == ["gunicorn", "project.wsgi"]
    assert "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE
    assert "collectstatic" in (DEPLOY / "Dockerfile").read_text()


def test_the_first_machines_gpu_worker_registers_the_backend_local_at_the_hosts_comfyui(compose):
    command = _command(compose["services"]["worker-local"])
    assert command[:3] == ["python", "manage.py", "gpu_worker"] and command[command.index("--name") + 1] == "local"
    # the same ComfyUI as the app's COMFYUI_URL: the host's, seen from the container
    assert command[command.index("--comfyui-url") + 1] == compose["x-app"]["environment"]["COMFYUI_URL"] == \
        "${COMFYUI_URL:-http://host.docker.internal:8188}"
    assert "local@$$HOSTNAME" in compose["services"]["worker-local"]["healthcheck"]["test"][1]


def test_there_is_one_worker_service_per_queue(compose):
    served = sorted(queue for service in _workers(compose).values() for queue in _queues_of(service))
    assert served == sorted(queues.ALL)
    assert all(len(_queues_of(service)) == 1 for service in _workers(compose).values())


def test_a_gpu_node_is_comfyui_on_a_gpu_and_the_worker_that_alone_consumes_its_queue(compose):
    comfyui, node = compose["services"]["comfyui"], compose["services"]["gpu-node"]
    assert comfyui["profiles"] == node["profiles"] == ["gpu"]  # not started on a host without one
    built = DEPLOY / comfyui["build"]["context"] / comfyui["build"]["dockerfile"]
    assert built.resolve() == DEPLOY / "runpod-worker" / "Dockerfile"
    assert _command(comfyui)[2:3] == ["/comfyui/main.py"] and "0.0.0.0" in _command(comfyui)
    [device] = comfyui["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["${GPU_NODE_DEVICE:-0}"]
    assert "/system_stats" in " ".join(comfyui["healthcheck"]["test"])

    command = _command(node)
    assert command[:3] == ["python", "manage.py", "gpu_worker"]
    assert command[command.index("--comfyui-url") + 1] == "http://comfyui:8188"
    name = command[command.index("--name") + 1]
    assert name == node["environment"]["GPU_NODE_NAME"] == "${GPU_NODE_NAME:-docker-gpu}"
    assert "comfyui" in node["depends_on"] and "$$GPU_NODE_NAME@$$HOSTNAME" in node["healthcheck"]["test"][1]
    assert node["image"] == compose["services"]["web"]["image"]  # the project's image, its settings


def test_a_gpu_nodes_worker_name_is_a_backend_name_the_command_accepts(compose):
    from workers.management.commands.gpu_worker import NAME

    default = compose["services"]["gpu-node"]["environment"]["GPU_NODE_NAME"].split(":-", 1)[1].rstrip("}")
    assert NAME.match(default)


def test_there_is_exactly_one_beat(compose):
    beats = [s for s in compose["services"].values() if "beat" in _command(s)]
    assert len(beats) == 1
    assert beats[0].get("deploy", {}).get("replicas", 1) == 1


def test_flower_takes_its_basic_auth_from_the_environment_never_the_command_line(compose):
    flower = compose["services"]["flower"]
    assert _command(flower)[:4] == ["celery", "-A", "project", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not any("basic_auth" in part or "auth" in part.split("=")[0] for part in _command(flower)[4:])
    assert all(port.startswith("127.0.0.1:") for port in flower.get("ports", []))


def test_redis_keeps_an_append_only_file_and_needs_a_password(compose):
    redis = compose["services"]["redis"]
    command = " ".join(_command(redis))
    assert "--appendonly yes" in command and "--requirepass" in command
    assert "appendonly yes" in (DEPLOY / "redis.conf").read_text()
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "ports" not in redis  # never published


def test_the_database_is_postgresql_for_every_process(compose):
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    for name, service in _app_services(compose).items():
        assert service["environment"]["DATABASE_URL"].startswith("postgres://"), name
        assert "@postgres:5432/" in service["environment"]["DATABASE_URL"], name


def test_every_long_running_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), name


def test_processes_start_after_migrations_and_healthy_data_stores(compose):
    for name, service in _app_services(compose).items():
        needs = service["depends_on"]
        assert needs["postgres"]["condition"] == needs["redis"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert needs["migrate"]["condition"] == "service_completed_successfully", name


def test_secrets_are_required_from_the_environment_not_written_in_the_file(compose):
    text = (DEPLOY / "docker-compose.yml").read_text()
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert f"${{{name}:?" in text, name


def test_the_image_is_built_from_requirements_and_runs_as_a_user():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.M)
    assert "COPY . ." not in dockerfile  # never .venv, .env or var/ in the image


# --- systemd ---------------------------------------------------------------------------------
def _unit_files() -> list:
    return sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.target"))


def _exec_starts(path: Path) -> list:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith("ExecStart=")]


def test_there_is_a_unit_for_every_process_of_the_procfile():
    procfile = [line.split(":", 1)[0] for line in (DEPLOY / "Procfile").read_text().splitlines() if ":" in line]
    units = {path.name for path in _unit_files()}
    for process in procfile:
        if process == queues.LOCAL:  # the first GPU's worker: `manage.py gpu_worker --name local`
            name = "comfy-hybrid-gpu-node@.service"
        else:
            name = "comfy-hybrid-worker@.service" if process in queues.ALL else f"comfy-hybrid-{process}.service"
        assert name in units, process
    target = (UNITS / "comfy-hybrid.target").read_text()
    for queue in queues.ALL:
        unit = "comfy-hybrid-gpu-node@local" if queue == queues.LOCAL else f"comfy-hybrid-worker@{queue}"
        assert f"{unit}.service" in target


def test_the_procfiles_local_worker_joins_as_the_first_gpu_keeping_its_stored_url():
    [line] = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if line.startswith("local:")]
    words = shlex.split(line.split(":", 1)[1])
    assert words[1:4] == [".venv/bin/python", "manage.py", "gpu_worker"] and "--comfyui-url" not in words
    assert words[words.index("--name") + 1] == queues.FIRST_COMFYUI
    assert words[words.index("--concurrency") + 1] == "${LOCAL_CONCURRENCY:-2}"


def test_a_gpu_node_unit_runs_gpu_worker_named_after_its_instance_with_its_own_comfyui_url():
    unit = (UNITS / "comfy-hybrid-gpu-node@.service").read_text()
    [command] = _exec_starts(UNITS / "comfy-hybrid-gpu-node@.service")
    words = shlex.split(command)
    assert words[1:3] == ["manage.py", "gpu_worker"]
    assert words[words.index("--name") + 1] == "%i"
    assert words[words.index("--comfyui-url") + 1] == "${GPU_COMFYUI_URL}"  # empty: the stored URL is kept
    assert words[words.index("--concurrency") + 1] == "${CONCURRENCY}"
    assert "EnvironmentFile=/etc/comfy-hybrid/env" in unit.splitlines()  # the server's DATABASE_URL, REDIS_URL
    assert "EnvironmentFile=-/etc/comfy-hybrid/gpu-node-%i.env" in unit.splitlines()  # optional, read last
    assert "KillSignal=SIGTERM" in unit.splitlines()  # a warm stop: the backend is marked down, jobs move
    assert "WantedBy=multi-user.target" in unit.splitlines()  # a GPU machine enables it alone


@pytest.mark.django_db
def test_the_units_empty_comfyui_url_keeps_the_url_stored_for_the_backend(local_backend):
    from django.core.management import call_command

    from routing.models import Backend

    Backend.objects.filter(id=local_backend.id).update(url="http://127.0.0.1:9")  # set by staff; nothing answers
    call_command("gpu_worker", "--name", "local", "--comfyui-url", "", "--register-only", stdout=open(os.devnull, "w"))
    assert Backend.objects.get(id=local_backend.id).url == "http://127.0.0.1:9"


@pytest.mark.slow
def test_the_units_run_commands_that_exist_in_a_checkout():
    calls = set()
    for path in _unit_files():
        for command in _exec_starts(path):
            words = command.split()
            assert words[0].startswith(f"{CHECKOUT}/.venv/bin/"), (path.name, command)
            binary = ROOT / words[0].removeprefix(CHECKOUT + "/")
            assert binary.is_file() and os.access(binary, os.X_OK), binary
            calls.add(tuple(words[:4]) if words[1] == "-A" else tuple(words[:3]))
    celery = {call[3] for call in calls if call[0].endswith("/celery")}
    manage = {call[2] for call in calls if call[1:2] == ("manage.py",)}
    assert celery == {"worker", "beat", "flower"} and manage == {"migrate", "collectstatic", "gpu_worker"}
    listed = _run([".venv/bin/celery", "-A", "project", "--help"])
    assert all(re.search(rf"^\s+{sub}\b", listed, re.M) for sub in celery), listed
    commands = _run([".venv/bin/python", "manage.py", "help", "--commands"]).split()
    assert manage <= set(commands)
    assert "gunicorn" in _run([".venv/bin/gunicorn", "--version"])


def test_systemd_accepts_the_units():
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    names = []
    with _units_pointing_at_this_checkout() as folder:
        for path in _unit_files():
            names.append(path.name.replace("@.service", "@control.service"))
        done = subprocess.run([analyze, "verify", "--man=no", *names], cwd=folder, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


class _units_pointing_at_this_checkout:
    """The units with /opt/comfy-hybrid replaced by this checkout, in a scratch folder."""

    def __enter__(self):
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="units-"))
        for path in _unit_files():
            (self.folder / path.name).write_text(path.read_text().replace(CHECKOUT, str(ROOT)))
        return self.folder

    def __exit__(self, *exc):
        shutil.rmtree(self.folder, ignore_errors=True)


# --- PRODUCTION.md ---------------------------------------------------------------------------
def _documented_environment() -> dict:
    text = (DEPLOY / "PRODUCTION.md").read_text()
    block = re.search(r"```env\n(.*?)```", text, re.S).group(1)
    values = {}
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = re.sub(r"<[^>]+>", lambda _: secrets.token_urlsafe(50), value.strip())
    return values


def test_the_guide_documents_every_setting_production_needs():
    documented = _documented_environment()
    for name in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "HTTPS", "DATABASE_URL",
                 "REDIS_URL", "FLOWER_BASIC_AUTH", "MEDIA_ROOT"):
        assert name in documented, name
    assert documented["DEBUG"] == "false" and documented["HTTPS"] == "true"
    guide = (DEPLOY / "PRODUCTION.md").read_text()
    for topic in ("check --deploy", "X-Forwarded-Proto", "FLOWER_BASIC_AUTH", "pg_dump", "appendonly"):
        assert topic in guide, topic


@pytest.mark.slow
def test_check_deploy_is_clean_with_the_documented_environment(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **_documented_environment(),
           "VAR_DIR": str(tmp_path / "var"), "MEDIA_ROOT": str(tmp_path / "media")}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def _run(command: list) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _manage(tmp_path, *args, **env):
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **_documented_environment(),
                   "VAR_DIR": str(tmp_path / "var"), "MEDIA_ROOT": str(tmp_path / "media"), **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_without_debug_the_project_refuses_to_start_with_no_secret_key(tmp_path):
    done = _manage(tmp_path, "check", SECRET_KEY="", DEBUG="false")

    assert done.returncode != 0
    assert "SECRET_KEY is not set" in done.stderr and "`make run` writes a generated one" in done.stderr


@pytest.mark.slow
def test_with_debug_on_a_development_key_is_used_and_the_deploy_check_flags_it(tmp_path):
    done = _manage(tmp_path, "check", "--deploy", SECRET_KEY="", DEBUG="true")

    assert done.returncode != 0 and "comfy.E001" in done.stderr and "published development key" in done.stderr


@pytest.mark.parametrize("key, why", [
    ("insecure-development-key-set-SECRET_KEY-in-production", "published development key"),  # the old fallback
    ("django-insecure-" + "x1y2z3" * 10, "published development key"),
    ("s3cr3t-but-short", "has 16 characters"),
    ("ab" * 40, "uses 2 distinct characters"),
])
@pytest.mark.slow
def test_the_deploy_check_flags_a_weak_secret_key(tmp_path, key, why):
    done = _manage(tmp_path, "check", "--deploy", SECRET_KEY=key)

    assert done.returncode != 0 and "comfy.E001" in done.stderr and why in done.stderr, done.stderr


@pytest.mark.slow
def test_the_webhook_signing_key_is_not_the_secret_key(tmp_path):
    key = secrets.token_urlsafe(50)
    show = ["shell", "-c", "from django.conf import settings; print(settings.WEBHOOK_SECRET)"]

    derived = _manage(tmp_path, *show, SECRET_KEY=key, WEBHOOK_SECRET="")
    same = _manage(tmp_path, "check", "--deploy", SECRET_KEY=key, WEBHOOK_SECRET=key)

    signing_key = derived.stdout.strip().splitlines()[-1]
    assert derived.returncode == 0 and len(signing_key) == 64 and signing_key != key
    assert same.returncode != 0 and "comfy.E002" in same.stderr


@pytest.mark.slow
def test_a_typo_in_a_yes_no_setting_stops_the_start_instead_of_reading_false(tmp_path):
    done = _manage(tmp_path, "check", HTTPS="ture")

    assert done.returncode != 0 and "HTTPS='ture' is not a yes/no value" in done.stderr


def test_the_cloud_image_builds_from_the_repository_root_and_carries_what_each_mode_runs():
    dockerfile = (DEPLOY / "runpod-worker" / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    for sources in copied:  # every COPY source exists, relative to the repository root
        assert all((DEPLOY.parent / source).exists() for source in sources), sources
    assert ["workers/installer"] in copied  # sync mode runs workers.installer.volume
    start = (DEPLOY / "runpod-worker" / "start.sh").read_text()
    assert "-m workers.installer.volume --root /workspace --port 8188" in start
