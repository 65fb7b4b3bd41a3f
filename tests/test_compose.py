"""Offline validation of the production deployment files (docker-compose.yaml, Dockerfile).

No Docker engine is needed: `docker-compose config` parses, validates against the Compose
schema and interpolates the file without talking to a daemon. The tests run it against an
empty env file and a minimal environment, so the defaults in the file are what is checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mailpit",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-device",
}
AIRFLOW_SERVICES = sorted(s for s in REQUIRED_SERVICES if s.startswith("airflow-"))
BUCKETS = ["mai2021-organizers", "mai2021-submissions", "mai2021-public", "mai2021-results"]


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH, so docker-compose.yaml cannot be validated. "
            "Run `make test`, which installs it (Debian package docker-compose)."
        )
    return exe


def _config(compose_file: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on compose_file, isolated from the caller's env and any .env file."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base_env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(empty_env_file), "-f", str(compose_file), "config"],
        cwd=ROOT,
        env={**base_env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    proc = _config(COMPOSE_FILE, tmp_path_factory.mktemp("compose"))
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    # Every ${VAR} in the file must have a default: compose warns about unset ones.
    assert "variable is not set" not in proc.stderr, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_required_services_exist(resolved: dict) -> None:
    assert REQUIRED_SERVICES <= set(resolved["services"])


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_share_the_project_image(resolved: dict, service: str) -> None:
    svc = resolved["services"][service]
    assert svc["image"] == "mai-ops:latest"
    assert Path(svc["build"]["context"]) == ROOT
    env = svc["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["MAI_OPS_CHALLENGES_DIR"] == "/opt/airflow/include/challenges"


def test_worker_is_a_scalable_celery_worker(resolved: dict) -> None:
    worker = resolved["services"]["airflow-worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert _command(worker)[:2] == ["celery", "worker"]
    assert _option(worker, "--queues") == "default"
    # A fixed container name or a published port would break `--scale airflow-worker=N`.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else command


def _option(service: dict, name: str) -> str | None:
    command = _command(service)
    return command[command.index(name) + 1] if name in command else None


def test_a_device_hosts_worker_takes_its_queue_only(resolved: dict) -> None:
    from mai_ops.dev.stack import DEVICE_HOST
    from mai_ops.devices.pools import device_queue

    services = resolved["services"]
    device = services["airflow-worker-device"]
    assert _command(device)[:2] == ["celery", "worker"]
    # The same host by default as make up-celery's device worker, by the one naming rule.
    assert _option(device, "--queues") == device_queue(DEVICE_HOST)
    # Named by queue, so `celery inspect` and the result backend tell the workers apart.
    assert _option(device, "--celery-hostname") == f"{device_queue(DEVICE_HOST)}@%h"
    assert _option(services["airflow-worker"], "--celery-hostname") == "default@%h"
    assert f"{device_queue(DEVICE_HOST)}@$${{HOSTNAME}}" in device["healthcheck"]["test"][1]
    # Like the other worker otherwise: sandbox, device locks, what it waits for.
    for key in ("security_opt", "depends_on", "volumes"):
        assert device[key] == services["airflow-worker"][key], key
    assert device["environment"]["MAI_OPS_DEVICE_LOCKS"]


def test_no_log_server_and_settings_for_several_machines(resolved: dict) -> None:
    """Logs in the shared volume (or S3), a visibility timeout past the longest task,
    a JWT secret long enough for HS512."""
    from mai_ops.dev.stack import CELERY_EXTRA_CONFIG
    from mai_ops.timeouts import DEVICE_TASK_TIMEOUT_S, visibility_timeout_s

    services = resolved["services"]
    for name in ("airflow-worker", "airflow-worker-device", "airflow-triggerer"):
        assert "--skip-serve-logs" in _command(services[name]), name
    env = services["airflow-scheduler"]["environment"]
    timeout = int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"])
    assert timeout == visibility_timeout_s() > DEVICE_TASK_TIMEOUT_S
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64
    assert json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"]) == CELERY_EXTRA_CONFIG
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "false"
    assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"


def test_aws_connection_points_at_minio(resolved: dict) -> None:
    env = resolved["services"]["airflow-worker"]["environment"]
    conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["conn_type"] == "aws"
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert conn["extra"]["region_name"] == "us-east-1"
    minio_env = resolved["services"]["minio"]["environment"]
    assert (conn["login"], conn["password"]) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    )


def test_smtp_connection_points_at_mailpit(resolved: dict) -> None:
    env = resolved["services"]["airflow-worker"]["environment"]
    conn = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert (conn["conn_type"], conn["host"], conn["port"]) == ("smtp", "mailpit", 1025)
    assert conn["extra"]["disable_ssl"] is True
    assert conn["extra"]["disable_tls"] is True
    assert conn["extra"]["from_email"]
    published = {p["target"] for p in resolved["services"]["mailpit"]["ports"]}
    assert {1025, 8025} <= published


def test_minio_init_creates_the_challenge_buckets(resolved: dict) -> None:
    init = resolved["services"]["minio-init"]
    assert init["environment"]["MAI_OPS_BUCKETS"].split(",") == BUCKETS
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    # The freeze copies the version received by the deadline: submissions keep versions.
    assert init["environment"]["MAI_OPS_VERSIONED_BUCKETS"].split(",") == [
        b for b in BUCKETS if b.endswith("-submissions")
    ]
    assert 'mc version enable "local/$${bucket}"' in "\n".join(init["command"])


def test_every_long_running_service_has_a_healthcheck(resolved: dict) -> None:
    one_shot = {"airflow-init", "minio-init"}
    missing = [
        name
        for name, svc in resolved["services"].items()
        if name not in one_shot and "healthcheck" not in svc
    ]
    assert missing == []


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    proc = _config(
        COMPOSE_FILE,
        tmp_path,
        POSTGRES_PASSWORD="pg-from-env",
        MINIO_ROOT_PASSWORD="minio-from-env",
        AIRFLOW_JWT_SECRET="jwt-from-env",
        MAI_OPS_BUCKETS="mai2023-submissions,mai2023-public",
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    env = services["airflow-scheduler"]["environment"]
    assert ":pg-from-env@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "jwt-from-env"
    assert json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["password"] == "minio-from-env"
    assert services["minio-init"]["environment"]["MAI_OPS_BUCKETS"] == (
        "mai2023-submissions,mai2023-public"
    )


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        pytest.param(
            lambda text: text.replace(
                "    command: triggerer --skip-serve-logs\n",
                "    command: triggerer --skip-serve-logs\n    not_a_compose_key: 1\n",
                1,
            ),
            r"Unsupported config option for services\.airflow-triggerer: 'not_a_compose_key'",
            id="unknown-service-key",
        ),
        pytest.param(
            lambda text: text + "  broken: [\n",
            r"(?i)yaml|parse|expected",
            id="broken-yaml",
        ),
        pytest.param(
            lambda text: text.replace("      minio-init:\n", "      minio-setup:\n", 1),
            r"depends on service 'minio-setup' which is undefined",
            id="depends-on-missing-service",
        ),
    ],
)
def test_broken_compose_file_is_rejected(tmp_path: Path, mutate, error: str) -> None:
    original = COMPOSE_FILE.read_text()
    broken = mutate(original)
    assert broken != original, "the mutation did not apply; update this test"
    broken_file = tmp_path / "docker-compose.yaml"
    broken_file.write_text(broken)
    proc = _config(broken_file, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert re.search(error, proc.stderr), proc.stderr


def test_dockerfile_matches_the_locked_airflow_version() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    airflow = next(p["version"] for p in lock["package"] if p["name"] == "apache-airflow")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"apache/airflow:{airflow}-python3.11" in dockerfile
    assert "uv export --frozen --no-dev" in dockerfile
    for folder in ("dags", "mai_ops", "include"):
        assert re.search(rf"^COPY .*\b{folder}/ /opt/airflow/{folder}/$", dockerfile, re.M)
    # Installed, so every component loads the plugin that registers the phases' timetable.
    assert "pip install --no-cache-dir --no-deps -e /opt/airflow" in dockerfile


def test_workers_can_set_up_the_model_sandbox(resolved: dict) -> None:
    """bubblewrap in the image, and a worker allowed to create its namespaces."""
    assert (
        "apt-get install -y --no-install-recommends bubblewrap" in (ROOT / "Dockerfile").read_text()
    )
    options = set(resolved["services"]["airflow-worker"].get("security_opt", []))
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= options
