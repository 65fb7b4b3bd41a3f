"""The validation server end to end on the loopback S3 and SMTP servers.

Uploads go to the submissions bucket as participants make them; each is judged,
checked, benchmarked and scored, and answered by email exactly once, whatever
else is in the same batch. A final-phase upload is acknowledged with its pre-check
(the checks, no benchmark or score) and leaves the validation quota and the freeze
as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import numpy as np
import pytest

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox, text_part
from mai_ops.infra.layout import upload_record_key as record_key
from mai_ops.infra.storage import get_json
from mai_ops.submissions.intake import final_deadline, utc_and_local
from mai_ops.submissions.validation import pending_uploads

from .conftest import REHEARSAL as MAI2021
from .conftest import reference_model, stage_test_data, zip_bytes

CH = load_challenge(MAI2021)


def put_zip(s3, key: str, members: dict[str, bytes]) -> None:
    s3.put_object(Bucket=CH.buckets.submissions, Key=key, Body=zip_bytes(members))


def process_all(s3) -> dict[str, dict]:
    """Runs of the validation server until nothing is left (each takes a few per team)."""
    answered: dict[str, dict] = {}
    for _ in range(20):  # bounded: an upload that never gets its record fails the test
        if not (batches := tasks.collect_uploads(MAI2021, [], s3=s3)):
            return answered
        answered |= {r["key"]: r for keys in batches for r in tasks.validate_uploads(MAI2021, keys)}
    raise AssertionError(f"still answering after 20 runs: {sorted(answered)}")


def mail_for(outbox, key: str):
    found = [m for m in read_outbox(outbox) if f"/upload/{key}/" in m["X-MAI-Notice"]]
    assert len(found) == 1, f"{len(found)} emails for {key}"
    return text_part(found[0])


def test_good_and_bad_uploads_in_one_batch(s3, airflow_connections):
    depth = reference_model("depth")
    put_zip(s3, "depth/validation/borealis/good.zip", {"model.tflite": depth})
    put_zip(
        s3,
        "depth/validation/borealis/wrong-shape.zip",
        {"model.tflite": reference_model("learned_isp")},
    )
    put_zip(s3, "depth/validation/borealis/escape.zip", {"../../x/model.tflite": depth})
    put_zip(s3, "depth/validation/mallory/unknown-team.zip", {"model.tflite": depth})
    put_zip(s3, "nosuchtrack/validation/borealis/a.zip", {"model.tflite": depth})
    s3.put_object(
        Bucket=CH.buckets.submissions, Key="depth/validation/borealis/junk.zip", Body=b"\0" * 64
    )

    results = process_all(s3)
    status = {k: (r["status"], [e["code"] for e in r["errors"]]) for k, r in results.items()}
    assert status == {
        "depth/validation/borealis/good.zip": ("ok", []),
        "depth/validation/borealis/wrong-shape.zip": (
            "failed",
            status["depth/validation/borealis/wrong-shape.zip"][1],
        ),
        "depth/validation/borealis/escape.zip": ("failed", ["zip_slip"]),
        "depth/validation/mallory/unknown-team.zip": ("rejected", ["unknown_team"]),
        "nosuchtrack/validation/borealis/a.zip": ("rejected", ["unknown_track"]),
        "depth/validation/borealis/junk.zip": ("failed", ["not_a_zip"]),
    }
    assert "input_shape" in status["depth/validation/borealis/wrong-shape.zip"][1]

    outbox = airflow_connections.folder
    good = mail_for(outbox, "depth/validation/borealis/good.zip")
    assert "ACCEPTED" in good
    assert "Runtime on raspberry_pi4 (LiteRT on the server CPU, standing in for Raspberry" in good
    assert "no validation ground truth staged" in good
    assert "zip_slip" in mail_for(outbox, "depth/validation/borealis/escape.zip")
    # Nobody to answer for an unknown team; nothing left pending.
    assert not any("mallory" in m["X-MAI-Notice"] for m in read_outbox(outbox))
    assert pending_uploads(s3, CH) == []


def test_reprocessing_gives_the_same_record_and_no_second_email(s3, airflow_connections):
    put_zip(s3, "depth/validation/borealis/a.zip", {"model.tflite": reference_model("depth")})
    first = process_all(s3)
    etag = s3.head_object(Bucket=CH.buckets.submissions, Key="depth/validation/borealis/a.zip")[
        "ETag"
    ]
    record = get_json(s3, CH.buckets.results, record_key("depth/validation/borealis/a.zip", etag))
    again = tasks.validate_upload(MAI2021, "depth/validation/borealis/a.zip")
    assert again == first["depth/validation/borealis/a.zip"]
    assert (
        get_json(s3, CH.buckets.results, record_key("depth/validation/borealis/a.zip", etag))
        == record
    )
    assert len(read_outbox(airflow_connections.folder)) == 1


def test_duplicate_and_failed_uploads_are_answered_with_their_codes(s3, airflow_connections):
    put_zip(s3, "depth/validation/borealis/1.zip", {"model.tflite": reference_model("depth")})
    process_all(s3)
    same = s3.get_object(Bucket=CH.buckets.submissions, Key="depth/validation/borealis/1.zip")
    s3.put_object(  # the very same file uploaded again
        Bucket=CH.buckets.submissions,
        Key="depth/validation/borealis/2.zip",
        Body=same["Body"].read(),
    )
    put_zip(s3, "depth/validation/borealis/3.zip", {"readme.txt": b"no model"})
    results = process_all(s3)
    assert results["depth/validation/borealis/2.zip"]["errors"][0]["code"] == "duplicate"
    assert results["depth/validation/borealis/3.zip"]["errors"][0]["code"] == "missing_model"


def test_announced_and_swept_uploads_are_merged_oldest_first(s3, airflow_connections):
    model = reference_model("depth")
    put_zip(s3, "depth/validation/borealis/first-missed.zip", {"model.tflite": model})
    put_zip(s3, "depth/validation/borealis/then-announced.zip", {"model.tflite": model})
    put_zip(s3, "depth/final/borealis/final.zip", {"model.tflite": model})  # pre-checked too
    # The shape Airflow stores a trigger event in: the payload under "payload".
    payload = {
        "uploads": [
            {
                "bucket": CH.buckets.submissions,
                "key": "depth/validation/borealis/then-announced.zip",
            }
        ]
    }
    put_zip(s3, "depth/validation/aurora/other-team.zip", {"model.tflite": model})
    batches = tasks.collect_uploads(MAI2021, [{"from_trigger": True, "payload": payload}], s3=s3)
    # One batch per team, track and phase, each in upload order: a team's quota counts
    # its earlier uploads, so they are answered one after the other.
    assert sorted(batches) == [
        ["depth/final/borealis/final.zip"],
        ["depth/validation/aurora/other-team.zip"],
        [
            "depth/validation/borealis/first-missed.zip",
            "depth/validation/borealis/then-announced.zip",
        ],
    ]
    # Batches start with the oldest upload first (the storage server's timestamps have
    # whole seconds: within one second, the key decides).
    times = {u["key"]: u["uploaded_at"] for u in pending_uploads(s3, CH)}
    firsts = [batch[0] for batch in batches]
    assert firsts == sorted(firsts, key=lambda k: (times[k], k))


def test_a_backlog_is_answered_in_bounded_runs(s3, airflow_connections, monkeypatch):
    import mai_ops.submissions.validation

    monkeypatch.setattr(mai_ops.submissions.validation, "MAX_PER_RUN", 2)
    for i in range(3):
        put_zip(s3, f"depth/validation/borealis/{i}.zip", {"readme.txt": str(i).encode()})
    first = tasks.collect_uploads(MAI2021, [], s3=s3)
    assert first == [["depth/validation/borealis/0.zip", "depth/validation/borealis/1.zip"]]
    tasks.validate_uploads(MAI2021, first[0])
    assert tasks.collect_uploads(MAI2021, [], s3=s3) == [["depth/validation/borealis/2.zip"]]


def test_validation_score_from_staged_ground_truth(s3, airflow_connections):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for kind, array in (
            ("input", rng.random((1, 480, 640, 3), dtype=np.float32)),
            ("gt", (rng.random((1, 480, 640, 1)) * 5000 + 500).astype(np.float32)),
        ):
            buf = io.BytesIO()
            np.save(buf, array)
            s3.put_object(
                Bucket=CH.buckets.organizers,
                Key=f"validation/depth/{kind}/{name}.npy",
                Body=buf.getvalue(),
            )
    put_zip(s3, "depth/validation/borealis/scored.zip", {"model.tflite": reference_model("depth")})
    record = process_all(s3)["depth/validation/borealis/scored.zip"]
    assert record["status"] == "ok", record["errors"]
    etag = s3.head_object(
        Bucket=CH.buckets.submissions, Key="depth/validation/borealis/scored.zip"
    )["ETag"]
    full = get_json(
        s3, CH.buckets.results, record_key("depth/validation/borealis/scored.zip", etag)
    )
    assert set(full["metrics"]) == {"si_rmse", "rmse"}
    assert (full["quota"]["left_today"], full["quota"]["left_total"]) == (4, 99)  # after this
    assert full["metrics"]["rmse"] > 0
    assert full["score"] is not None
    body = mail_for(airflow_connections.folder, "depth/validation/borealis/scored.zip")
    assert "si_rmse:" in body and "Score:" in body
    assert "Validation uploads left for depth: 4 of 5 today, 99 of 100 in all" in body


@pytest.mark.parametrize(
    "key, code",
    [
        pytest.param("depth/validation/borealis/model.tflite", "not_zip_name", id="not-a-zip-name"),
        pytest.param("depth/testing/borealis/a.zip", "unknown_phase", id="unknown-phase"),
        pytest.param(
            "learned_isp/validation/borealis/a.zip", "not_registered", id="not-registered"
        ),
    ],
)
def test_intake_rejections_are_answered(s3, airflow_connections, key, code):
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    result = tasks.validate_upload(MAI2021, key)
    assert result["status"] == "rejected" and result["errors"][0]["code"] == code
    assert code in mail_for(airflow_connections.folder, key)


def test_a_reupload_under_the_same_name_is_judged_and_answered_again(s3, airflow_connections):
    key = "depth/validation/borealis/same-name.zip"
    put_zip(s3, key, {"readme.txt": b"forgot the model"})
    assert process_all(s3)[key]["status"] == "failed"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})  # fixed, same name
    assert process_all(s3)[key]["status"] == "ok"
    bodies = [text_part(m) for m in read_outbox(airflow_connections.folder)]
    assert len(bodies) == 2 and "FAILED" in bodies[0] and "ACCEPTED" in bodies[1]


def test_an_oversized_upload_is_rejected_before_it_is_downloaded(
    s3, airflow_connections, monkeypatch
):
    import mai_ops.submissions.intake

    monkeypatch.setattr(
        mai_ops.submissions.intake, "MAX_UPLOAD_MB", 0.001
    )  # 1 KB, to keep the test small
    key = "depth/validation/borealis/huge.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    record = tasks.validate_upload(MAI2021, key)
    assert record["status"] == "rejected" and record["errors"][0]["code"] == "upload_too_large"


def test_an_injected_internal_fault_is_recorded_and_answered_not_looped(
    s3, airflow_connections, monkeypatch
):
    from mai_ops.devices import benchmark

    def explode(*args, **kwargs):
        raise RuntimeError("the device caught fire")

    monkeypatch.setattr(benchmark, "run_benchmark", explode)
    key = "depth/validation/borealis/boom.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    record = tasks.validate_upload(MAI2021, key)
    assert record["status"] == "failed"
    assert record["errors"] == [
        {
            "code": "internal_error",
            "stage": "internal",
            "message": "RuntimeError: the device caught fire",
        }
    ]
    assert pending_uploads(s3, CH) == []  # answered: the sweep will not pick it up again
    assert "internal_error" in mail_for(airflow_connections.folder, key)


def test_a_cleared_task_retries_an_upload_that_failed_on_our_side(
    s3, airflow_connections, monkeypatch
):
    from mai_ops.devices import benchmark

    real = benchmark.run_benchmark

    def explode(*args, **kwargs):
        raise RuntimeError("injected fault")

    key = "depth/validation/borealis/retry.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    monkeypatch.setattr(benchmark, "run_benchmark", explode)
    assert tasks.validate_upload(MAI2021, key)["status"] == "failed"
    monkeypatch.setattr(benchmark, "run_benchmark", real)  # the fix is deployed
    assert tasks.validate_upload(MAI2021, key)["status"] == "ok"  # the organizer clears
    assert tasks.validate_upload(MAI2021, key)["status"] == "ok"  # and again: no change
    subjects = [m["Subject"] for m in read_outbox(airflow_connections.folder)]
    assert len(subjects) == 2 and "failed" in subjects[0] and "accepted" in subjects[1]


def test_a_submission_failure_is_final_even_when_cleared(s3, airflow_connections):
    key = "depth/validation/borealis/no-model.zip"
    put_zip(s3, key, {"readme.txt": b"no model"})
    first = tasks.validate_upload(MAI2021, key)
    assert tasks.validate_upload(MAI2021, key) == first
    assert len(read_outbox(airflow_connections.folder)) == 1


# --- final-phase uploads: acknowledged and pre-checked on arrival -----------------------


def stored(s3, key: str) -> dict:
    etag = s3.head_object(Bucket=CH.buckets.submissions, Key=key)["ETag"]
    return get_json(s3, CH.buckets.results, record_key(key, etag))


def plain(mail) -> str:
    """The email's plain-text part, as the team reads it."""
    return text_part(mail)


