"""``make up`` for real: the stack starts, Airflow lists every phase DAG, Ctrl-C stops it all.

Runs ``python -m mai_ops.dev.stack`` as a separate session with real processes (Airflow
standalone, the local S3 and SMTP servers) and talks to it only over HTTP, the way
an organizer's browser would, then starts it again on the same home: nothing is lost,
nothing is sent twice. The waits are readiness bounds, not speed checks.

The organizers' cockpit on the rehearsal copy (its phases are open now): every DAG takes
its trigger form's defaults, a mapped task is found by its team's name, a participant's
broken model is skipped while a failure of ours is retried, then red, a freeze before the
deadline is refused unless asked for early, and the UI's trigger form opens ready to submit
in a real headless Chromium (``tests/browser.py``).
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
import urllib.parse
import urllib.request
from email import message_from_bytes, policy
from pathlib import Path

import psutil
import pytest
import yaml

from mai_ops.dev.embedded import free_port, s3_client, sqs_client, text_part
from mai_ops.dev.stack import spawn

from .conftest import MAI2021, rest_api, synthetic_test_pairs

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
REHEARSAL = "mai2021_rehearsal"
REHEARSAL_BUCKETS = {
    role: f"mai2021-{role}-rehearsal" for role in ("organizers", "submissions", "results")
}
# Final uploads whose model.tflite is not a flatbuffer: the participants' own failure.
BROKEN_FINALS = {
    "depth/final/borealis/final.zip": ("depth", "borealis"),
    "learned_isp/final/aurora/final.zip": ("learned_isp", "aurora"),
}
# A task instance in one of these states will not run again by itself.
TASK_DONE = {"success", "failed", "skipped", "upstream_failed", "removed"}


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


def start_stack(
    root: Path, log_name: str, port: int, s3_port: int, extra_env: dict | None = None, **options
) -> Stack:
    """The stack on ``root``'s copy of the shipped challenge files, with rehearsals.

    ``options``: more of :func:`spawn`'s (``executor``, ``rehearsal``, ``options``);
    ``extra_env``: settings for every component (``AIRFLOW__...``).
    """
    env = {
        **os.environ,
        **(extra_env or {}),
        "MAI_OPS_CHALLENGES_DIR": str(root / "challenges"),
        # Its DAG folder is this checkout's, so its task processes import this checkout's
        # packages too, whichever checkout the environment was installed from.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])),
    }
    log = root / log_name
    proc = spawn(port, s3_port, root / "airflow", log, env, **{"rehearsal": True, **options})
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
    assert_dags_listed(stack, EXPECTED_DAGS)


def assert_dags_listed(stack, expected: set[str]) -> None:
    """Exactly ``expected`` are listed through the REST API, with no import error."""
    deadline = time.monotonic() + DAGS_TIMEOUT
    seen: set[str] = set()
    while not expected <= seen:
        if stack.proc.poll() is not None:
            stack.fail(f"the stack exited early with code {stack.proc.returncode}")
        if time.monotonic() > deadline:
            stack.fail(f"DAGs still missing after {DAGS_TIMEOUT:.0f} s: {expected - seen}")
        try:
            seen = {d["dag_id"] for d in stack.get("/api/v2/dags?limit=100")["dags"]}
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):  # the stack promises no login
                stack.fail(f"GET /api/v2/dags answered {err.code} {err.reason}")
        except (OSError, ValueError):
            pass
        if not expected <= seen:
            time.sleep(1)
    print(f"\nall {len(expected)} DAGs listed after {time.monotonic() - stack.started:.1f} s")
    if seen != expected:
        stack.fail(f"unexpected DAGs: {seen - expected}")
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
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert msg["To"] == "borealis@teams.example"
    assert "REJECTED" in body and "[late]" in body, body


def broken_archive(content: bytes = b"not a flatbuffer") -> bytes:
    """A zip whose model.tflite is not a TFLite flatbuffer (the participant's fault)."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.tflite", content)
    return archive.getvalue()


def upload_and_read_reply(stack, bucket: str, key: str, challenge_id: str):
    """Upload an archive whose model is not a model; return the reply to it."""
    s3_client(stack.s3_endpoint).put_object(Bucket=bucket, Key=key, Body=broken_archive())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for msg in team_emails(stack):
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
    # Organizer alerts (a task that failed) carry no notice key: each is one failure.
    notices = [m["X-MAI-Notice"] for m in team_emails(stack)]
    twice = sorted({n for n in notices if notices.count(n) > 1})
    assert not twice, f"sent more than once: {twice}"
    return len(notices)


def api(stack, method: str, path: str, body: dict | None = None) -> dict:
    # A busy api-server may take its time; a POST is not repeated, so it gets more.
    try:
        return rest_api(stack.port, method, path, body, timeout=120 if body is not None else 15)
    except urllib.error.HTTPError as err:
        if err.code < 500:
            raise
        # A server error says why only in the stack's output: show both.
        stack.fail(f"{method} {path} answered {err.code}: {err.read()[:2000]!r}")


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
    return wait_for_run(stack, dag_id, run["dag_run_id"])


def run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='~')}"


