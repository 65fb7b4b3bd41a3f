"""Fault drills on the real stack: outages, work that never finished, poisoned submissions.

One ``make up`` stack (LocalExecutor) for the module, driven only over HTTP (REST API,
S3, the outbox), as in ``tests/test_stack_up.py``, whose helpers these are. The faults
are real: the stack's S3-compatible server stops listening (connections refused, open
ones closed) and comes back on its port with the same objects, the SMTP server likewise
(:func:`mai_ops.dev.stack.request_fault`); the poisoned models really crash, hang and
exhaust LiteRT. Each drill ends with nothing lost and nothing sent twice.

The final-phase drills share one challenge dropped into the running stack, ``drill``,
whose final deadline is a few minutes ahead: six teams upload their final model (three
good ones of known order, from ``tests/final_phase_models.py``, and three poisoned ones,
from ``tests/poisoned_models.py``), the freeze at the deadline loses the storage for
30 s after its first copy, scoring runs on the frozen set, and the publication loses
the storage for 30 s after its first public object. The waits are readiness bounds,
not speed checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.timeline import event_instant
from mai_ops.dev.embedded import free_port, s3_client, text_part
from mai_ops.dev.stack import request_fault
from mai_ops.infra.layout import FROZEN_MANIFEST, PROCESSING, RANKING
from mai_ops.infra.storage import get_json, list_objects, object_exists

from .conftest import zip_bytes
from .test_final_scoring import _challenge_yaml, stage_test_set, submit
from .test_stack_up import (
    api,
    kill_stack,
    outbox,
    run_path,
    start_stack,
    task_instances,
    task_log,
    wait_for_dag,
    wait_for_health,
)

PROJECT = Path(__file__).resolve().parent.parent
OUTAGE_S = 30
HANG_CHECK_S = 30
DRILL = "drill"
BUCKETS = {role: f"drill-{role}" for role in ("organizers", "submissions", "public", "results")}
ORGANIZERS = "organizers@drill.example"
GOOD = ("ada", "bo", "cy")  # ranked in this order, by construction
POISONED = {"dee": "crash", "eve": "hang", "fay": "huge"}
POISON_CODES = {
    "dee": "check_crashed",
    "eve": "check_timeout",
    "fay": "check_memory_exceeded",
}
TEAMS = (*GOOD, *POISONED)
# The first retry 5 s after a failed try instead of 15 s (then 10 s, 20 s, ...): the same
# backoff, the 30 s outages waited out in less time.
DRILL_ENV = {"MAI_OPS_RETRY_DELAY_S": "5"}
LONG_WAIT = 900.0  # a readiness bound: the whole final phase on two busy cores
# What the drills learn and the later ones check.
STATE: dict = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack on a copy of the shipped challenge files; the drills' models built meanwhile."""
    root = tmp_path_factory.mktemp("drills")
    shutil.copytree(PROJECT / "include" / "challenges", root / "challenges")
    shutil.copytree(PROJECT / "include" / "participants", root / "participants")
    running = start_stack(
        root, "stack.log", free_port(), free_port(), rehearsal=False, extra_env=DRILL_ENV
    )
    try:
        began = time.monotonic()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        for module, args in (
            ("tests.final_phase_models", [root / "built"]),
            ("tests.poisoned_models", [root / "poisoned", "64", "64"]),
        ):
            subprocess.run(
                [sys.executable, "-m", module, *map(str, args)],
                check=True,
                capture_output=True,
                cwd=PROJECT,
                env=env,
            )
        print(f"\nmodels built in {time.monotonic() - began:.0f} s")
        wait_for_health(running)
        print(f"stack up after {time.monotonic() - running.started:.0f} s")
        yield running
    finally:
        kill_stack(running)


def drill_fault(stack, **plan) -> None:
    """Ask the stack for a fault and wait for it to say it applied it."""
    seen = stack.log.read_text(errors="replace").count("stack: fault drill:")
    request_fault(stack.root / "airflow", stack.proc.pid, **plan)
    deadline = time.monotonic() + 30
    while stack.log.read_text(errors="replace").count("stack: fault drill:") < seen + len(plan):
        if time.monotonic() > deadline:
            stack.fail(f"the stack did not apply the fault {plan}")
        time.sleep(0.2)