def sha256_of(s3, key: str) -> str:
    body = s3.get_object(Bucket=CH.buckets.submissions, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def test_a_good_final_upload_is_acknowledged_pre_checked_and_not_scored(s3, airflow_connections):
    key = "depth/final/borealis/final.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth"), "readme.txt": b"ours"})
    result = process_all(s3)[key]
    assert result["status"] == "ok" and result["precheck_status"] == "passed"
    record = stored(s3, key)
    assert record["precheck"] is True and record["precheck_status"] == "passed"
    assert (record["track"], record["phase"], record["team"]) == ("depth", "final", "borealis")
    assert record["stages"] == ["unpack", "check"]  # and nothing after
    assert record["runtime"] is None and record["runtime_ms"] is None
    assert record["metrics"] is None and record["score"] is None and record["device"] is None
    assert record["checks"]["model"]["inputs"][0]["shape"] == [1, 480, 640, 3]

    (mail,) = read_outbox(airflow_connections.folder)
    assert mail["Subject"] == (
        f"[{CH.short_name}] depth: final submission received, pre-check passed"
    )
    body = plain(mail)
    uploaded = dt.datetime.fromisoformat(record["uploaded_at"])
    assert f"received by the server at {utc_and_local(uploaded, CH)}" in body
    assert f"sha256 {sha256_of(s3, key)}" in body
    assert "Pre-check PASSED" in body and "not benchmarked or scored now" in body
    assert f"frozen at the deadline, {utc_and_local(final_deadline(CH), CH)}" in body
    assert "UTC (" in body and "America/Los_Angeles" in body
    assert "The LAST upload to depth/final/borealis/" in body
    assert "whatever its pre-check says" in body
    assert "no limit on final uploads" in body
    assert "Runtime" not in body and "Score" not in body
    assert "no fact sheet" in body  # the checks' notes, for the final submission
    assert pending_uploads(s3, CH) == []