def wait_for_run(stack, dag_id: str, run_id: str, approve: bool = False) -> dict:
    """The run once it has finished (success or failed).

    ``approve``: an approval step the run stops at is answered "Approve" through the
    REST API, as an organizer does in the UI.
    """
    deadline = time.monotonic() + RUN_TIMEOUT
    run = {"dag_run_id": run_id, "state": "unknown"}
    while time.monotonic() < deadline:
        try:
            run = api(stack, "GET", run_path(dag_id, run_id))
            if approve:
                approve_pending(stack, dag_id, run_id)
        except OSError:  # busy: ask again
            continue
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(1)
    stack.fail(f"{dag_id} run {run_id} still {run['state']} after {RUN_TIMEOUT:.0f} s")


def approve_pending(stack, dag_id: str, run_id: str) -> list[str]:
    """Answer the run's waiting approval steps "Approve", as the UI's Required Actions do."""
    answered = []
    for detail in api(stack, "GET", f"{run_path(dag_id, run_id)}/hitlDetails")["hitl_details"]:
        if detail.get("response_received"):
            continue
        ti = detail["task_instance"]
        path = f"{run_path(dag_id, run_id)}/taskInstances/{ti['task_id']}/{ti['map_index']}"
        api(
            stack,
            "PATCH",
            f"{path}/hitlDetails",
            {"chosen_options": ["Approve"], "params_input": {}},
        )
        answered.append(ti["task_id"])
    return answered


def form_defaults(stack, dag_id: str) -> dict:
    """The conf the UI's trigger form submits untouched: each param's default value.

    The form is built from the DAG's details and sends every param, empty ones as null.
    """
    params = api(stack, "GET", f"/api/v2/dags/{dag_id}/details")["params"]
    return {name: param["value"] for name, param in params.items()}


def trigger_like_the_form(stack, dag_id: str, conf: dict) -> dict:
    """POST the run the way the UI's trigger form does: logical date now, interval inferred."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {
        "conf": conf,
        "data_interval_end": None,
        "data_interval_start": None,
        "logical_date": now,
    }
    return api(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", body)


def task_instances(stack, dag_id: str, run_id: str = "~", **query) -> list[dict]:
    """The task-instances endpoint (``~``: every run of the DAG), filtered by ``query``."""
    path = f"{run_path(dag_id, run_id)}/taskInstances?{urllib.parse.urlencode(query)}"
    return api(stack, "GET", path)["task_instances"]


def stage_hidden_test_data(s3) -> None:
    """What organizers stage before scoring: a hidden test pair per track with finals."""
    from mai_ops.dev.test_data import stage_pairs

    for track in ("learned_isp", "depth"):
        pairs = synthetic_test_pairs(MAI2021, track)
        stage_pairs(s3, REHEARSAL_BUCKETS["organizers"], track, pairs)


def wait_for_named_task(
    stack, dag_id: str, name: str, run_id: str = "~", count: int = 1
) -> list[dict]:
    """The finished mapped tasks whose grid name (rendered_map_index) starts with ``name``
    (at least ``count`` of them)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            found = task_instances(stack, dag_id, run_id, rendered_map_index_prefix_pattern=name)
        except OSError:  # busy: ask again
            found = []
        if len(found) >= count and all(t["state"] in TASK_DONE for t in found):
            return found
        time.sleep(1)
    stack.fail(f"no finished task of {dag_id} named {name}... after {RUN_TIMEOUT:.0f} s")


