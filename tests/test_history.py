"""One team's history, from uploads processed end to end on the loopback S3 and SMTP servers.

A team uploads a good model, the same archive again, a file that is not a TFLite
model, an archive in a phase folder that does not exist, one that is not answered
yet, and two final-phase uploads; the validation tasks answer, the final set is frozen
early, receipts go out, the frozen submission is scored and the results mailed. The
history (``mai-ops history``) lists all of it in time order, with the codes and the
emails, and the validation task's log shows it after each answer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import pytest

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.cli import main
from mai_ops.dev.demo import rehearsal_copy
from mai_ops.dev.embedded import read_outbox
from mai_ops.submissions.history import team_history

from .conftest import MAI2021 as ORIGINAL
from .conftest import REHEARSAL as MAI2021
from .conftest import reference_model, stage_test_data, zip_bytes

CH = load_challenge(MAI2021)
V = "depth/validation/borealis/"
GOOD, AGAIN, BROKEN, WAITING = (V + n for n in ("good.zip", "again.zip", "broken.zip", "w.zip"))
MISPLACED = "depth/testing/borealis/misplaced.zip"
FIRST, SECOND = "depth/final/borealis/first.zip", "depth/final/borealis/second.zip"


def put_zip(s3, key: str, members: dict[str, bytes]) -> str:
    return put(s3, key, zip_bytes(members))


def put(s3, key: str, body: bytes) -> str:
    """Upload ``body`` and return its ETag, a second after the previous upload.

    The storage server stamps uploads to the second in its headers; the pause keeps
    every upload in a second of its own, so the order checked below is the time order.
    """
    time.sleep(1.05)
    s3.put_object(Bucket=CH.buckets.submissions, Key=key, Body=body)
    return s3.head_object(Bucket=CH.buckets.submissions, Key=key)["ETag"].strip('"')


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def task_log():
    """What ``mai_ops.tasks`` logs at INFO and above (the lines a task log shows)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("mai_ops.tasks")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def cli_env(monkeypatch, airflow_connections):
    """The command finds the test's challenge copy, and S3 through the same connection."""
    monkeypatch.setenv("MAI_OPS_CHALLENGES_DIR", str(MAI2021.parent))
    return airflow_connections


