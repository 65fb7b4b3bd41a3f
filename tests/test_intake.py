"""Intake rules for uploads, check_submission on real models, and `mai-ops check-submission`.

The MAI 2021 timeline is the reference: the validation server opens on 2021-01-20 at
17:00 PST (01:00 UTC the next day), the test data come out on 2021-03-15 and the final
deadline is 2021-03-20 at 17:00 PDT (00:00 UTC on the 21st): daylight saving started on
2021-03-14, between the two, so the two instants are 7 and 8 hours from UTC.

The models for check_submission are built once, in a child process (TensorFlow never
loads into pytest): the learned_isp reference model, a dynamic-H x W fidelity model for
the same track, the depth reference model and a small Keras model for conversion.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.participants import Team
from mai_ops.cli import main
from mai_ops.errors import stage_codes
from mai_ops.infra.layout import PHASES, BadUploadKey, UploadKey, parse_upload_key
from mai_ops.submissions.intake import (
    IntakeError,
    PastUpload,
    Upload,
    check_submission,
    judge_upload,
    uploads_left,
)
from tests.conftest import MAI2021, PROJECT

UTC = dt.UTC
CHALLENGE = load_challenge(MAI2021)
TEAMS = [
    Team("aurora", "Team Aurora", "aurora@teams.example", ("learned_isp", "quantized_sr")),
    Team("borealis", "Borealis Lab", "borealis@teams.example", ("depth",)),
    Team("free", "Any Track", "free@teams.example", ()),  # no tracks listed: every track
]
OPENS = dt.datetime(2021, 1, 21, 1, 0, tzinfo=UTC)  # 2021-01-20 17:00 PST
TEST_DATA = dt.datetime(2021, 3, 16, 0, 0, tzinfo=UTC)  # 2021-03-15 17:00 PDT
DEADLINE = dt.datetime(2021, 3, 21, 0, 0, tzinfo=UTC)  # 2021-03-20 17:00 PDT
FEB1 = dt.datetime(2021, 2, 1, 12, 0, tzinfo=UTC)
KEY = "learned_isp/validation/aurora/sub.zip"


def up(key=KEY, at=FEB1, sha="a" * 64, size=1000) -> Upload:
    return Upload(key=key, size=size, uploaded_at=at, sha256=sha)


def past(
    at, status="ok", *, key=None, team="aurora", track="learned_isp", phase="validation", sha=None
) -> PastUpload:
    key = key or f"{track}/{phase}/{team}/{at:%Y%m%dT%H%M%S}.zip"
    sha = sha or f"{abs(hash((key, at))):064x}"[-64:]
    return PastUpload(key, track, phase, team, at, sha, status)


def judge(upload, history=(), challenge=CHALLENGE):
    return judge_upload(upload, challenge, TEAMS, list(history))


def code_of(upload, history=(), challenge=CHALLENGE) -> str | None:
    try:
        judge(upload, history, challenge)
    except IntakeError as exc:
        return exc.code
    return None


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


# --- the key layout ---------------------------------------------------------------------


def test_parse_upload_key():
    assert parse_upload_key("depth/final/borealis/sub.zip") == UploadKey(
        "depth", "final", "borealis", "sub.zip"
    )


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("depth/final/sub.zip", id="too_few_parts"),
        pytest.param("depth/final/borealis/x/sub.zip", id="too_many_parts"),
        pytest.param("depth/final/borealis/", id="folder_marker"),
        pytest.param("/depth/final/borealis/sub.zip", id="leading_slash"),
        pytest.param("depth//borealis/sub.zip", id="empty_part"),
        pytest.param("depth/final/../sub.zip", id="dotdot"),
        pytest.param("depth/final/borealis/sub\n.zip", id="control_char"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_key(key):
    with pytest.raises(BadUploadKey):
        parse_upload_key(key)
    with pytest.raises(IntakeError) as caught:
        judge(up(key=key))
    assert caught.value.code == "bad_key"
    assert caught.value.path is None
    assert code_of(up(key=key)) == "bad_key"


# --- one case per rule --------------------------------------------------------------------


RULES = [
    pytest.param(up(key="learned_isp/validation/aurora"), (), "bad_key", id="bad_key"),
    pytest.param(up(key="deblur/validation/aurora/s.zip"), (), "unknown_track", id="unknown_track"),
    pytest.param(up(key="learned_isp/test/aurora/s.zip"), (), "unknown_phase", id="unknown_phase"),
    pytest.param(
        up(key="learned_isp/validation/zenith/s.zip"), (), "unknown_team", id="unknown_team"
    ),
    pytest.param(
        up(key="depth/validation/aurora/s.zip"), (), "not_registered", id="not_registered"
    ),
    pytest.param(up(at=OPENS - minutes(60)), (), "phase_not_open", id="phase_not_open"),
    pytest.param(
        up(key="learned_isp/final/aurora/s.zip", at=TEST_DATA - minutes(1)),
        (),
        "phase_not_open",
        id="final_before_test_data",
    ),
    pytest.param(up(at=DEADLINE + minutes(1)), (), "late", id="late_validation"),
    pytest.param(
        up(key="learned_isp/final/aurora/s.zip", at=DEADLINE + dt.timedelta(seconds=1)),
        (),
        "late",
        id="late_final",
    ),
    pytest.param(
        up(key="learned_isp/validation/aurora/model.tflite"), (), "not_zip_name", id="not_zip"
    ),
    pytest.param(up(size=3 * 1024**3), (), "upload_too_large", id="too_large"),
    pytest.param(
        up(sha="f" * 64), [past(FEB1 - minutes(5), sha="f" * 64)], "duplicate", id="duplicate"
    ),
    pytest.param(
        up(),
        [past(FEB1 - dt.timedelta(days=d, minutes=m)) for d in range(1, 21) for m in range(5)],
        "over_total_limit",
        id="over_total_limit",
    ),
    pytest.param(
        up(), [past(FEB1 - minutes(m)) for m in range(1, 6)], "over_daily_limit", id="over_daily"
    ),
]


@pytest.mark.parametrize("upload, history, code", RULES)
def test_each_rule_has_its_code(upload, history, code):
    assert code in stage_codes("intake")
    with pytest.raises(IntakeError) as caught:
        judge(upload, history)
    assert caught.value.code == code, caught.value.message
    assert len(caught.value.message) > 30
    if code != "bad_key":
        assert caught.value.path == parse_upload_key(upload.key)


def test_a_good_upload_is_accepted():
    assert judge(up()) == UploadKey("learned_isp", "validation", "aurora", "sub.zip")
    assert judge(up(key="depth/final/free/final.ZIP", at=TEST_DATA)).team == "free"
    assert PHASES == ("validation", "final")


def test_unknown_track_lists_the_tracks_and_unknown_team_does_not_list_teams():
    with pytest.raises(IntakeError, match="learned_isp, quantized_sr, video_sr"):
        judge(up(key="deblur/validation/aurora/s.zip"))
    with pytest.raises(IntakeError) as caught:
        judge(up(key="learned_isp/validation/zenith/s.zip"))
    assert "aurora" not in caught.value.message and "'zenith'" in caught.value.message


def test_not_registered_says_which_tracks_the_team_has():
    with pytest.raises(IntakeError, match="registered for: learned_isp, quantized_sr"):
        judge(up(key="depth/validation/aurora/s.zip"))


# --- quotas ---------------------------------------------------------------------------------


def test_exactly_at_the_daily_limit():
    four = [past(FEB1 - minutes(m)) for m in range(1, 5)]
    assert judge(up(), four)  # the 5th of 5 is fine
    assert code_of(up(), four + [past(FEB1 - minutes(30))]) == "over_daily_limit"


def test_rejected_uploads_and_our_failures_do_not_use_the_quota():
    spent = [past(FEB1 - minutes(m), "rejected") for m in range(1, 11)]
    spent += [  # failed for a reason of ours (internal_error): not held against the team
        dataclasses.replace(past(FEB1 - minutes(m), "failed"), ours=True) for m in range(11, 21)
    ]
    spent += [past(FEB1 - minutes(m)) for m in range(21, 25)]  # 4 ok
    assert judge(up(), spent)


def test_failed_checks_use_the_quota_so_junk_costs_the_flooder():
    junk = [past(FEB1 - minutes(m), "failed") for m in range(1, 5)]
    assert judge(up(), junk)  # 4 checked: the 5th is fine
    junk.append(past(FEB1 - minutes(5), "ok"))
    with pytest.raises(IntakeError, match="passed or failed") as caught:
        judge(up(), junk)
    assert caught.value.code == "over_daily_limit"


def test_the_utc_day_decides_and_the_next_utc_day_resets():
    day = dt.datetime(2021, 2, 1, 0, 0, tzinfo=UTC)
    five = [past(day + dt.timedelta(hours=h)) for h in range(5)]
    assert code_of(up(at=day + dt.timedelta(hours=23, minutes=59, seconds=59)), five) == (
        "over_daily_limit"
    )
    assert judge(up(at=day + dt.timedelta(days=1)), five)
    # 16:30 PST on Feb 1 is already Feb 2 in UTC: a new day for the quota.
    pacific_evening = dt.datetime(2021, 2, 1, 16, 30, tzinfo=CHALLENGE_ZONE())
    assert judge(up(at=pacific_evening), five)


def CHALLENGE_ZONE():
    from zoneinfo import ZoneInfo

    return ZoneInfo(CHALLENGE.timezone)


def test_over_daily_limit_message_gives_the_reset_in_utc_and_local_time():
    five = [past(FEB1 - minutes(m)) for m in range(1, 6)]
    with pytest.raises(IntakeError) as caught:
        judge(up(), five)
    msg = caught.value.message
    assert "2021-02-01 (the UTC day" in msg and "every checked upload counts" in msg
    assert "2021-02-02 00:00:00 UTC (2021-02-01 16:00:00 PST, America/Los_Angeles)" in msg


def test_total_limit_counts_every_day_and_exactly_at_the_limit_passes():
    days = [FEB1 - dt.timedelta(days=d, minutes=m) for d in range(1, 21) for m in range(5)]
    assert len(days) == 100
    assert judge(up(), [past(t) for t in days[:99]])  # the 100th of 100
    with pytest.raises(IntakeError, match="all 100 validation submissions"):
        judge(up(), [past(t) for t in days])
    # Failed checks among them count too; rejected ones do not.
    with pytest.raises(IntakeError, match="all 100 validation submissions"):
        judge(up(), [past(t, "failed" if i % 2 else "ok") for i, t in enumerate(days)])
    assert judge(up(), [past(t, "rejected" if i % 2 else "ok") for i, t in enumerate(days)])


def test_what_a_reply_says_is_left_is_what_the_next_upload_meets():
    path = parse_upload_key(KEY)
    three = [past(FEB1 - minutes(m)) for m in range(1, 4)]
    three += [past(FEB1 - dt.timedelta(days=1)), past(FEB1 - minutes(9), "rejected")]
    left = uploads_left(up(), path, CHALLENGE, three, counted=True)
    assert (left["left_today"], left["left_total"]) == (1, 95)  # 5 - 3 - this, 100 - 4 - this
    assert (left["per_day"], left["total"], left["day"]) == (5, 100, "2021-02-01")
    assert left["resets_at"] == "2021-02-02T00:00:00+00:00"
    # A rejected upload, or one that failed on our side, takes nothing.
    assert uploads_left(up(), path, CHALLENGE, three, counted=False)["left_today"] == 2
    # The next upload after one with 1 left today passes; the one after that is refused.
    nxt = up(at=FEB1 + minutes(1))
    assert judge(nxt, three + [past(FEB1)])
    assert code_of(up(at=FEB1 + minutes(2)), three + [past(FEB1), past(FEB1 + minutes(1))]) == (
        "over_daily_limit"
    )
    assert (
        uploads_left(up(), path, CHALLENGE, [past(FEB1 - minutes(m)) for m in range(9)], True)[
            "left_today"
        ]
        == 0
    )  # never below zero
    final = parse_upload_key("learned_isp/final/aurora/sub.zip")
    assert uploads_left(up(), final, CHALLENGE, three, counted=True) is None  # no limits


def test_other_teams_tracks_and_phases_do_not_count():
    others = [past(FEB1 - minutes(m), team="free") for m in range(1, 6)]
    others += [past(FEB1 - minutes(m), track="quantized_sr") for m in range(1, 6)]
    others += [past(FEB1 - minutes(m), phase="final") for m in range(1, 6)]
    assert judge(up(), others)


def test_later_uploads_in_history_do_not_count():
    later = [past(FEB1 + minutes(m)) for m in range(1, 10)]
    assert judge(up(), later)


def test_uploads_at_the_same_instant_are_ordered_by_key():
    same = [past(FEB1, key=f"learned_isp/validation/aurora/{c}.zip") for c in "abcde"]
    assert code_of(up(key="learned_isp/validation/aurora/z.zip"), same) == "over_daily_limit"
    # 'c' comes after a and b only: two earlier uploads, fine.
    assert judge(up(key="learned_isp/validation/aurora/c.zip"), same)


def test_final_uploads_have_no_quota_and_do_not_touch_the_validation_quota():
    final = "learned_isp/final/aurora/s.zip"
    many = [
        past(TEST_DATA + dt.timedelta(days=d, minutes=m), phase="final")
        for d in range(3)
        for m in range(40)
    ]  # over the daily and the total limit, had they counted
    assert judge(up(key=final, at=TEST_DATA + dt.timedelta(days=3)), many)
    assert judge(up(at=TEST_DATA + dt.timedelta(days=3)), many)  # validation is untouched
    five = [past(TEST_DATA + minutes(m)) for m in range(5)]  # the validation day is spent
    assert code_of(up(at=TEST_DATA + minutes(10)), five) == "over_daily_limit"
    assert judge(up(key=final, at=TEST_DATA + minutes(10)), five)


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_a_final_upload_is_never_a_duplicate(status):
    final = "learned_isp/final/aurora/again.zip"
    prev = past(TEST_DATA, status, phase="final", sha="c" * 64)
    assert judge(up(key=final, at=TEST_DATA + minutes(5), sha="c" * 64), [prev])


@pytest.mark.parametrize(
    "upload, code",
    [
        pytest.param(
            up(key="learned_isp/final/aurora/s.zip", at=TEST_DATA - minutes(1)),
            "phase_not_open",
            id="before-test-data",
        ),
        pytest.param(
            up(key="learned_isp/final/aurora/s.zip", at=DEADLINE + minutes(1)), "late", id="late"
        ),
        pytest.param(
            up(key="learned_isp/final/aurora/s.tflite", at=TEST_DATA), "not_zip_name", id="name"
        ),
        pytest.param(
            up(key="learned_isp/final/aurora/s.zip", at=TEST_DATA, size=3 * 1024**3),
            "upload_too_large",
            id="size",
        ),
        pytest.param(up(key="depth/final/aurora/s.zip", at=TEST_DATA), "not_registered", id="reg"),
    ],
)
def test_the_other_rules_apply_to_final_uploads(upload, code):
    assert code_of(upload) == code


# --- duplicates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, code",
    [("ok", "duplicate"), ("failed", "duplicate"), ("rejected", None)],
)
def test_duplicates_of_checked_uploads_only(status, code):
    prev = past(
        FEB1 - minutes(5), status, key="learned_isp/validation/aurora/first.zip", sha="c" * 64
    )
    assert code_of(up(sha="C" * 64), [prev]) == code


def test_duplicate_names_the_earlier_key():
    history = [
        past(FEB1 - minutes(50), key="learned_isp/validation/aurora/v1.zip", sha="d" * 64),
        past(
            FEB1 - minutes(20), "failed", key="learned_isp/validation/aurora/v2.zip", sha="d" * 64
        ),
    ]
    with pytest.raises(IntakeError) as caught:
        judge(up(sha="d" * 64), history)
    assert "learned_isp/validation/aurora/v2.zip" in caught.value.message
    assert "failed" in caught.value.message


def test_same_bytes_from_another_team_or_phase_are_not_duplicates():
    history = [
        past(FEB1 - minutes(5), team="free", sha="e" * 64),
        past(FEB1 - minutes(5), phase="final", sha="e" * 64),
        past(FEB1 + minutes(5), sha="e" * 64),  # a later one
    ]
    assert judge(up(sha="e" * 64), history)


# --- determinism -------------------------------------------------------------------------------


def test_re_judging_gives_the_same_answer():
    """Judge a day of uploads one by one, then re-judge each against the full history."""
    rng = random.Random(7)
    history: list[PastUpload] = []
    decisions = {}
    shas = ["1" * 64, "2" * 64, "1" * 64, "3" * 64, "4" * 64, "5" * 64, "6" * 64, "7" * 64]
    shas += ["8" * 64, "9" * 64, "a" * 64, "b" * 64]
    for i, sha in enumerate(shas):
        upload = up(key=f"learned_isp/validation/aurora/{i:02d}.zip", at=FEB1 + minutes(i), sha=sha)
        code = code_of(upload, history)
        decisions[upload.key] = code
        status = "rejected" if code else ("failed" if i in (1, 4) else "ok")
        history.append(
            PastUpload(
                upload.key, "learned_isp", "validation", "aurora", upload.uploaded_at, sha, status
            )
        )
    assert decisions["learned_isp/validation/aurora/02.zip"] == "duplicate"
    assert list(decisions.values()).count(None) == 5  # 3 ok + 2 failed, then the limit
    assert "over_daily_limit" in decisions.values()
    for _ in range(3):
        rng.shuffle(history)
        for i, sha in enumerate(shas):
            upload = up(
                key=f"learned_isp/validation/aurora/{i:02d}.zip", at=FEB1 + minutes(i), sha=sha
            )
            assert code_of(upload, history) == decisions[upload.key], upload.key


# --- deadlines, opening, daylight saving ------------------------------------------------------


def test_at_the_deadline_instant_is_on_time_one_second_later_is_late():
    final = "learned_isp/final/aurora/s.zip"
    assert judge(up(key=final, at=DEADLINE))
    with pytest.raises(IntakeError) as caught:
        judge(up(key=final, at=DEADLINE + dt.timedelta(seconds=1)))
    msg = caught.value.message
    assert caught.value.code == "late"
    assert "2021-03-21 00:00:01 UTC (2021-03-20 17:00:01 PDT, America/Los_Angeles)" in msg
    assert "2021-03-21 00:00:00 UTC (2021-03-20 17:00:00 PDT, America/Los_Angeles)" in msg
    assert "storage server" in msg


def test_deadline_uses_daylight_saving_time():
    """17:00 PDT on March 20 is 00:00 UTC; a PST reading would put it at 01:00 UTC."""
    assert code_of(up(key="learned_isp/final/aurora/s.zip", at=DEADLINE + minutes(30))) == "late"
    assert code_of(up(at=DEADLINE + minutes(30))) == "late"


def test_validation_opens_at_17_00_pacific_standard_time():
    assert code_of(up(at=OPENS - dt.timedelta(seconds=1))) == "phase_not_open"
    assert judge(up(at=OPENS))
    with pytest.raises(IntakeError, match=r"2021-01-20 17:00:00 PST"):
        judge(up(at=OPENS - minutes(1)))


def test_naive_timestamps_are_utc():
    naive = DEADLINE.replace(tzinfo=None)
    assert judge(up(key="learned_isp/final/aurora/s.zip", at=naive))
    assert code_of(up(at=naive + dt.timedelta(seconds=1))) == "late"


def _with_dates(**dates) -> object:
    timeline = [
        e.model_copy(update={"date": _parse(dates[e.name])}) if e.name in dates else e
        for e in CHALLENGE.timeline
    ]
    return CHALLENGE.model_copy(update={"timeline": timeline})


def _parse(text):
    from mai_ops.challenge.dates import parse_event_date

    return parse_event_date(text)


def test_an_unfixed_deadline_closes_nothing_and_an_unfixed_opening_opens_nothing():
    no_deadline = _with_dates(final_deadline="TBD")
    assert judge(up(at=dt.datetime(2030, 1, 1, tzinfo=UTC)), challenge=no_deadline)
    no_opening = _with_dates(validation_server_online="2021-01-XX")
    with pytest.raises(IntakeError, match="no opening date yet") as caught:
        judge(up(), challenge=no_opening)
    assert caught.value.code == "phase_not_open"


def test_past_upload_status_is_checked():
    with pytest.raises(ValueError, match="status"):
        past(FEB1, "pending")


# --- check_submission on real models ----------------------------------------------------------


_BUILD = """
import sys
from pathlib import Path
import tensorflow as tf
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.reference_models import build_reference_tflite

