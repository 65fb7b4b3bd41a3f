"""What a child that runs a participant's model inherits, and what it may not."""

from __future__ import annotations

import subprocess
import sys

from mai_ops.infra.child import MAX_FILE_BYTES, child_env, limit_child


def test_connections_and_secrets_never_reach_a_model_child(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"password": "s3cret"}')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = child_env("/project")
    assert "s3cret" not in repr(env)
    assert env["OMP_NUM_THREADS"] == "1" and "PATH" in env
    assert env["PYTHONPATH"].split(":")[0] == "/project"


def test_limits_apply_to_a_real_child():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, resource as r; sys.stdin.read(); "
            "print(r.getrlimit(r.RLIMIT_AS)[0], r.getrlimit(r.RLIMIT_FSIZE)[0])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    limit_child(proc.pid, 512)
    out, _ = proc.communicate("")
    address_space, file_size = map(int, out.split())
    assert address_space == 512 * 1024 * 1024
    assert file_size == MAX_FILE_BYTES