def wait_for(stack, what: str, check, timeout: float = LONG_WAIT):
    """``check()``'s first true value, asked every second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except OSError:  # the api-server is busy: ask again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            stack.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def finished_run(stack, dag_id: str, run_id: str) -> dict:
    def done():
        run = api(stack, "GET", run_path(dag_id, run_id))
        return run if run["state"] in ("success", "failed") else None

    return wait_for(stack, f"{dag_id} run {run_id} finished", done)


def instant(text: str) -> dt.datetime:
    """A time the REST API gave (ISO 8601, ``Z`` or an offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def runs_of(stack, dag_id: str) -> list[dict]:
    return api(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=start_date")["dag_runs"]


def team_mail_counts(stack) -> tuple[Counter, Counter]:
    """(emails per notice key, emails per recipient and Message-ID) in the outbox."""
    mails = outbox(stack)
    notices = Counter(m["X-MAI-Notice"] for m in mails if m["X-MAI-Notice"])
    copies = Counter((str(m["To"]), m["Message-ID"]) for m in mails)
    return notices, copies


def assert_nothing_sent_twice(stack) -> None:
    notices, copies = team_mail_counts(stack)
    assert not [n for n, c in notices.items() if c > 1], notices
    assert not [k for k, c in copies.items() if c > 1], copies


def log_lines(stack, fragment: str) -> list[str]:
    return [line for line in stack.log.read_text(errors="replace").splitlines() if fragment in line]


@pytest.fixture(scope="module")
def drill(stack):
    """The drill challenge dropped into the running stack, its deadline a minute or two
    away (the mail relay drill runs meanwhile), and its six teams' final uploads."""
    folder = stack.root / "challenges"
    rows = [f"{t},Team {t},{t}@teams.example,denoise" for t in TEAMS]
    (folder / "drill.csv").write_text("team_id,team_name,email,tracks\n" + "\n".join(rows) + "\n")
    # The first whole minute at least 75 s away: time to make its buckets and upload.
    now = dt.datetime.now(dt.UTC)
    deadline = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    if deadline - now < dt.timedelta(seconds=75):
        deadline += dt.timedelta(minutes=1)
    # Armed before the challenge exists: however late the tests before the freeze drill
    # finish, the freeze (its first copy) meets the outage.
    drill_fault(stack, s3={"seconds": OUTAGE_S, "after": f"PUT /{BUCKETS['results']}/frozen/"})
    path = folder / "drill.yaml"
    path.write_text(json.dumps(drill_challenge(deadline)))
    s3 = s3_client(stack.s3_endpoint)
    wait_for(stack, "the drill's buckets", lambda: _buckets_made(s3), 120)
    challenge = load_challenge(path)
    built, poisoned = stack.root / "built", stack.root / "poisoned"
    stage_test_set(s3, challenge, built)
    for team in GOOD:
        submit(s3, challenge, built, "denoise", team)
    for team, model in POISONED.items():
        body = poisoned_upload(poisoned / f"{model}.tflite")
        s3.put_object(Bucket=BUCKETS["submissions"], Key=f"denoise/final/{team}/x.zip", Body=body)
    assert dt.datetime.now(dt.UTC) < deadline, "the uploads came after the deadline"
    return {"path": path, "deadline": deadline}


# --- work that never finished ----------------------------------------------------------


def test_an_upload_whose_processing_died_long_ago_is_failed_once_and_the_organizers_alerted(
    stack,
):
    """What a worker that died in the middle of an upload leaves behind: the upload, its
    processing marker, no record. Started three hours ago (the limit is two), it is
    failed by the validation DAG's sweep as ``processing_stuck``: its team answered
    once, the sweep task red at once so the organizers' alert names it, and nothing
    left "running"; the next run leaves it alone.

    First in the module: the freeze drill's storage outage, armed when the drill
    challenge arrives, fires at its freeze a minute or two later, whichever test is
    running then; this test's own uploads and reads would meet it."""
    from mai_ops.infra.layout import upload_record_key
    from mai_ops.submissions.stuck import mark_started
    from mai_ops.timeouts import STUCK_AFTER_S

    dag_id = "mai2021__validation_uploads"
    wait_for_dag(stack, dag_id)
    s3 = s3_client(stack.s3_endpoint)
    key = "depth/validation/borealis/worker-died.zip"
    s3.put_object(Bucket="mai2021-submissions", Key=key, Body=zip_bytes({"readme.txt": b"x"}))
    head = s3.head_object(Bucket="mai2021-submissions", Key=key)
    # Within the moment the upload's notification takes to start the DAG.
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STUCK_AFTER_S + 3600)
    mark_started(s3, "mai2021-results", head, key, now=long_ago)

    record_key = upload_record_key(key, head["ETag"])
    record = wait_for(
        stack, "the stuck upload's record", lambda: _json_or_none(s3, record_key), 300
    )
    assert [e["code"] for e in record["errors"]] == ["processing_stuck"], record
    alerts = wait_for(stack, "the organizers' alert", lambda: _alerts(stack, "sweep_stuck"), 300)
    assert len(alerts) == 1 and key in alerts[0].get_body(("html",)).get_content()
    answers = [
        m for m in outbox(stack) if (m["X-MAI-Notice"] or "").startswith(f"mai2021/upload/{key}/")
    ]
    assert len(answers) == 1 and "processing_stuck" in text_part(answers[0])
    assert not [o for o in list_objects(s3, "mai2021-results", PROCESSING) if key in o["Key"]]
    # The sweep is red at once (an organizer's matter: no retries); the rest of its run
    # goes on (the collection runs after it whatever its state).
    [swept] = wait_for(
        stack,
        "the red sweep",
        lambda: [
            t
            for t in task_instances(stack, dag_id, task_id="sweep_stuck_uploads")
            if t["state"] == "failed"
        ],
        300,
    )
    assert swept["try_number"] == 1, swept
    finished_run(stack, dag_id, swept["dag_run_id"])

    body = {"logical_date": None, "conf": {}}
    again = api(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
    assert finished_run(stack, dag_id, again["dag_run_id"])["state"] == "success"
    assert len(_alerts(stack, "sweep_stuck")) == 1
    assert_nothing_sent_twice(stack)


# --- the mail relay ---------------------------------------------------------------------


def test_the_mail_relay_down_for_30_s_delays_the_emails_and_sends_each_once(stack, drill):
    """mai2021's validation-server announcement while the SMTP server is down."""
    dag_id = "mai2021__validation_server"
    wait_for_dag(stack, dag_id)
    began = time.monotonic()
    drill_fault(stack, smtp={"seconds": OUTAGE_S})
    body = {"logical_date": None, "conf": {"event": "validation_server_online"}}
    run = api(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
    run = finished_run(stack, dag_id, run["dag_run_id"])
    print(f"\nSMTP drill: {time.monotonic() - began:.0f} s")
    assert run["state"] == "success", run
    [ti] = [
        t for t in task_instances(stack, dag_id, run["dag_run_id"]) if "announce" in t["task_id"]
    ]
    assert ti["state"] == "success" and ti["try_number"] >= 2, ti  # it failed, then waited
    first = task_log(stack, dag_id, run["dag_run_id"], ti["task_id"], 1)
    assert "RelayUnavailable" in first, first
    assert log_lines(stack, "SMTP server") and log_lines(stack, "is back")

    from mai_ops.challenge.participants import load_teams

    path = stack.root / "challenges" / "mai2021.yaml"
    teams = load_teams(load_challenge(path), path, None)
    notices, _ = team_mail_counts(stack)
    sent = {n: c for n, c in notices.items() if "validation_server_online" in n}
    assert sorted(n.rsplit("/", 1)[1] for n in sent) == sorted(t.team_id for t in teams)
    assert set(sent.values()) == {1}, sent
    assert_nothing_sent_twice(stack)


def _json_or_none(s3, key: str) -> dict | None:
    return (
        get_json(s3, "mai2021-results", key) if object_exists(s3, "mai2021-results", key) else None
    )


def _alerts(stack, task: str) -> list:
    """The organizers' failure alerts about ``task`` (alerts carry no notice key)."""
    return [m for m in outbox(stack) if not m["X-MAI-Notice"] and task in str(m["Subject"])]


# --- the final phase: the storage down during the freeze --------------------------------


def drill_challenge(deadline: dt.datetime) -> dict:
    """The final-scoring tests' challenge, one track, its deadline at ``deadline`` (UTC)."""
    raw = json.loads(_challenge_yaml(deadline.date()))
    raw.update(
        id=DRILL,
        title="Fault drill challenge",
        organizers=[ORGANIZERS],
        participants={"source": "file", "path": "drill.csv"},
        buckets=BUCKETS,
        approval=False,
        tracks=[t for t in raw["tracks"] if t["id"] == "denoise"],
    )
    # The hanging model holds its check for this long (the default is 120 s).
    raw["tracks"][0]["checks"] = {"timeout_s": HANG_CHECK_S}
    for event in raw["timeline"]:
        if event["name"] == "final_deadline":
            event["date"], event["time"] = deadline.date().isoformat(), deadline.strftime("%H:%M")
        if event["name"] == "preliminary_results":  # a minute after the deadline
            promised = deadline + dt.timedelta(minutes=1)
            event["date"], event["time"] = promised.date().isoformat(), promised.strftime("%H:%M")
    return raw


def poisoned_upload(model: Path) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.tflite", model.read_bytes())
    return archive.getvalue()


def test_the_storage_down_for_30_s_during_the_freeze_never_yields_a_partial_set(stack, drill):
    path, deadline = drill["path"], drill["deadline"]
    wait_for_dag(stack, f"{DRILL}__final_collection")
    wait_for_dag(stack, f"{DRILL}__scoring")
    s3 = s3_client(stack.s3_endpoint)

    # The freeze at the deadline, as scheduled; late, by itself, if its DAG came late.
    dag_id = f"{DRILL}__final_collection"
    time.sleep(max(0.0, (deadline - dt.datetime.now(dt.UTC)).total_seconds()))
    [run] = wait_for(stack, "the scheduled freeze", lambda: runs_of(stack, dag_id), 300)
    assert run["run_type"] == "scheduled", run
    run = finished_run(stack, dag_id, run["dag_run_id"])
    took = (instant(run["end_date"]) - deadline).total_seconds()
    print(f"\nfreeze drill: {took:.0f} s from the deadline to the receipts")
    assert run["state"] == "success", run
    tis = {t["task_id"]: t for t in task_instances(stack, dag_id, run["dag_run_id"])}
    freeze = tis["freeze_final_set"]
    assert freeze["state"] == "success" and freeze["try_number"] >= 2, freeze
    assert log_lines(stack, f"answers PUT /{BUCKETS['results']}/frozen/"), "no outage"
    assert log_lines(stack, "is back")

    # Complete: every team, each copy the bytes its entry says.
    manifest = get_json(s3, BUCKETS["results"], FROZEN_MANIFEST)
    assert sorted(f["team"] for f in manifest["frozen"]) == sorted(TEAMS)
    for entry in manifest["frozen"]:
        body = s3.get_object(Bucket=BUCKETS["results"], Key=entry["frozen"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry
    # Scoring ran once, on the frozen set, and started only after the freeze had succeeded.
    scoring = f"{DRILL}__scoring"
    [scored] = wait_for(stack, "the scoring run", lambda: runs_of(stack, scoring), 120)
    assert scored["run_type"] == "asset_triggered", scored
    started, frozen = instant(scored["start_date"]), instant(freeze["end_date"])
    assert started >= frozen, (scored, freeze)
    STATE.update(scoring_run=scored["dag_run_id"], path=path)
    notices, _ = team_mail_counts(stack)
    receipts = [n for n in notices if n.startswith(f"{DRILL}/final_receipt/")]
    assert sorted(receipts) == sorted(f"{DRILL}/final_receipt/{t}" for t in TEAMS)
    assert_nothing_sent_twice(stack)


def _buckets_made(s3) -> bool:
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    return set(BUCKETS.values()) <= names


# --- poisoned submissions in the final phase --------------------------------------------


def test_poisoned_submissions_fail_alone_with_their_code_and_their_neighbours_are_scored(stack):
    if "scoring_run" not in STATE:
        pytest.skip("needs the frozen set of the freeze drill")
    scoring, run_id = f"{DRILL}__scoring", STATE["scoring_run"]
    run = finished_run(stack, scoring, run_id)
    took = (instant(run["end_date"]) - instant(run["start_date"])).total_seconds()
    print(f"\nscoring with three poisoned submissions: {took:.0f} s")
    tis = task_instances(stack, scoring, run_id, limit=100)
    by_name = {(t["task_id"], t["rendered_map_index"]): t["state"] for t in tis}
    for team, code in POISON_CODES.items():
        # Its own task, named with its team and code, and nothing after it.
        assert by_name.get(("score_denoise.prepare", f"{team}: {code}")) == "skipped", by_name
    for team in GOOD:
        assert by_name.get(("score_denoise.score", team)) == "success", by_name
    assert run["state"] == "success", (run, by_name)

    ranking = get_json(s3_client(stack.s3_endpoint), BUCKETS["results"], RANKING)
    rows = {r["team"]: r for r in ranking["tracks"]["denoise"]["rows"]}
    assert [rows[t]["rank"] for t in GOOD] == [1, 2, 3], rows
    for team, code in POISON_CODES.items():
        assert rows[team]["rank"] is None and rows[team]["error"] == code, rows[team]


# --- the final phase: the storage down during publishing --------------------------------


def test_the_storage_down_for_30_s_during_publishing_delays_it_and_sends_each_result_once(
    stack,
):
    if "path" not in STATE:
        pytest.skip("needs the scored set of the freeze drill")
    dag_id = f"{DRILL}__preliminary_results"
    wait_for_dag(stack, dag_id)
    drill_fault(stack, s3={"seconds": OUTAGE_S, "after": f"PUT /{BUCKETS['public']}/"})
    # Triggered by hand after the promised instant (a minute after the deadline).
    challenge = load_challenge(STATE["path"])
    assert event_instant(challenge, challenge.event("preliminary_results")) < dt.datetime.now(
        dt.UTC
    )
    body = {"logical_date": None, "conf": {}}
    began = time.monotonic()
    run = api(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
    run = finished_run(stack, dag_id, run["dag_run_id"])
    print(f"\npublishing drill: {time.monotonic() - began:.0f} s")
    assert run["state"] == "success", run
    tis = {t["task_id"]: t for t in task_instances(stack, dag_id, run["dag_run_id"])}
    publish = tis["publish_preliminary_results"]
    assert publish["state"] == "success" and publish["try_number"] >= 2, publish
    assert log_lines(stack, f"answers PUT /{BUCKETS['public']}/"), "no outage"

    s3 = s3_client(stack.s3_endpoint)
    public = {o["Key"] for o in list_objects(s3, BUCKETS["public"])}
    assert {"results/preliminary.json", "results/preliminary.csv"} <= public
    assert {"leaderboard/index.html", "leaderboard/denoise/index.html"} <= public
    notices, _ = team_mail_counts(stack)
    results = sorted(n for n in notices if n.startswith(f"{DRILL}/preliminary_results/"))
    assert results == sorted(f"{DRILL}/preliminary_results/{t}" for t in TEAMS)
    assert_nothing_sent_twice(stack)
    # Nothing stays "running": every upload's processing that started has finished.
    assert list(list_objects(s3, BUCKETS["results"], PROCESSING)) == []