def task_log(stack, dag_id: str, run_id: str, task_id: str, try_number: int, map_index=-1) -> str:
    """A try's log as lines of text, each error with its type and message."""
    path = (
        f"{run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}"
        f"?map_index={map_index}"
    )
    lines = []
    for entry in api(stack, "GET", path)["content"]:
        lines.append(str(entry.get("event", "")))
        for error in entry.get("error_detail") or []:
            lines.append(f"{error['exc_type']}: {error['exc_value']}")
    return "\n".join(lines)


def team_emails(stack) -> list:
    """The emails to teams: every one carries its notice key (organizer alerts do not)."""
    return [m for m in outbox(stack) if m["X-MAI-Notice"]]


def notices(stack, prefix: str) -> list:
    """The emails in the outbox whose notice key starts with ``prefix``."""
    return [m for m in team_emails(stack) if m["X-MAI-Notice"].startswith(prefix)]


def deadline_passed_emails(stack) -> list[str]:
    """Notice keys of the emails telling a team that the final deadline has passed."""
    return [m["X-MAI-Notice"] for m in team_emails(stack) if "deadline has passed" in text_part(m)]


def test_the_rehearsal_copy_is_open_now(stack):
    """The rehearsal's validation server answers on its merits, not with [late].

    In the grid the upload's task is found by its team's name, without reading XComs:
    the participant's broken model is skipped and named with its code.
    """
    wait_for_health(stack)
    key = "depth/validation/borealis/rehearsal.zip"
    msg = upload_and_read_reply(stack, REHEARSAL_BUCKETS["submissions"], key, REHEARSAL)
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert "FAILED the checks" in body and "[late]" not in body, body
    found = wait_for_named_task(stack, f"{REHEARSAL}__validation_uploads", "borealis/")
    assert [(t["task_id"], t["rendered_map_index"], t["state"]) for t in found] == [
        ("validate_uploads", "borealis/rehearsal.zip: not_tflite", "skipped")
    ]


def test_a_freeze_before_the_deadline_is_refused_with_the_reason(stack):
    """Final collection triggered by hand with the form's defaults, before the deadline."""
    from mai_ops.infra.layout import FROZEN_MANIFEST

    wait_for_health(stack)
    dag_id = f"{REHEARSAL}__final_collection"
    conf = form_defaults(stack, dag_id)
    assert conf == {"refreeze": False, "early_freeze": False}
    run = wait_for_run(stack, dag_id, trigger_like_the_form(stack, dag_id, conf)["dag_run_id"])
    assert run["state"] == "failed", run
    states = {t["task_id"]: t for t in task_instances(stack, dag_id, run["dag_run_id"])}
    freeze = states["freeze_final_set"]
    # An organizer's decision, not a glitch: it fails at once, without retries.
    assert (freeze["state"], freeze["try_number"]) == ("failed", 1), freeze
    assert states["send_receipts"]["state"] == "upstream_failed"
    log = task_log(stack, dag_id, run["dag_run_id"], "freeze_final_set", 1)
    assert "still to come" in log and "early_freeze" in log, log
    s3 = s3_client(stack.s3_endpoint)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=REHEARSAL_BUCKETS["results"], Key=FROZEN_MANIFEST)
    assert not notices(stack, f"{REHEARSAL}/final_receipt"), "a receipt went out"
    assert not deadline_passed_emails(stack)