@pytest.mark.parametrize(
    "members, code",
    [
        pytest.param({"model.tflite": b"not a flatbuffer"}, "not_tflite", id="not-tflite"),
        pytest.param({"readme.txt": b"forgot the model"}, "missing_model", id="no-model"),
    ],
)
def test_a_broken_final_upload_gets_its_failure_codes_before_the_deadline(
    s3, airflow_connections, members, code
):
    key = "depth/final/borealis/broken.zip"
    put_zip(s3, key, members)
    result = tasks.validate_upload(MAI2021, key)
    assert result["status"] == "failed" and result["precheck_status"] == "failed"
    assert [e["code"] for e in result["errors"]] == [code]
    assert "check" not in stored(s3, key)["stages"]
    (mail,) = read_outbox(airflow_connections.folder)
    assert mail["Subject"].endswith("depth: final submission received, pre-check FAILED")
    body = plain(mail)
    assert f"- [{code}] {result['errors'][0]['message']}" in body
    assert "upload again before the deadline" in body
    assert "whatever its pre-check says" in body


def test_every_final_upload_is_acknowledged_and_the_validation_quota_is_untouched(
    s3, airflow_connections
):
    model = reference_model("depth")
    limit = CH.track("depth").limits.per_day
    keys = [f"depth/final/borealis/v{i}.zip" for i in range(limit + 2)]
    for key in keys[:-1]:
        put_zip(s3, key, {"model.tflite": model, "readme.txt": key.encode()})
    same = s3.get_object(Bucket=CH.buckets.submissions, Key=keys[0])["Body"].read()
    s3.put_object(Bucket=CH.buckets.submissions, Key=keys[-1], Body=same)  # the same bytes
    results = process_all(s3)
    assert {k: (r["status"], r["precheck_status"]) for k, r in results.items()} == {
        k: ("ok", "passed") for k in keys
    }  # over the daily limit, a duplicate: no refusal for final uploads
    mails = read_outbox(airflow_connections.folder)
    assert len(mails) == len(keys)
    assert all("final submission received, pre-check passed" in m["Subject"] for m in mails)
    for key in keys:
        assert "Pre-check PASSED" in mail_for(airflow_connections.folder, key)

    # The team's validation quota for the day is whole: its first validation upload is
    # judged on its merits, benchmarked, and the only one the validation count sees.
    put_zip(s3, "depth/validation/borealis/after-finals.zip", {"model.tflite": model})
    record = process_all(s3)["depth/validation/borealis/after-finals.zip"]
    assert record["status"] == "ok", record["errors"]
    assert record["precheck_status"] is None
    full = stored(s3, "depth/validation/borealis/after-finals.zip")
    assert full["runtime"] is not None and "benchmark" in full["stages"]


