"""Phase logic against a real S3-compatible server and a real SMTP server on loopback.

The tasks reach both through the providers' hooks (S3Hook, SmtpHook) configured by
AIRFLOW_CONN_* variables, exactly as inside Airflow.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.participants import load_teams, parse_participants
from mai_ops.challenge.timeline import all_reminders, event_instant
from mai_ops.dev.embedded import read_outbox, text_part
from mai_ops.infra.layout import FROZEN_MANIFEST
from mai_ops.infra.storage import get_json, list_objects
from mai_ops.publishing.release import ReleaseError

from .conftest import REHEARSAL as MAI2021
from .conftest import reference_model, stage_test_data

CH = load_challenge(MAI2021)


def at(event: str) -> dt.datetime:
    """The UTC instant of an event of the (date-shifted) test challenge."""
    return event_instant(CH, CH.event(event)).astimezone(dt.UTC)


def reminder(key: str) -> dt.datetime:
    return next(r.instant for r in all_reminders(CH) if r.key == key).astimezone(dt.UTC)


TRAIN = at("train_data_release")
TEST_RELEASE = at("test_data_release")


def stage(s3, event="train_data_release", files=None):
    files = files or {"isp/train_001.npz": b"raw-bayer", "depth/train_001.npz": b"depth-mm"}
    for name, body in files.items():
        s3.put_object(Bucket=CH.buckets.organizers, Key=f"data/{event}/{name}", Body=body)


def upload(s3, track, team, body=None, name="submission.zip"):
    """A final upload of the reference model (or ``body``); the track's test set staged."""
    stage_test_data(s3, MAI2021, track)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.tflite", reference_model(track) if body is None else body)
    s3.put_object(
        Bucket=CH.buckets.submissions, Key=f"{track}/final/{team}/{name}", Body=archive.getvalue()
    )


def test_release_publishes_files_with_checksums_and_emails_every_team(s3, airflow_connections):
    stage(s3)
    result = tasks.release_data(MAI2021, TRAIN)
    manifest = get_json(s3, CH.buckets.public, "releases/train_data_release/manifest.json")
    assert {f["key"] for f in manifest["files"]} == {
        "releases/train_data_release/isp/train_001.npz",
        "releases/train_data_release/depth/train_001.npz",
    }
    sums = s3.get_object(Bucket=CH.buckets.public, Key="releases/train_data_release/SHA256SUMS")
    text = sums["Body"].read().decode()
    import hashlib

    assert f"{hashlib.sha256(b'raw-bayer').hexdigest()}  isp/train_001.npz" in text
    mails = read_outbox(airflow_connections.folder)
    assert sorted(m["To"] for m in mails) == sorted(t.email for t in load_teams(CH, MAI2021))
    assert "Train / validation data released" in mails[0]["Subject"]
    assert "X-Amz-" in text_part(mails[0]) or "Signature=" in text_part(mails[0])
    assert len(result["sent"]) == 3


def test_release_rerun_sends_nothing_twice_and_keeps_the_manifest(s3, airflow_connections):
    stage(s3)
    tasks.release_data(MAI2021, TRAIN)
    first = get_json(s3, CH.buckets.public, "releases/train_data_release/manifest.json")
    again = tasks.release_data(MAI2021, TRAIN)
    assert again["sent"] == [] and len(again["already_sent"]) == 3
    assert get_json(s3, CH.buckets.public, "releases/train_data_release/manifest.json") == first
    assert len(read_outbox(airflow_connections.folder)) == 3


def test_release_with_nothing_staged_names_the_missing_prefix(s3, airflow_connections):
    with pytest.raises(ReleaseError, match=r"s3://mai2021-organizers/data/train_data_release/"):
        tasks.release_data(MAI2021, TRAIN)
    assert read_outbox(airflow_connections.folder) == []


def test_release_at_a_date_that_is_no_event_is_refused(s3, airflow_connections):
    stage(s3)
    with pytest.raises(tasks.PhaseError, match="trigger with params"):
        tasks.release_data(MAI2021, TRAIN + dt.timedelta(days=17))