challenge, out = load_challenge(sys.argv[1]), Path(sys.argv[2])
for track_id in ("learned_isp", "depth"):
    (out / f"{track_id}.tflite").write_bytes(build_reference_tflite(challenge.track(track_id)))

# learned_isp's fidelity model: dynamic H x W, 1x1 conv then depth-to-space x2.
tf.keras.utils.set_random_seed(0)
x = inp = tf.keras.Input(shape=(None, None, 4), batch_size=1)
x = tf.keras.layers.Conv2D(12, 1)(x)
x = tf.keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(x)
converter = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, x))
(out / "learned_isp_none.tflite").write_bytes(converter.convert())

# A Keras model for the depth track (480x640x3 -> 480x640x1), to be converted.
x = inp = tf.keras.Input(shape=(480, 640, 3), batch_size=1)
x = tf.keras.layers.Conv2D(1, 1)(x)
tf.keras.Model(inp, x).save(out / "depth.keras")
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("intake-models")
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(MAI2021), str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


PDF = b"%PDF-1.4\n%fact sheet\n"


def make_zip(path: Path, entries: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data.read_bytes() if isinstance(data, Path) else data)
    return path


def test_check_submission_accepts_a_good_wrapped_archive(models, tmp_path):
    archive = make_zip(
        tmp_path / "aurora.zip",
        {
            "aurora/model.tflite": models / "learned_isp.tflite",
            "aurora/model_none.tflite": models / "learned_isp_none.tflite",
            "aurora/results/0001.png": b"\x89PNG\r\n\x1a\n",
            "aurora/factsheet.pdf": PDF,
            "aurora/readme.txt": b"1x1 conv + depth to space",
        },
    )
    report = check_submission(archive, CHALLENGE, "learned_isp", tmp_path / "work")
    assert report.ok, report.errors
    doc = report.as_json()
    json.dumps(doc)
    assert doc["ok"] is True and doc["errors"] == []
    assert doc["model"]["inputs"][0]["shape"] == [1, 544, 960, 4]
    assert doc["model_none"]["inputs"][0]["shape"] == [1, -1, -1, 4]
    assert doc["files"] == [
        "factsheet.pdf",
        "model.tflite",
        "model_none.tflite",
        "readme.txt",
        "results/0001.png",
    ]
    assert doc["factsheet"] == "factsheet.pdf" and doc["results"] == ["results/0001.png"]
    assert doc["converted_from"] is None and doc["warnings"] == []
    assert Path(report.model_path) == tmp_path / "work/unpacked/aurora/model.tflite"
    assert Path(report.fidelity_model_path).name == "model_none.tflite"
    assert "model_path" not in doc  # local paths stay out of what is stored and mailed