def test_a_rerun_sends_no_acknowledgement_twice(s3, airflow_connections):
    put_zip(s3, "depth/final/borealis/good.zip", {"model.tflite": reference_model("depth")})
    put_zip(s3, "depth/final/borealis/bad.zip", {"model.tflite": b"garbage"})
    first = process_all(s3)
    records = {k: stored(s3, k) for k in first}
    assert process_all(s3) == {}  # the sweep finds nothing left
    for key in first:  # an organizer clears each task
        assert tasks.validate_upload(MAI2021, key) == first[key]
        assert stored(s3, key) == records[key]
    assert len(read_outbox(airflow_connections.folder)) == 2


def test_the_freeze_takes_the_last_final_upload_in_time_whatever_its_pre_check(
    s3, airflow_connections
):
    first, last = "depth/final/borealis/v1-good.zip", "depth/final/borealis/v2-broken.zip"
    put_zip(s3, first, {"model.tflite": reference_model("depth")})
    assert tasks.validate_upload(MAI2021, first)["precheck_status"] == "passed"
    put_zip(s3, last, {"model.tflite": b"not a flatbuffer"})
    assert tasks.validate_upload(MAI2021, last)["precheck_status"] == "failed"

    tasks.freeze_final(MAI2021)
    (entry,) = tasks.list_frozen(MAI2021)
    assert entry["source"] == last and entry["sha256"] == sha256_of(s3, last)
    scored = tasks.score_submission(MAI2021, entry)  # evaluated fully, from the frozen copy
    assert scored["status"] == "failed" and scored["errors"][0]["code"] == "not_tflite"
    assert scored["stages"] == ["integrity", "unpack"] and scored["precheck"] is False
    assert scored["score"] is None

    # Fixed before the deadline: the fix is what the freeze at the deadline takes.
    fixed = "depth/final/borealis/v3-fixed.zip"
    put_zip(s3, fixed, {"model.tflite": reference_model("depth")})
    assert tasks.validate_upload(MAI2021, fixed)["precheck_status"] == "passed"
    tasks.freeze_final(MAI2021, refreeze=True)
    (entry,) = tasks.list_frozen(MAI2021)
    assert entry["source"] == fixed
    stage_test_data(s3, MAI2021, "depth")
    scored = tasks.score_submission(MAI2021, entry)
    assert scored["status"] == "ok" and "benchmark" in scored["stages"]


