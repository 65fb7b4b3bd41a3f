"""The executor workers' preload: importable on its own, inert, and enough for a task.

Each task is forked from a worker holding ``mai_ops_airflow.worker_preload``; what the
preload misses, every task imports again (``bench/final_phase_overhead.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

from mai_ops.dev.stack import CELERY_EXTRA_CONFIG, WORKER_PRELOAD, stack_env

from .conftest import PROJECT

PROBE = """
import json, socket, sys, threading
opened = []
real = socket.socket.connect
socket.socket.connect = lambda self, *a: opened.append(repr(a)) or real(self, *a)
import mai_ops_airflow.worker_preload as preload
before = set(sys.modules)
threads = threading.active_count()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert bag.dags and not bag.import_errors, bag.import_errors
import mai_ops.submissions.evaluation, mai_ops.devices.benchmark, mai_ops.models.fidelity
heavy = ("mai_ops", "airflow.providers", "airflow.sdk.execution_time", "numpy", "boto",
         "ai_edge_litert", "PIL")
late = sorted(m for m in set(sys.modules) - before if m.startswith(heavy))
print(json.dumps({"late": late, "threads": threads, "connects": opened,
                  "modules": list(preload.MODULES)}))
"""


def test_preload_is_inert_and_covers_what_a_task_parses_and_runs(tmp_path) -> None:
    from mai_ops.dev.demo import PROJECT, airflow_env

    env = airflow_env(tmp_path / "airflow")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(PROJECT / "dags")],
        env={**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    # Forking a process with threads running is unsafe; nothing may connect anywhere.
    assert probe["threads"] == 1
    assert probe["connects"] == []
    # Parsing every DAG file and loading the stages imports nothing heavy the preload lacks.
    assert probe["late"] == [], " ".join(probe["late"])
    assert "airflow.sdk.execution_time.task_runner" in probe["modules"]


def test_both_executors_load_the_preload(tmp_path) -> None:
    env = stack_env(tmp_path, 8080, "http://127.0.0.1:9000", 2525)
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] == WORKER_PRELOAD
    assert WORKER_PRELOAD in CELERY_EXTRA_CONFIG["imports"]


def test_s3_clients_share_one_loader_the_preload_has_warmed(tmp_path) -> None:
    """The stack, the demo and compose select the factory; its clients share the loader."""
    import yaml

    from mai_ops.dev.demo import AWS_SESSION_FACTORY
    from mai_ops_airflow import aws_session

    assert AWS_SESSION_FACTORY == aws_session.FACTORY
    env = stack_env(tmp_path, 8080, "http://127.0.0.1:9000", 2525)
    assert env["AIRFLOW__AWS__SESSION_FACTORY"] == aws_session.FACTORY
    compose = yaml.safe_load((PROJECT / "docker-compose.yaml").read_text())
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__AWS__SESSION_FACTORY"] == aws_session.FACTORY

    probe = (
        "import json, boto3\n"
        "from airflow.providers.amazon.aws.hooks import base_aws\n"
        "from airflow.providers.amazon.aws.hooks.s3 import S3Hook\n"
        "from mai_ops_airflow import aws_session\n"
        "import mai_ops_airflow.worker_preload\n"
        "warm = len(aws_session._LOADER._cache)\n"
        "clients = [S3Hook(aws_conn_id='aws_default').get_conn() for _ in range(2)]\n"
        "loaders = {id(c._loader) for c in clients}\n"
        "print(json.dumps({'factory': base_aws.SessionFactory.__name__, 'warm': warm,\n"
        "    'shared': loaders == {id(aws_session._LOADER)},\n"
        "    'grew': len(aws_session._LOADER._cache) - warm,\n"
        "    'paths': len(aws_session._LOADER.search_paths)\n"
        "        - len(set(aws_session._LOADER.search_paths))}))\n"
    )
    conn = {
        "conn_type": "aws",
        "login": "key",
        "password": "secret",
        "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
    }
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(conn), "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["factory"] == "SharedLoaderSessionFactory"
    assert found["shared"] and found["warm"] > 0
    assert found["grew"] == 0, "a task's client decoded a model the preload had not"
    assert found["paths"] == 0, "the shared loader's search paths grow with each session"