def test_check_submission_reports_model_errors_with_the_file_name(models, tmp_path):
    """A depth model sent to learned_isp, without a fact sheet."""
    archive = make_zip(tmp_path / "wrong.zip", {"model.tflite": models / "depth.tflite"})
    report = check_submission(archive, CHALLENGE, "learned_isp", tmp_path / "work")
    assert not report.ok
    assert "input_shape" in report.codes and "output_shape" in report.codes
    assert all(e["message"].startswith("model.tflite: ") for e in report.errors)
    assert report.model["ok"] is False
    assert any("fact sheet" in w for w in report.warnings)


def test_check_submission_reports_an_archive_error(tmp_path):
    archive = make_zip(tmp_path / "slip.zip", {"../evil.tflite": b"x", "model.tflite": b"x"})
    report = check_submission(archive, CHALLENGE, "learned_isp", tmp_path / "work")
    assert report.codes == ["zip_slip"] and report.model is None
    assert not (tmp_path / "evil.tflite").exists()
    assert check_submission(archive, CHALLENGE, "deblur", tmp_path / "w2").codes == [
        "unknown_track"
    ]


def test_check_submission_converts_a_keras_model(models, tmp_path):
    archive = make_zip(
        tmp_path / "keras.zip", {"model.keras": models / "depth.keras", "factsheet.pdf": PDF}
    )
    report = check_submission(archive, CHALLENGE, "depth", tmp_path / "work")
    assert report.ok, report.errors
    assert report.converted_from == "model.keras"
    assert report.model["inputs"][0]["shape"] == [1, 480, 640, 3]
    assert report.model["ops"] == ["CONV_2D"]
    assert report.model_path == str(tmp_path / "work" / "converted" / "model.tflite")
    assert report.fidelity_model_path is None