def test_manual_run_picks_the_latest_event_before_it(s3, airflow_connections):
    stage(s3, "test_data_release", {"isp/test_001.npz": b"x"})
    result = tasks.release_data(MAI2021, TEST_RELEASE + dt.timedelta(days=2), manual=True)
    assert result["releases"] == [{"event": "test_data_release", "files": 1}]


def test_unknown_event_in_params_is_refused(s3, airflow_connections):
    with pytest.raises(tasks.PhaseError, match="'final_deadline' is not a release_data event"):
        tasks.release_data(MAI2021, TRAIN, event="final_deadline")


def test_freeze_final_set_keeps_latest_upload_and_reports_gaps(s3, airflow_connections):
    upload(s3, "learned_isp", "aurora", None, "a.zip")
    upload(s3, "learned_isp", "aurora", b"v2", "b.zip")  # later upload wins
    upload(s3, "depth", "borealis")
    upload(s3, "depth", "mallory")  # not registered
    counts = tasks.freeze_final(MAI2021)
    manifest = get_json(s3, CH.buckets.results, FROZEN_MANIFEST)
    frozen = {(f["track"], f["team"]): f for f in manifest["frozen"]}
    assert set(frozen) == {("learned_isp", "aurora"), ("depth", "borealis")}
    assert frozen[("learned_isp", "aurora")]["source"].endswith("b.zip")
    assert {"track": "quantized_sr", "team": "aurora"} in manifest["missing"]
    (refused,) = manifest["rejected"]
    assert (refused["code"], refused["team"]) == ("unknown_team", "mallory")
    assert "'mallory' is not a registered team" in refused["reason"]
    assert counts == {"frozen": 2, "missing": 3, "rejected": 1}
    # Same inputs, same manifest, even when frozen again from the bucket.
    tasks.freeze_final(MAI2021, refreeze=True)
    assert get_json(s3, CH.buckets.results, FROZEN_MANIFEST) == manifest


def test_receipts_once_per_team(s3, airflow_connections):
    upload(s3, "learned_isp", "aurora")
    tasks.freeze_final(MAI2021)
    tasks.send_receipts(MAI2021)
    tasks.send_receipts(MAI2021)
    mails = read_outbox(airflow_connections.folder)
    assert sorted(m["To"] for m in mails) == sorted(t.email for t in load_teams(CH, MAI2021))
    aurora = next(m for m in mails if m["To"].startswith("aurora"))
    assert "NO final submission received" in text_part(aurora)  # quantized_sr


def test_scoring_detects_a_frozen_copy_changed_after_the_freeze(s3, airflow_connections):
    upload(s3, "learned_isp", "aurora")
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    entries = tasks.list_frozen(MAI2021)
    tampered = next(e for e in entries if e["team"] == "borealis")
    s3.put_object(Bucket=CH.buckets.results, Key=tampered["frozen"], Body=b"swapped")
    records = {e["team"]: tasks.score_submission(MAI2021, e) for e in entries}
    assert records["aurora"]["status"] == "ok"
    assert records["borealis"]["status"] == "failed"
    assert records["borealis"]["errors"][0]["code"] == "frozen_copy_changed"


def test_rescore_filters(s3, airflow_connections):
    upload(s3, "learned_isp", "aurora")
    upload(s3, "learned_isp", "cobalt")
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    assert {e["team"] for e in tasks.list_frozen(MAI2021, "learned_isp")} == {"aurora", "cobalt"}
    assert [e["team"] for e in tasks.list_frozen(MAI2021, "all", "borealis")] == ["borealis"]
    with pytest.raises(tasks.PhaseError, match="no track 'isp'"):
        tasks.list_frozen(MAI2021, "isp")
    with pytest.raises(tasks.PhaseError, match="team 'nobody' has no frozen submission"):
        tasks.list_frozen(MAI2021, None, "nobody")