def test_an_early_freeze_is_provisional_and_scoring_skips_broken_models(stack):
    """With early_freeze ticked the set is frozen and scored; each broken model is skipped."""
    from mai_ops.infra.layout import FROZEN_MANIFEST
    from mai_ops.infra.storage import get_json

    wait_for_health(stack)
    s3 = s3_client(stack.s3_endpoint)
    for key in BROKEN_FINALS:
        s3.put_object(Bucket=REHEARSAL_BUCKETS["submissions"], Key=key, Body=broken_archive())
    stage_hidden_test_data(s3)
    dag_id = f"{REHEARSAL}__final_collection"
    conf = {**form_defaults(stack, dag_id), "early_freeze": True}
    run = wait_for_run(stack, dag_id, trigger_like_the_form(stack, dag_id, conf)["dag_run_id"])
    assert run["state"] == "success", run

    manifest = get_json(s3, REHEARSAL_BUCKETS["results"], FROZEN_MANIFEST)
    assert manifest["early"] is True
    assert {(f["track"], f["team"]) for f in manifest["frozen"]} == set(BROKEN_FINALS.values())
    receipts = notices(stack, f"{REHEARSAL}/final_receipt")
    assert receipts, "no receipt"
    for msg in receipts:
        assert msg["X-MAI-Notice"].startswith(f"{REHEARSAL}/final_receipt_early/"), msg
        body = msg.get_body(preferencelist=("plain",)).get_content()
        assert "froze the final set early" in body and "deadline has passed" not in body, body

    # The frozen set is an asset: scoring runs by itself, one task per submission.
    scoring = f"{REHEARSAL}__scoring"
    for track, team in BROKEN_FINALS.values():
        found = wait_for_named_task(stack, scoring, f"{team}:", count=2)
        assert sorted((t["task_id"], t["rendered_map_index"], t["state"]) for t in found) == [
            (f"score_{track}.{stage}", f"{team}: not_tflite", "skipped")
            for stage in ("prepare", "score")
        ]
    run_id = found[0]["dag_run_id"]
    assert run_id.startswith("asset_triggered__"), run_id
    assert wait_for_run(stack, scoring, run_id)["state"] == "success"


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
    # The challenge's buckets and those of its rehearsal copy, made one after the other.
    wanted = set(DROPPED["buckets"].values()) | {"dropin-submissions-rehearsal"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        if wanted <= names:
            break
        time.sleep(1)
    else:
        stack.fail(f"buckets {sorted(wanted - names)} were not created within 120 s")
    arn = sqs.get_queue_attributes(
        QueueUrl=sqs.get_queue_url(QueueName="dropin-uploads")["QueueUrl"],
        AttributeNames=["QueueArn"],
    )["Attributes"]["QueueArn"]
    notify = s3.get_bucket_notification_configuration(Bucket="dropin-submissions")
    assert [q["QueueArn"] for q in notify["QueueConfigurations"]] == [arn]


def test_a_phase_whose_instant_passed_before_its_dag_appeared_still_runs_once(stack):
    """A challenge file arriving (or edited) just after one of its instants: the phase
    runs late, by itself, once (Airflow's own events timetable would skip it)."""
    wait_for_health(stack)
    passed = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=2)
    folder = stack.root / "challenges"
    (folder / "latecomer.csv").write_text("team_id,team_name,email\nlate,Late,late@teams.example\n")
    late = {
        **DROPPED,
        "id": "latecomer",
        "participants": {"source": "file", "path": "latecomer.csv"},
        "timezone": "UTC",
        "buckets": {role: f"latecomer-{role}" for role in DROPPED["buckets"]},
        "uploads_queue": "latecomer-uploads",
        "timeline": [
            {
                "name": "validation_server_online",
                "title": "Validation server online",
                "date": passed.date(),
                "time": passed.strftime("%H:%M"),
                "phase": "validation_server",
            },
            *DROPPED["timeline"],
        ],
    }
    (folder / "latecomer.yaml").write_text(yaml.safe_dump(late))
    dag_id = "latecomer__validation_server"
    wait_for_dag(stack, dag_id)
    deadline = time.monotonic() + 300
    while not (runs := api(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]):
        if time.monotonic() > deadline:
            stack.fail(f"{dag_id}: no run for the instant it missed within 300 s")
        time.sleep(1)
    [run] = runs
    assert run["run_type"] == "scheduled", run
    assert dt.datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00")) == passed
    assert wait_for_run(stack, dag_id, run["dag_run_id"])["state"] == "success"
    time.sleep(5)  # a second run would have been created by now
    assert len(api(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]) == 1
    assert [m["To"] for m in notices(stack, "latecomer/validation_server/")] == [
        "late@teams.example"
    ]
    assert_nothing_sent_twice(stack)


