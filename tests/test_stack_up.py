"""``make up`` for real: the stack starts, Airflow lists every phase DAG, Ctrl-C stops it all.

Runs ``python -m mai_ops.dev.stack`` as a separate session with real processes (Airflow
standalone, the local S3 and SMTP servers) and talks to it only over HTTP, the way
an organizer's browser would, then starts it again on the same home: nothing is lost,
nothing is sent twice. The waits are readiness bounds, not speed checks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from email import message_from_bytes, policy
from pathlib import Path

import psutil
import pytest
import yaml

from mai_ops.dev.embedded import free_port, s3_client, sqs_client
from mai_ops.dev.stack import spawn

from .conftest import rest_api

PROJECT = Path(__file__).resolve().parent.parent
PHASES = (
    "release_data",
    "validation_server",
    "validation_uploads",
    "final_collection",
    "scoring",
    "preliminary_results",
    "reminders",
    "workshop_notices",
)
EXPECTED_DAGS = {
    *(f"mai2021__{phase}" for phase in PHASES),
    # The rehearsal copy: mai2021 with its final deadline tomorrow.
    *(f"mai2021_rehearsal__{phase}" for phase in PHASES),
    "mai2023__reminders",
    "mai2023__workshop_notices",
}
READY_TIMEOUT = 600.0
DAGS_TIMEOUT = 240.0
STOP_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0
UPLOAD_KEY = "depth/validation/borealis/after-the-deadline.zip"


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


def start_stack(root: Path, log_name: str, port: int, s3_port: int) -> Stack:
    """The stack on ``root``'s copy of the shipped challenge files, with rehearsals."""
    env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(root / "challenges")}
    log = root / log_name
    proc = spawn(port, s3_port, root / "airflow", log, env, rehearsal=True)
    running = Stack(proc, port, log, time.monotonic())
    running.s3_port = s3_port
    running.s3_endpoint = f"http://127.0.0.1:{s3_port}"
    running.outbox = root / "airflow" / "outbox"
    running.root = root
    return running


def kill_stack(running: Stack) -> None:
    if running.proc.poll() is None:  # a failed test left it running
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(timeout=30)
    for leftover in session_processes(running.proc.pid):
        leftover.kill()


@pytest.fixture(scope="module")
def stack_root(tmp_path_factory):
    """A copy of the shipped challenge files, so a test can drop a new one in."""
    root = tmp_path_factory.mktemp("stack")
    shutil.copytree(PROJECT / "include" / "challenges", root / "challenges")
    shutil.copytree(PROJECT / "include" / "participants", root / "participants")
    return root


@pytest.fixture(scope="module")
def stack(stack_root):
    running = start_stack(stack_root, "stack.log", free_port(), free_port())
    try:
        yield running
    finally:
        kill_stack(running)


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
    wait_for_health(stack)
    msg = upload_and_read_reply(stack, "mai2021-submissions", UPLOAD_KEY, "mai2021")
    body = msg.get_body().get_content()
    assert msg["To"] == "borealis@teams.example"
    assert "REJECTED" in body and "[late]" in body, body


def upload_and_read_reply(stack, bucket: str, key: str, challenge_id: str):
    """Upload an archive whose model is not a model; return the reply to it."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.tflite", b"not a flatbuffer")
    s3_client(stack.s3_endpoint).put_object(Bucket=bucket, Key=key, Body=archive.getvalue())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for msg in outbox(stack):
            if msg["X-MAI-Notice"].startswith(f"{challenge_id}/upload/{key}/"):
                return msg
        time.sleep(1)
    stack.fail(f"no reply email for {bucket}/{key} within 240 s")


def outbox(stack) -> list:
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(stack.outbox.glob("*.eml"))
    ]


def assert_nothing_sent_twice(stack) -> int:
    notices = [m["X-MAI-Notice"] for m in outbox(stack)]
    twice = sorted({n for n in notices if notices.count(n) > 1})
    assert not twice, f"sent more than once: {twice}"
    return len(notices)


def api(stack, method: str, path: str, body: dict | None = None) -> dict:
    # A busy api-server may take its time; a POST is not repeated, so it gets more.
    return rest_api(stack.port, method, path, body, timeout=120 if body is not None else 15)


ANNOUNCE = {"event": "validation_server_online"}


def wait_for_dag(stack, dag_id: str) -> None:
    deadline = time.monotonic() + DAGS_TIMEOUT
    while time.monotonic() < deadline:
        try:
            listed = api(stack, "GET", "/api/v2/dags?limit=100")["dags"]
            if any(d["dag_id"] == dag_id for d in listed):
                return
        except (OSError, ValueError):
            pass
        time.sleep(1)
    stack.fail(f"{dag_id} not listed after {DAGS_TIMEOUT:.0f} s")


def run_to_the_end(stack, dag_id: str, conf: dict) -> dict:
    """Trigger ``dag_id`` through the REST API and wait for the run to finish."""
    run = api(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            run = api(stack, "GET", path)
        except OSError:  # busy: ask again
            continue
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(1)
    stack.fail(f"{dag_id} run {run['dag_run_id']} still {run['state']} after {RUN_TIMEOUT:.0f} s")


def test_the_rehearsal_copy_is_open_now(stack):
    """The rehearsal's validation server answers on its merits, not with [late]."""
    wait_for_health(stack)
    key = "depth/validation/borealis/rehearsal.zip"
    msg = upload_and_read_reply(stack, "mai2021-submissions-rehearsal", key, "mai2021_rehearsal")
    body = msg.get_body().get_content()
    assert "FAILED the checks" in body and "[late]" not in body, body


