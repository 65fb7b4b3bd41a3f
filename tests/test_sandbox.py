"""The sandbox children run in: a hostile child reaches nothing of the worker.

Each test starts a real child through bubblewrap (``make test`` installs it) with a
canary secret in the worker's own environment, a real TCP listener on loopback and
an inheritable descriptor open, and checks what the child could see and do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mai_ops import PROJECT_ROOT
from mai_ops.infra import sandbox

CANARY = "canary-7f3a9c-do-not-leak"

HOSTILE = r"""
import glob, json, os, socket, sys
out = {"uid": os.getuid(), "euid": os.geteuid(), "writes": {}, "environ": {}, "connect": {}}
for target in sys.argv[1:3]:
    try:
        with open(target, "w") as fh:
            fh.write("pwned")
        out["writes"][target] = "written"
    except OSError as exc:
        out["writes"][target] = type(exc).__name__
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        with open(path, "rb") as fh:
            out["environ"][path] = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        out["environ"][path] = type(exc).__name__
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", int(sys.argv[3])))
    out["connect"] = "connected"
except OSError as exc:
    out["connect"] = type(exc).__name__
finally:
    s.close()
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
out["env"] = dict(os.environ)
print(json.dumps(out))
"""


@pytest.fixture
def listener():
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def _run_hostile(tmp_path: Path, port: int) -> tuple[dict, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sandbox.prepare_scratch(scratch)
    outside = PROJECT_ROOT / "mai_ops" / "sandbox-escape.txt"
    argv = [sys.executable, "-c", HOSTILE, str(outside), str(scratch / "inside.txt"), str(port)]
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        env = {"PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.run(
            sandbox.confine(argv, sandbox.Confinement(scratch), env),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(leaked)
    assert not outside.exists(), "the child wrote into the project folder"
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stdout + proc.stderr


def test_the_sandbox_can_be_set_up_on_this_machine():
    assert sandbox.available() == (True, "")


def test_a_hostile_child_reaches_nothing_of_the_worker(tmp_path, monkeypatch, listener):
    monkeypatch.setenv("AIRFLOW_CONN_CANARY", f"s3://key:{CANARY}@bucket")
    seen, text = _run_hostile(tmp_path, listener)
    assert CANARY not in text
    assert seen["uid"] == seen["euid"] == sandbox.SANDBOX_UID
    writes = seen["writes"]
    assert writes[str(tmp_path / "scratch" / "inside.txt")] == "written"
    assert writes[str(PROJECT_ROOT / "mai_ops" / "sandbox-escape.txt")] != "written"
    assert (tmp_path / "scratch" / "inside.txt").read_text() == "pwned"
    # Its own pid namespace: the worker and every other process are out of sight.
    assert max(seen["pids"]) <= 3  # bubblewrap's reaper, then the child itself
    assert all(CANARY not in v for v in seen["environ"].values())
    # A listener really is there on the worker's loopback; the child has its own.
    assert seen["connect"] == "ConnectionRefusedError"
    assert seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) <= 4  # + the listing itself
    assert set(seen["env"]) <= {"PYTHONPATH", "HOME", "TMPDIR", "PATH", "PWD", "LC_CTYPE"}


def test_a_worker_without_bubblewrap_refuses_instead_of_running_unconfined(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, no prlimit
    sandbox.available.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
            sandbox.confine(["/bin/true"], sandbox.Confinement(tmp_path), {})
    finally:
        monkeypatch.undo()
        sandbox.available.cache_clear()


def test_switching_the_sandbox_off_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.MODE_ENV, "off")
    assert sandbox.confine(["/bin/true"], sandbox.Confinement(tmp_path), {}) == ["/bin/true"]