def test_preliminary_results_published_and_mailed_once(s3, airflow_connections):
    upload(s3, "learned_isp", "aurora")
    tasks.freeze_final(MAI2021)
    for entry in tasks.list_frozen(MAI2021):
        tasks.score_submission(MAI2021, entry)
    tasks.rank_results(MAI2021, "manual__test")
    tasks.publish_preliminary_results(MAI2021)
    tasks.publish_preliminary_results(MAI2021)
    table = get_json(s3, CH.buckets.public, "results/preliminary.json")
    rows = [r for t in table["tracks"].values() for r in t["rows"]]
    assert [(r["track"], r["team"], r["status"], r["rank"]) for r in rows] == [
        ("learned_isp", "aurora", "ok", 1)
    ]
    csv_keys = [o["Key"] for o in list_objects(s3, CH.buckets.public, "results/")]
    assert "results/preliminary.csv" in csv_keys
    mails = read_outbox(airflow_connections.folder)
    assert [m["To"] for m in mails] == ["aurora@teams.example"]


def test_reminders_at_their_instants(s3, airflow_connections):
    seven_days_before_final = reminder("final_deadline-7d")
    result = tasks.send_reminders(MAI2021, seven_days_before_final)
    assert result["reminders"] == ["final_deadline-7d"]
    subjects = {m["Subject"] for m in read_outbox(airflow_connections.folder)}
    assert subjects == {
        f"[{CH.short_name}] Reminder: "
        "Final models / reconstruction results submission deadline in 7 days"
    }
    with pytest.raises(tasks.PhaseError, match="no reminder"):
        tasks.send_reminders(MAI2021, TEST_RELEASE + dt.timedelta(hours=1))


@pytest.mark.parametrize(
    "csv_text, problem",
    [
        pytest.param(
            "team,email\nx,y@z.io\n", "missing column(s): team_id, team_name", id="header"
        ),
        pytest.param(
            "team_id,team_name,email,tracks\nBad Id,x,a@b.io,\n", "not a valid id", id="bad-id"
        ),
        pytest.param(
            "team_id,team_name,email,tracks\nt1,x,not-an-email,\n", "bad email", id="bad-email"
        ),
        pytest.param(
            "team_id,team_name,email,tracks\nt1,x,a@b.io,\nt1,y,c@d.io,\n",
            "duplicate team_id",
            id="duplicate",
        ),
        pytest.param(
            "team_id,team_name,email,tracks\nt1,x,a@b.io,isp_typo\n",
            "unknown track(s) isp_typo",
            id="unknown-track",
        ),
    ],
)
def test_broken_participant_rows_are_named_and_skipped(csv_text, problem):
    good = "ok1,Good Team,good@teams.example,depth\n"
    text = csv_text if "missing" in problem else csv_text + good
    teams, problems = parse_participants(text, "teams.csv", CH)
    assert problems and problem in problems[0].message
    assert problems[0].file == "teams.csv"
    if "missing" not in problem:
        assert [t.team_id for t in teams if t.team_id == "ok1"] == ["ok1"]
        assert problems[0].field.startswith("line ")


def test_a_failing_smtp_server_leaves_no_marker_so_a_retry_sends(s3, airflow_connections):
    stage(s3)
    airflow_connections.stop()  # the relay is down
    with pytest.raises(OSError):
        tasks.release_data(MAI2021, TRAIN)
    markers = list(list_objects(s3, CH.buckets.results, "notifications/"))
    assert markers == []
    airflow_connections.start()  # back up on the same port: the cleared task succeeds
    assert len(tasks.release_data(MAI2021, TRAIN)["sent"]) == 3


def test_manual_reminder_run_sends_the_latest_due_reminders(s3, airflow_connections):
    later = at("paper_deadline") + dt.timedelta(days=2)  # after paper-1d, before final-1d
    result = tasks.send_reminders(MAI2021, later, manual=True)
    assert result["reminders"] == ["paper_deadline-1d"]