def test_an_announcement_is_sent_once(stack):
    wait_for_health(stack)
    run = run_to_the_end(stack, "mai2021__validation_server", ANNOUNCE)
    assert run["state"] == "success", run
    announced = [m for m in team_emails(stack) if "validation_server_online" in m["X-MAI-Notice"]]
    assert announced, "no announcement in the outbox"
    assert_nothing_sent_twice(stack)


def test_every_rehearsal_dag_takes_its_form_defaults(stack):
    """Each DAG of the rehearsal, triggered as the UI's form submits it untouched.

    Every run is accepted and finishes; all succeed but the final collection, which
    refuses to freeze before the deadline (the organizers' data for the releases is
    staged first, as they would).
    """
    from mai_ops.infra.layout import data_prefix

    wait_for_health(stack)
    s3 = s3_client(stack.s3_endpoint)
    for event in ("train_data_release", "test_data_release"):
        s3.put_object(
            Bucket=REHEARSAL_BUCKETS["organizers"], Key=f"{data_prefix(event)}readme.txt", Body=b"x"
        )
    stage_hidden_test_data(s3)
    runs = {}
    for phase in PHASES:
        dag_id = f"{REHEARSAL}__{phase}"
        conf = form_defaults(stack, dag_id)
        run = trigger_like_the_form(stack, dag_id, conf)
        assert (run["state"], run["run_type"], run["conf"]) == ("queued", "manual", conf), run
        runs[dag_id] = run["dag_run_id"]
    # Waited for, so that no run is left behind to compete with the next tests.
    # The preliminary results stop at their approval step: approved as in the UI.
    ended = {
        dag_id: wait_for_run(stack, dag_id, run, approve=True)["state"]
        for dag_id, run in runs.items()
    }
    assert ended == {
        dag_id: "failed" if dag_id.endswith("__final_collection") else "success" for dag_id in runs
    }
    assert not deadline_passed_emails(stack)
    assert_nothing_sent_twice(stack)


def test_a_failure_of_ours_is_red_not_skipped(stack):
    """A frozen copy changed after the freeze is our failure: retried, then red; never skipped."""
    from mai_ops.infra.layout import FROZEN_MANIFEST, stage_key
    from mai_ops.infra.storage import get_json

    wait_for_health(stack)
    s3 = s3_client(stack.s3_endpoint)
    results = REHEARSAL_BUCKETS["results"]
    entry = next(
        e for e in get_json(s3, results, FROZEN_MANIFEST)["frozen"] if e["team"] == "aurora"
    )
    original = s3.get_object(Bucket=results, Key=entry["frozen"])["Body"].read()
    s3.put_object(Bucket=results, Key=entry["frozen"], Body=broken_archive(b"changed"))
    stage_hidden_test_data(s3)
    dag_id = f"{REHEARSAL}__scoring"
    conf = {
        **form_defaults(stack, dag_id),
        "track": entry["track"],
        "team": "aurora",
        "remeasure": True,
    }
    run_id = trigger_like_the_form(stack, dag_id, conf)["dag_run_id"]
    task_id = f"score_{entry['track']}.prepare"
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            mapped = task_instances(stack, dag_id, run_id, task_id=task_id)
            if mapped and mapped[0]["state"] in ("up_for_retry", "failed", "skipped", "success"):
                break
            if time.monotonic() > deadline:
                stack.fail(f"{task_id} of {run_id} not done after {RUN_TIMEOUT:.0f} s: {mapped}")
            time.sleep(1)
        # One frozen submission was asked for: the task's only map index is aurora's. It is
        # found by that index, as Airflow 3.3.2 drops the name of a task up for retry.
        [task] = mapped
        assert task["map_index"] == 0 and task["state"] in ("up_for_retry", "failed"), task
        log = task_log(stack, dag_id, run_id, task_id, 1, map_index=0)
        assert "aurora: frozen_copy_changed: a failure on our side" in log, log
        # The prepare stage's result: the record waits for the organizer's fix.
        checks = stage_key(entry["track"], "aurora", entry["sha256"], "checks.json")
        record = get_json(s3, results, checks)
        assert [e["code"] for e in record["errors"]] == ["frozen_copy_changed"]
    finally:
        # The organizers' fix: the frozen bytes back, and this run stopped (no retries left
        # running into the next tests).
        s3.put_object(Bucket=results, Key=entry["frozen"], Body=original)
        api(stack, "PATCH", run_path(dag_id, run_id), {"state": "failed"})