def test_a_teams_story_in_time_order_with_codes_and_emails(s3, cli_env, capsys, task_log):
    model = reference_model("depth")
    etags = {GOOD: put_zip(s3, GOOD, {"model.tflite": model})}
    assert tasks.validate_upload(MAI2021, GOOD)["status"] == "ok"
    same = s3.get_object(Bucket=CH.buckets.submissions, Key=GOOD)["Body"].read()
    etags[AGAIN] = put(s3, AGAIN, same)  # the very same archive again
    tasks.validate_upload(MAI2021, AGAIN)
    etags[BROKEN] = put_zip(s3, BROKEN, {"model.tflite": b"not a flatbuffer"})
    task_log.clear()
    tasks.validate_upload(MAI2021, BROKEN)
    logged = [r.getMessage() for r in task_log]
    etags[MISPLACED] = put_zip(s3, MISPLACED, {"model.tflite": model})
    tasks.validate_upload(MAI2021, MISPLACED)
    etags[WAITING] = put_zip(s3, WAITING, {"model.tflite": model})  # not processed yet
    put_zip(s3, "learned_isp/validation/aurora/theirs.zip", {"model.tflite": model})
    etags[FIRST] = put_zip(s3, FIRST, {"model.tflite": b"an older try"})
    etags[SECOND] = put_zip(s3, SECOND, {"model.tflite": model})
    tasks.freeze_final(MAI2021, manual=True, early=True)
    tasks.send_receipts(MAI2021)
    stage_test_data(s3, MAI2021, "depth")
    (entry,) = tasks.list_frozen(MAI2021, "depth", "borealis")
    assert tasks.score_submission(MAI2021, entry)["status"] == "ok"
    tasks.rank_results(MAI2021, "manual__history")
    tasks.publish_preliminary_results(MAI2021)

    # The validation task's log showed the history after answering BROKEN.
    assert logged[0] == "team borealis in mai2021: 3 uploads, oldest first"
    assert any(GOOD in line and " ok " in line for line in logged)
    assert any("[not_tflite]" in line for line in logged)

    code, out, err = run_cli(capsys, "--challenge", "mai2021", "--team", "borealis", "--json")
    assert code == 0, err
    entries = json.loads(out)
    assert [(e["key"], e["etag"]) for e in entries] == [
        (key, etags[key]) for key in (GOOD, AGAIN, BROKEN, MISPLACED, WAITING, FIRST, SECOND)
    ]
    assert [e["status"] for e in entries] == [
        "ok",
        "rejected",
        "failed",
        "rejected",
        "pending",
        "received",
        "frozen",
    ]
    assert [[c["code"] for c in e["errors"]] for e in entries] == [
        [],
        ["duplicate"],
        ["not_tflite"],
        ["unknown_phase"],
        [],
        [],
        [],
    ]
    times = [dt.datetime.fromisoformat(e["uploaded_at"]) for e in entries]
    assert times == sorted(times) and all(t.utcoffset() == dt.timedelta(0) for t in times)
    good, again, broken, misplaced, waiting, first, second = entries

    assert good["runtime_ms"] > 0 and good["record"].endswith(f"{etags[GOOD]}.json")
    assert f"earlier upload {GOOD}" in again["errors"][0]["message"]
    assert "/tmp/" not in broken["errors"][0]["message"]  # cleaned, as the team got it
    assert again["runtime_ms"] is None and again["score"] is None

    # One reply per answered upload, named by upload, version and outcome.
    sent = {m["X-MAI-Notice"] for m in read_outbox(cli_env.folder)}
    for e in (good, again, broken, misplaced):
        (email,) = e["emails"]
        assert email["key"] == f"mai2021/upload/{e['key']}/{e['etag']}/{e['status']}"
        assert email["key"] in sent
        sent_at = dt.datetime.fromisoformat(email["sent_at"])
        assert sent_at >= dt.datetime.fromisoformat(e["uploaded_at"])
    assert waiting["emails"] == [] and "not answered yet" in waiting["notes"][0]

    # The final phase: the earlier upload was not frozen, the later one was, and scored.
    assert first["emails"] == [] and SECOND in first["notes"][0]
    assert second["scoring"] == "ok" and second["runtime_ms"] > 0
    assert second["record"].startswith("scores/depth/borealis/")
    assert second["record"].endswith("/record.json")
    assert "frozen early" in second["notes"][0]
    assert [e["key"] for e in second["emails"]] == [
        "mai2021/final_receipt_early/borealis",
        "mai2021/preliminary_results/borealis",
    ]
    assert {e["key"] for e in second["emails"]} <= sent

    code, out, err = run_cli(capsys, "--challenge", "mai2021", "--team", "borealis")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "team borealis in mai2021: 7 uploads, oldest first"
    heads = [line.split() for line in lines if not line.startswith((" ", "team "))]
    assert [(h[3], h[4]) for h in heads] == [(e["status"], e["key"]) for e in entries]
    assert f"    version  {etags[GOOD]}" in lines
    assert any(
        line.startswith("    error    [duplicate] this archive is identical") for line in lines
    )
    assert any(line.startswith("    error    [not_tflite] ") for line in lines)
    assert any(
        line.startswith("    error    [unknown_phase] 'testing' is not a phase") for line in lines
    )
    assert sum(line.startswith("    email    mai2021/upload/") for line in lines) == 4
    assert "    email    none sent" in lines
    assert any(line.startswith("    scoring  ok") for line in lines)
    assert any(
        line.startswith("    email    mai2021/final_receipt_early/borealis  sent ")
        for line in lines
    )
    assert "aurora" not in out


