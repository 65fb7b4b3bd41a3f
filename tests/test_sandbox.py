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
import time
from pathlib import Path

import pytest

from mai_ops import PROJECT_ROOT
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox
from mai_ops.infra import child, sandbox
from mai_ops.infra.storage import list_objects

from .conftest import REHEARSAL
from .test_validation import put_zip

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


def test_a_confined_child_that_times_out_leaves_nothing_running(monkeypatch):
    """bubblewrap's pid namespace dies with it: no grandchild survives the kill."""
    marker = "600.4242"  # a sleep nobody else runs
    script = (
        "import subprocess, sys, time\n"
        "sys.stdin.read()\n"
        f"subprocess.Popen(['sleep', '{marker}'])\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(child, "child_command", lambda module: [sys.executable, "-c", script])
    outcome = child.run_child("any.module", {}, child.ChildLimits(timeout_s=5))
    assert outcome.status == "timeout"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        survivors = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True)
        if survivors.returncode == 1:  # nothing matched
            break
        time.sleep(0.2)
    assert survivors.returncode == 1, survivors.stdout


def test_switching_the_sandbox_off_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.MODE_ENV, "off")
    assert sandbox.confine(["/bin/true"], sandbox.Confinement(tmp_path), {}) == ["/bin/true"]


# ----------------------------------------------------------- a hostile model, end to end


@pytest.fixture(scope="module")
def loader_attack(tmp_path_factory):
    """A SavedModel whose loading reads its parent's environment, writes, and raises."""
    out = tmp_path_factory.mktemp("hostile")
    escape = out / "escaped.txt"  # outside every scratch folder
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hostile_models", str(out), str(escape)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0 and "saved" in proc.stdout, proc.stderr[-2000:]
    files = {
        f"saved_model/{p.relative_to(out / 'loader_attack').as_posix()}": p.read_bytes()
        for p in sorted((out / "loader_attack").rglob("*"))
        if p.is_file()
    }
    return files, escape


def _readable(mail) -> str:
    """An email as its reader sees it: headers and every decoded text part."""
    parts = [part.get_content() for part in mail.walk() if part.get_content_maintype() == "text"]
    return "\n".join([*(f"{k}: {v}" for k, v in mail.items()), *parts])


WORKER = (
    "import json, sys; from mai_ops import tasks; "
    "print(json.dumps(tasks.validate_upload(sys.argv[1], sys.argv[2])))"
)


def _submit_attack(s3, files, key, **env):
    """Upload the archive, then answer it in a worker process started with a canary.

    A process's ``/proc/<pid>/environ`` is its environment as it was started, so the
    canary must be there from the start, as a real worker's connections are.
    """
    put_zip(s3, key, files)
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(REHEARSAL), key],
        env={
            **os.environ,
            "PYTHONPATH": str(PROJECT_ROOT),
            "AIRFLOW_CONN_CANARY": f"s3://key:{CANARY}@bucket",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_savedmodel_that_attacks_its_loader_reaches_nothing(
    s3, airflow_connections, loader_attack
):
    files, escape = loader_attack
    answer = _submit_attack(s3, files, "depth/validation/borealis/attack.zip")

    assert not escape.exists(), "the model wrote outside its scratch folder"
    assert answer["status"] == "failed"
    assert [e["code"] for e in answer["errors"]] == ["conversion_failed"]
    results = load_challenge(REHEARSAL).buckets.results
    stored = [
        s3.get_object(Bucket=results, Key=o["Key"])["Body"].read().decode()
        for o in list_objects(s3, results, "uploads/")
    ]
    mails = [_readable(m) for m in read_outbox(airflow_connections.folder)]
    assert len(stored) == 1 and len(mails) == 1 and "attack.zip" in mails[0]
    for text in (*stored, *mails):
        assert CANARY not in text


def test_without_the_sandbox_the_same_model_escapes(s3, airflow_connections, loader_attack):
    """What the test above would catch: unconfined, the model writes where it likes.

    The record still carries no secret: messages are cleaned on their way to a team.
    """
    files, escape = loader_attack
    key = "depth/validation/borealis/attack-unconfined.zip"
    answer = _submit_attack(s3, files, key, **{sandbox.MODE_ENV: "off"})
    try:
        assert escape.exists() and CANARY in escape.read_text(errors="replace")
    finally:
        escape.unlink(missing_ok=True)
    assert [e["code"] for e in answer["errors"]] == ["conversion_failed"]
    assert CANARY not in json.dumps(answer)