TRIGGER_BUTTON = "[data-testid=trigger-dag-button]"
SUBMIT_BUTTON = "[data-testid=trigger-dag-submit]"
# Read after two animation frames: the form's validation effects have run by then.
AFTER_RENDER = "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def test_the_scoring_trigger_form_opens_ready_to_submit(stack):
    """In real headless Chromium: the DAG page's Trigger button opens the form, ready to go."""
    from .browser import chromium

    wait_for_health(stack)
    dag_id = f"{REHEARSAL}__scoring"
    wait_for_dag(stack, dag_id)
    params = list(form_defaults(stack, dag_id))
    shot = PROJECT / "var" / "scoring-trigger-form.png"
    shot.unlink(missing_ok=True)
    with chromium(height=1300) as page:
        page.goto(f"http://127.0.0.1:{stack.port}/dags/{dag_id}")
        page.wait_for(f"!!document.querySelector('{TRIGGER_BUTTON}:not([disabled])')", "Trigger")
        page.evaluate(f"document.querySelector('{TRIGGER_BUTTON}').click()")
        fields = " && ".join(
            f"!!document.querySelector('[id=element_{p}], [name=element_{p}]')" for p in params
        )
        page.wait_for(f"!!document.querySelector('{SUBMIT_BUTTON}') && {fields}", "the form")
        disabled = page.evaluate(
            f"{AFTER_RENDER}.then(() => document.querySelector('{SUBMIT_BUTTON}').disabled)"
        )
        page.screenshot(shot)
        # The control: a data interval to give by hand, left empty, does disable it.
        page.evaluate("document.querySelector('input[type=radio][value=manual]').click()")
        page.wait_for(f"document.querySelector('{SUBMIT_BUTTON}').disabled", "a disabled Trigger")
    print(f"\nthe trigger form: {shot}")
    assert disabled is False, "the form's Trigger button is disabled as the form opens"
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_ctrl_c_stops_everything(stack):
    wait_for_health(stack)  # also when this test runs alone
    assert_ctrl_c_stops_everything(stack)


def assert_ctrl_c_stops_everything(stack) -> float:
    """SIGINT to the stack's session, as Ctrl-C: it exits 0 and leaves no process behind.

    Returns how long the stop took.
    """
    assert session_processes(stack.proc.pid), "no processes in the stack's session"
    began = time.monotonic()
    os.killpg(stack.proc.pid, signal.SIGINT)
    try:
        code = stack.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stack.fail(f"the stack did not exit within {STOP_TIMEOUT:.0f} s of SIGINT")
    took = time.monotonic() - began
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
    return took


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
        # The rehearsal's early freeze again: same set, its receipts not sent a second time.
        dag_id = f"{REHEARSAL}__final_collection"
        wait_for_dag(again, dag_id)
        conf = {**form_defaults(again, dag_id), "early_freeze": True}
        run = wait_for_run(again, dag_id, trigger_like_the_form(again, dag_id, conf)["dag_run_id"])
        assert run["state"] == "success", run
        assert not deadline_passed_emails(again)
        after = assert_nothing_sent_twice(again)
        assert after >= before
        os.killpg(again.proc.pid, signal.SIGINT)
        assert again.proc.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        kill_stack(again)