def test_an_unknown_team_or_challenge_fails_with_the_reason(s3, cli_env, capsys):
    put_zip(s3, "depth/validation/mallory/a.zip", {"readme.txt": b"x"})
    code, out, err = run_cli(capsys, "--challenge", "mai2021", "--team", "mallory")
    assert code == 2 and out == ""
    assert "team 'mallory' is not registered for mai2021" in err
    assert "registered: aurora, borealis, cobalt" in err
    code, out, err = run_cli(capsys, "--challenge", "mai1999", "--team", "borealis", "--json")
    assert code == 2 and out == ""
    assert "no challenge 'mai1999'" in err


def test_an_empty_history_and_an_unreadable_storage(s3, cli_env, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "--challenge", "mai2021", "--team", "cobalt", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = run_cli(capsys, "--challenge", "mai2021", "--team", "cobalt")
    assert out == "team cobalt in mai2021: 0 uploads, oldest first\n"
    s3.delete_bucket(Bucket=CH.buckets.results)  # empty after the fixture's cleaning
    try:
        code, out, err = run_cli(capsys, "--challenge", "mai2021", "--team", "cobalt")
    finally:
        s3.create_bucket(Bucket=CH.buckets.results)
    assert code == 1 and out == ""
    assert f"bucket {CH.buckets.results} does not exist" in err


def test_a_late_final_upload_shows_both_times_and_the_receipt(s3, airflow_connections, tmp_path):
    past = rehearsal_copy(ORIGINAL, tmp_path, today=dt.date.today() - dt.timedelta(days=3))
    late_ch = load_challenge(past)  # same id and buckets, final deadline two days ago
    etag = put_zip(s3, "depth/final/borealis/late.zip", {"model.tflite": b"too late"})
    tasks.freeze_final(past)
    tasks.send_receipts(past)
    (entry,) = team_history(s3, late_ch, "borealis")
    assert (entry["key"], entry["etag"], entry["status"]) == (
        "depth/final/borealis/late.zip",
        etag,
        "late",
    )
    assert entry["notes"][0].startswith("late: the server received it at ")
    assert [e["key"] for e in entry["emails"]] == ["mai2021/final_receipt/borealis"]


def test_a_history_that_cannot_be_read_never_fails_the_validation_task(
    s3, airflow_connections, monkeypatch, task_log
):
    import mai_ops.submissions.history

    def unreadable(*args, **kwargs):
        raise RuntimeError("storage hiccup")

    monkeypatch.setattr(mai_ops.submissions.history, "team_history", unreadable)
    key = "depth/validation/borealis/junk.zip"
    put(s3, key, b"\0" * 64)
    assert tasks.validate_upload(MAI2021, key)["status"] == "failed"  # answered all the same
    (warning,) = [r for r in task_log if r.levelno == logging.WARNING]
    assert (
        warning.getMessage() == "history of team borealis not shown: RuntimeError: storage hiccup"
    )
    assert len(read_outbox(airflow_connections.folder)) == 1


def test_a_frozen_upload_deleted_afterwards_is_still_listed(s3, airflow_connections):
    put_zip(s3, FIRST, {"model.tflite": b"first"})
    put_zip(s3, SECOND, {"model.tflite": b"second"})
    tasks.freeze_final(MAI2021, manual=True, early=True)
    tasks.send_receipts(MAI2021)
    s3.delete_object(Bucket=CH.buckets.submissions, Key=SECOND)
    first, second = team_history(s3, CH, "borealis")
    assert (first["key"], first["status"], first["emails"]) == (FIRST, "received", [])
    assert (second["key"], second["etag"], second["status"]) == (SECOND, None, "frozen")
    assert second["scoring"] is None  # frozen, not scored yet
    assert "no longer in the submissions bucket" in second["notes"][0]
    assert [e["key"] for e in second["emails"]] == ["mai2021/final_receipt_early/borealis"]
