"""``make up`` for real: the stack starts, Airflow lists every phase DAG, Ctrl-C stops it all.

Runs ``python -m mai_ops.dev.stack`` as a separate session with real processes (Airflow
standalone, the local S3 and SMTP servers) and talks to it only over HTTP, the way
an organizer's browser would. The waits are readiness bounds, not speed checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from mai_ops.dev.embedded import free_port

PROJECT = Path(__file__).resolve().parent.parent
EXPECTED_DAGS = {
    *(
        f"mai2021__{phase}"
        for phase in (
            "release_data",
            "validation_server",
            "validation_uploads",
            "final_collection",
            "scoring",
            "preliminary_results",
            "reminders",
            "workshop_notices",
        )
    ),
    "mai2023__reminders",
    "mai2023__workshop_notices",
}
READY_TIMEOUT = 240.0
DAGS_TIMEOUT = 240.0
STOP_TIMEOUT = 120.0


class Stack:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, started: float):
        self.proc = proc
        self.port = port
        self.log = log
        self.started = started

    def get(self, path: str) -> dict:
        """GET a JSON endpoint, without credentials: the stack promises no login."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def tail(self, lines: int = 80) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- last lines of the stack's output ---\n{self.tail()}")


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of the stack's session: task processes leave its group, not its session."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    log = home / "stack.log"
    port, s3_port = free_port(), free_port()
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mai_ops.dev.stack",
                "--port",
                str(port),
                "--s3-port",
                str(s3_port),
                "--smtp-port",
                "0",
                "--home",
                str(home / "airflow"),
            ],
            cwd=PROJECT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Stack(proc, port, log, started)
    running.s3_endpoint = f"http://127.0.0.1:{s3_port}"
    running.outbox = home / "airflow" / "outbox"
    try:
        yield running
    finally:
        if proc.poll() is None:  # a failed test left it running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for leftover in session_processes(proc.pid):
            leftover.kill()


def wait_for_health(stack) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if stack.proc.poll() is not None:
            stack.fail(f"the stack exited early with code {stack.proc.returncode}")
        try:
            return stack.get("/api/v2/monitor/health")
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):  # the stack promises no login
                stack.fail(f"health check answered {err.code} {err.reason}")
            if time.monotonic() > deadline:
                stack.fail(f"health check still answers {err.code} after {READY_TIMEOUT:.0f} s")
            time.sleep(1)
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                stack.fail(f"no answer from the api-server within {READY_TIMEOUT:.0f} s")
            time.sleep(1)


def test_api_server_answers(stack):
    health = wait_for_health(stack)
    print(f"\napi-server answered after {time.monotonic() - stack.started:.1f} s")
    if health["metadatabase"]["status"] != "healthy":
        stack.fail(f"unhealthy: {health}")


def test_every_phase_dag_is_listed_without_import_errors(stack):
    deadline = time.monotonic() + DAGS_TIMEOUT
    seen: set[str] = set()
    while not EXPECTED_DAGS <= seen:
        if stack.proc.poll() is not None:
            stack.fail(f"the stack exited early with code {stack.proc.returncode}")
        if time.monotonic() > deadline:
            stack.fail(f"DAGs still missing after {DAGS_TIMEOUT:.0f} s: {EXPECTED_DAGS - seen}")
        try:
            seen = {d["dag_id"] for d in stack.get("/api/v2/dags?limit=100")["dags"]}
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):  # the stack promises no login
                stack.fail(f"GET /api/v2/dags answered {err.code} {err.reason}")
        except (OSError, ValueError):
            pass
        if not EXPECTED_DAGS <= seen:
            time.sleep(1)
    print(f"\nall {len(EXPECTED_DAGS)} DAGs listed after {time.monotonic() - stack.started:.1f} s")
    if seen != EXPECTED_DAGS:
        stack.fail(f"unexpected DAGs: {seen - EXPECTED_DAGS}")
    errors = stack.get("/api/v2/importErrors")
    if errors["total_entries"] != 0:
        stack.fail(f"import errors: {errors}")


def test_an_upload_is_answered_by_email_through_the_queue(stack):
    """S3 notification -> queue -> asset watcher -> validation DAG -> reply email.

    mai2021's validation phase closed in 2021, so the answer is a rejection naming
    the deadline: the whole event path runs, and the storage server's clock decides.
    """
    import io
    import zipfile
    from email import message_from_bytes, policy

    from mai_ops.dev.embedded import s3_client

    wait_for_health(stack)
    key = "depth/validation/borealis/after-the-deadline.zip"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.tflite", b"not checked: rejected before")
    s3_client(stack.s3_endpoint).put_object(
        Bucket="mai2021-submissions", Key=key, Body=archive.getvalue()
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for path in stack.outbox.glob("*.eml"):
            msg = message_from_bytes(path.read_bytes(), policy=policy.default)
            if f"/upload/{key}/" in msg["X-MAI-Notice"]:
                body = msg.get_body().get_content()
                assert msg["To"] == "borealis@teams.example"
                assert "REJECTED" in body and "[late]" in body, body
                return
        time.sleep(1)
    stack.fail("no reply email for the upload within 240 s")


def test_ctrl_c_stops_everything(stack):
    wait_for_health(stack)  # also when this test runs alone
    assert session_processes(stack.proc.pid), "no processes in the stack's session"
    os.killpg(stack.proc.pid, signal.SIGINT)
    try:
        code = stack.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stack.fail(f"the stack did not exit within {STOP_TIMEOUT:.0f} s of SIGINT")
    if code != 0:
        stack.fail(f"the stack exited with code {code}")
    leftovers = []
    for proc in session_processes(stack.proc.pid):
        try:
            leftovers.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.Error:  # gone meanwhile
            continue
    if leftovers:
        stack.fail("processes left behind:\n" + "\n".join(leftovers))
    with pytest.raises(urllib.error.URLError):
        stack.get("/api/v2/monitor/health")