DROPPED = {
    "id": "dropin",
    "title": "Dropped in while the stack runs",
    "participants": {"source": "file", "path": "../participants/mai2021.csv"},
    "buckets": {
        "organizers": "dropin-organizers",
        "submissions": "dropin-submissions",
        "public": "dropin-public",
        "results": "dropin-results",
    },
    "uploads_queue": "dropin-uploads",
    "timeline": [
        {"name": "final_deadline", "title": "Final", "date": dt.date(2031, 3, 20)},
    ],
}


def test_a_dropped_in_challenge_gets_its_buckets_and_queue(stack):
    wait_for_health(stack)
    (stack.root / "challenges" / "dropin.yaml").write_text(yaml.safe_dump(DROPPED))
    s3, sqs = s3_client(stack.s3_endpoint), sqs_client(stack.s3_endpoint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        if set(DROPPED["buckets"].values()) <= names:
            break
        time.sleep(1)
    else:
        stack.fail("the dropped-in challenge's buckets were not created within 120 s")
    arn = sqs.get_queue_attributes(
        QueueUrl=sqs.get_queue_url(QueueName="dropin-uploads")["QueueUrl"],
        AttributeNames=["QueueArn"],
    )["Attributes"]["QueueArn"]
    notify = s3.get_bucket_notification_configuration(Bucket="dropin-submissions")
    assert [q["QueueArn"] for q in notify["QueueConfigurations"]] == [arn]
    # Its rehearsal copy is served too.
    assert "dropin-submissions-rehearsal" in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_an_announcement_is_sent_once(stack):
    wait_for_health(stack)
    run = run_to_the_end(stack, "mai2021__validation_server", ANNOUNCE)
    assert run["state"] == "success", run
    announced = [m for m in outbox(stack) if "validation_server_online" in m["X-MAI-Notice"]]
    assert announced, "no announcement in the outbox"
    assert_nothing_sent_twice(stack)


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


def test_a_restart_loses_no_upload_and_sends_nothing_twice(stack):
    """Start again on the same home: the upload, its record and every sent-marker are there."""
    from mai_ops.infra.layout import upload_record_key

    if stack.proc.poll() is None:  # also when this test runs alone
        os.killpg(stack.proc.pid, signal.SIGINT)
        stack.proc.wait(timeout=STOP_TIMEOUT)
    before = assert_nothing_sent_twice(stack)
    again = start_stack(stack.root, "restart.log", free_port(), free_port())
    try:
        wait_for_health(again)
        s3 = s3_client(again.s3_endpoint)
        etag = s3.head_object(Bucket="mai2021-submissions", Key=UPLOAD_KEY)["ETag"]
        record = s3.get_object(Bucket="mai2021-results", Key=upload_record_key(UPLOAD_KEY, etag))
        assert json.load(record["Body"])["status"] == "rejected"
        wait_for_dag(again, "mai2021__validation_server")
        run = run_to_the_end(again, "mai2021__validation_server", ANNOUNCE)
        assert run["state"] == "success", run
        after = assert_nothing_sent_twice(again)
        assert after >= before
        os.killpg(again.proc.pid, signal.SIGINT)
        assert again.proc.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        kill_stack(again)