def test_scoring_benchmarks_the_runtime_model_on_the_track_device(s3, airflow_connections):
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    (entry,) = tasks.list_frozen(MAI2021)
    record = tasks.score_submission(MAI2021, entry)
    assert record["status"] == "ok", record["errors"]
    assert record["stages"] == ["integrity", "unpack", "check", "benchmark", "fidelity", "score"]
    assert record["runtime_ms"] == record["runtime"]["median_ms"]
    assert record["device"] == "raspberry_pi4" and record["runtime"]["device"] == "raspberry_pi4"
    assert record["runtime"]["count"] >= CH.device("raspberry_pi4").runs
    assert 0 < record["runtime"]["min_ms"] <= record["runtime"]["median_ms"]


@pytest.mark.parametrize(
    "body, code",
    [
        pytest.param(b"not a flatbuffer", "not_tflite", id="garbage-model"),
        pytest.param(b"", "empty_file", id="empty-model"),
    ],
)
def test_a_broken_model_gets_a_failed_record_and_the_rest_are_scored(
    s3, airflow_connections, body, code
):
    upload(s3, "depth", "borealis", body)
    upload(s3, "learned_isp", "aurora")
    tasks.freeze_final(MAI2021)
    records = {e["team"]: tasks.score_submission(MAI2021, e) for e in tasks.list_frozen(MAI2021)}
    assert records["borealis"]["status"] == "failed"
    assert records["borealis"]["errors"][0]["code"] == code
    assert records["aurora"]["status"] == "ok"


def test_an_archive_without_model_is_a_failed_record(s3, airflow_connections):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "forgot the model")
    s3.put_object(
        Bucket=CH.buckets.submissions, Key="depth/final/borealis/s.zip", Body=archive.getvalue()
    )
    tasks.freeze_final(MAI2021)
    (entry,) = tasks.list_frozen(MAI2021)
    record = tasks.score_submission(MAI2021, entry)
    assert record["status"] == "failed" and record["errors"][0]["code"] == "missing_model"
    assert "no model.tflite" in record["errors"][0]["message"]


def test_scoring_before_the_freeze_says_so(s3, airflow_connections):
    from mai_ops.errors import NeedsOrganizer

    with pytest.raises(NeedsOrganizer, match="no frozen final set.*run the final collection first"):
        tasks.list_frozen(MAI2021)


def test_a_cleared_scoring_task_keeps_the_stored_result_unless_rescored(s3, airflow_connections):
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    (entry,) = tasks.list_frozen(MAI2021)
    first = tasks.score_submission(MAI2021, entry)
    assert tasks.score_submission(MAI2021, entry) == first  # same stored result
    again = tasks.score_submission(MAI2021, entry, force=True)  # a re-score measures anew
    assert again["status"] == "ok" and again["runtime"] != first["runtime"]


def test_the_final_set_is_frozen_once_unless_refrozen(s3, airflow_connections):
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    first = get_json(s3, CH.buckets.results, FROZEN_MANIFEST)
    upload(s3, "learned_isp", "aurora")  # arrives after the freeze
    tasks.freeze_final(MAI2021)
    assert get_json(s3, CH.buckets.results, FROZEN_MANIFEST) == first
    tasks.freeze_final(MAI2021, refreeze=True)
    teams = {f["team"] for f in get_json(s3, CH.buckets.results, FROZEN_MANIFEST)["frozen"]}
    assert teams == {"borealis", "aurora"}