def test_a_late_final_upload_is_told_it_is_not_in_the_final_set(s3, airflow_connections, tmp_path):
    from mai_ops.dev.demo import rehearsal_copy

    from .conftest import MAI2021 as SOURCE

    # The same challenge, its final deadline two days ago.
    closed = rehearsal_copy(SOURCE, tmp_path, today=dt.date.today() - dt.timedelta(days=3))
    key = "depth/final/borealis/too-late.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    result = tasks.validate_upload(closed, key)
    assert result["status"] == "rejected" and result["precheck_status"] == "rejected"
    assert [e["code"] for e in result["errors"]] == ["late"]
    (mail,) = read_outbox(airflow_connections.folder)
    assert mail["Subject"].endswith("depth: final submission REJECTED")
    body = plain(mail)
    assert "- [late] uploaded at" in body
    assert "arrived after the deadline: it is not part of the final set" in body
    tasks.freeze_final(closed)
    manifest = get_json(s3, CH.buckets.results, "frozen/manifest.json")
    assert manifest["frozen"] == [] and manifest["rejected"][0]["key"] == key


# --- stuck work: processing that started and never finished ---------------------------


class CutOff(BaseException):
    """What a task's time limit or a dying worker does to the code that runs: it stops
    wherever it is, and no ``except Exception`` handles it."""