def test_check_submission_conversion_failure_is_readable(tmp_path):
    archive = make_zip(tmp_path / "broken.zip", {"model.h5": b"not an HDF5 file at all"})
    report = check_submission(archive, CHALLENGE, "depth", tmp_path / "work")
    assert report.codes == ["conversion_failed"]
    assert report.errors[0]["message"].startswith("model.h5: ")
    assert "Traceback" not in report.errors[0]["message"]


# --- mai-ops check-submission -------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_passes_a_good_submission(models, tmp_path, capsys):
    archive = make_zip(
        tmp_path / "s.zip", {"model.tflite": models / "depth.tflite", "factsheet.pdf": PDF}
    )
    assert (
        run_cli(["check-submission", str(archive), "--challenge", "mai2021", "--track", "depth"])
        == 0
    )
    assert capsys.readouterr().out.startswith("PASS s.zip (track depth)")


def test_cli_json_of_a_rejected_submission(tmp_path, capsys):
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("readme.txt", "no model here")
    archive = tmp_path / "s.zip"
    archive.write_bytes(data.getvalue())
    argv = [
        "check-submission",
        str(archive),
        "--challenge",
        "mai2021",
        "--track",
        "depth",
        "--json",
    ]
    assert run_cli(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["errors"][0]["code"] == "missing_model"
    assert set(doc["errors"][0]) == {"code", "message"}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        pytest.param(["--challenge", "mai2099", "--track", "depth"], "mai2099", id="challenge"),
        pytest.param(["--challenge", "mai2021", "--track", "deblur"], "deblur", id="track"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, capsys, argv, fragment):
    archive = make_zip(tmp_path / "s.zip", {"readme.txt": b"x"})
    assert run_cli(["check-submission", str(archive), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_cli_missing_archive_and_missing_flags_exit_2(tmp_path, capsys):
    argv = [
        "check-submission",
        str(tmp_path / "nope.zip"),
        "--challenge",
        "mai2021",
        "--track",
        "depth",
    ]
    assert run_cli(argv) == 2
    assert "no file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        run_cli(["check-submission", str(tmp_path / "nope.zip"), "--challenge", "mai2021"])
    assert caught.value.code == 2


def test_participants_doc_explains_every_code():
    doc = (PROJECT / "docs" / "participants.md").read_text()
    stages = ("intake", "unpack", "convert", "check")
    codes = set().union(*(stage_codes(s) for s in stages))
    missing = sorted(c for c in codes if f"`{c}`" not in doc)
    assert missing == []


def test_importing_the_intake_modules_does_not_load_tensorflow():
    code = (
        "import sys, mai_ops.submissions.intake, mai_ops.submissions.archive; "
        "print('tensorflow' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "False"