def test_a_manual_freeze_before_the_deadline_is_refused_unless_asked_for_early(
    s3, airflow_connections
):
    upload(s3, "depth", "borealis")
    with pytest.raises(tasks.PhaseError, match=r"still to come.*early_freeze"):
        tasks.freeze_final(MAI2021, manual=True)
    assert list(list_objects(s3, CH.buckets.results, "frozen/")) == []

    tasks.freeze_final(MAI2021, manual=True, early=True)
    assert get_json(s3, CH.buckets.results, FROZEN_MANIFEST)["early"] is True
    tasks.send_receipts(MAI2021)
    early = {m["To"]: text_part(m) for m in read_outbox(airflow_connections.folder)}
    assert "froze the final set early" in early["borealis@teams.example"]
    assert "deadline has passed" not in early["borealis@teams.example"]

    # A later upload, still in time: the freeze at the deadline takes it, and says so.
    upload(s3, "learned_isp", "aurora")
    counts = tasks.freeze_final(MAI2021, now=at("final_deadline"))
    manifest = get_json(s3, CH.buckets.results, FROZEN_MANIFEST)
    assert manifest["early"] is False and counts["frozen"] == 2
    assert {f["team"] for f in manifest["frozen"]} == {"borealis", "aurora"}
    tasks.send_receipts(MAI2021)
    mails = read_outbox(airflow_connections.folder)
    final = [m for m in mails[len(early) :] if m["To"] == "aurora@teams.example"]
    assert len(final) == 1 and "deadline has passed" in text_part(final[0])
    # The freeze at the deadline is not provisional: a later early freeze keeps it.
    tasks.freeze_final(MAI2021, manual=True, early=True)
    assert get_json(s3, CH.buckets.results, FROZEN_MANIFEST) == manifest


def test_a_manual_freeze_after_the_deadline_needs_no_early_flag(s3, airflow_connections):
    upload(s3, "depth", "borealis")
    later = at("final_deadline") + dt.timedelta(minutes=1)
    assert tasks.freeze_final(MAI2021, manual=True, now=later)["frozen"] == 1
    assert get_json(s3, CH.buckets.results, FROZEN_MANIFEST)["early"] is False


def test_an_event_without_a_fixed_date_is_never_sent_even_by_name(s3, airflow_connections):
    assert not CH.event("workshop_day").date.fixed
    with pytest.raises(tasks.PhaseError, match="'workshop_day'.*no fixed date.*never sent"):
        tasks.announce_events(
            MAI2021, "workshop_notices", at("camera_ready"), event="workshop_day", manual=True
        )
    assert read_outbox(airflow_connections.folder) == []


# The storage goes away between two copies of a freeze: Could not connect (refused) or
# Connection was closed (a request on a connection opened before), after botocore's retries.
STORAGE_LOST = "Could not connect|Connection was closed"


def test_storage_lost_in_the_middle_of_a_freeze_never_leaves_a_set_that_looks_complete(
    s3_server, s3, airflow_connections
):
    from mai_ops.infra.storage import object_exists, sha256_of_object
    from mai_ops.submissions.scoring import NoFrozenSet

    upload(s3, "depth", "borealis")
    upload(s3, "learned_isp", "aurora")
    tasks.freeze_final(MAI2021, manual=True, early=True)  # a stored set, provisional
    upload(s3, "depth", "borealis", b"in time, after the early freeze")
    upload(s3, "quantized_sr", "aurora")
    results = CH.buckets.results
    # The freeze at the deadline: the storage answers its first copy, then is gone.
    s3_server.arm_outage(f"PUT /{results}/frozen/", seconds=None)
    try:
        with pytest.raises(Exception, match=STORAGE_LOST):
            tasks.freeze_final(MAI2021)
        assert s3_server.down
    finally:
        s3_server.back()
    copies = [o["Key"] for o in list_objects(s3, results, "frozen/")]
    assert FROZEN_MANIFEST not in copies and copies, copies  # copies made, no manifest
    with pytest.raises(NoFrozenSet):
        tasks.list_frozen(MAI2021)  # scoring refuses: there is no final set meanwhile

    tasks.freeze_final(MAI2021)  # the retry
    manifest = get_json(s3, results, FROZEN_MANIFEST)
    assert manifest["early"] is False
    assert {(f["track"], f["team"]) for f in manifest["frozen"]} == {
        ("depth", "borealis"),
        ("learned_isp", "aurora"),
        ("quantized_sr", "aurora"),
    }
    for entry in manifest["frozen"]:
        assert sha256_of_object(s3, results, entry["frozen"]) == entry["sha256"]
    assert object_exists(s3, results, FROZEN_MANIFEST)