def test_an_upload_whose_processing_never_finished_is_failed_once_and_the_organizers_told(
    s3, airflow_connections, monkeypatch
):
    from mai_ops.devices import benchmark
    from mai_ops.infra.layout import PROCESSING
    from mai_ops.infra.storage import list_objects
    from mai_ops.submissions.stuck import StuckWork
    from mai_ops.timeouts import STUCK_AFTER_S

    def cut_off(*args, **kwargs):
        raise CutOff

    key = "depth/validation/borealis/never-finishes.zip"
    put_zip(s3, key, {"model.tflite": reference_model("depth")})
    monkeypatch.setattr(benchmark, "run_benchmark", cut_off)
    for _ in range(2):  # two tries, each cut off in the middle: no record, no answer
        with pytest.raises(CutOff):
            tasks.validate_upload(MAI2021, key)
    assert [p["key"] for p in pending_uploads(s3, CH)] == [key]  # the sweep would take it again
    [marker] = list_objects(s3, CH.buckets.results, PROCESSING)
    marker = get_json(s3, CH.buckets.results, marker["Key"])
    assert (marker["key"], marker["attempts"]) == (key, 2)
    started = dt.datetime.fromisoformat(marker["first_started_at"])

    # Within the limit it may still be running: nothing happens.
    within = started + dt.timedelta(seconds=STUCK_AFTER_S - 60)
    assert tasks.sweep_stuck_uploads(MAI2021, now=within)["stuck"] == 0
    assert read_outbox(airflow_connections.folder) == []

    # Past it: failed with its code and reason, the team answered, the organizers told.
    past = started + dt.timedelta(seconds=STUCK_AFTER_S + 60)
    with pytest.raises(StuckWork, match=rf"{key} \(processing started at .*\(2 attempt"):
        tasks.sweep_stuck_uploads(MAI2021, now=past)
    etag = s3.head_object(Bucket=CH.buckets.submissions, Key=key)["ETag"].strip('"')
    record = get_json(s3, CH.buckets.results, record_key(key, etag))
    assert record["status"] == "failed" and record["team"] == "borealis"
    assert [e["code"] for e in record["errors"]] == ["processing_stuck"]
    assert list(list_objects(s3, CH.buckets.results, PROCESSING)) == []
    assert pending_uploads(s3, CH) == []  # nothing is taken again
    [mail] = read_outbox(airflow_connections.folder)
    assert mail["To"] == "borealis@teams.example" and "processing_stuck" in text_part(mail)

    # The next sweep finds nothing and sends nothing.
    assert tasks.sweep_stuck_uploads(MAI2021, now=past)["stuck"] == 0
    assert len(read_outbox(airflow_connections.folder)) == 1


def test_an_upload_processed_to_the_end_leaves_no_marker(s3, airflow_connections):
    from mai_ops.infra.layout import PROCESSING
    from mai_ops.infra.storage import list_objects

    key = "depth/validation/borealis/no-model-either.zip"
    put_zip(s3, key, {"readme.txt": b"no model"})
    assert tasks.validate_upload(MAI2021, key)["status"] == "failed"
    assert list(list_objects(s3, CH.buckets.results, PROCESSING)) == []
