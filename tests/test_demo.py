"""``make demo``: MAI 2021 run as a real challenge, end to end, and what it leaves behind.

The demo takes minutes, so it runs once for this module (:func:`demo`) into a
temporary folder, with its servers kept up until the module is done: every assertion
about its outputs is here. The expected rankings are those the demo's teams are built
to have (:mod:`mai_ops.dev.demo_teams`), written out again on purpose.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mai_ops.dev.embedded import html_part, text_part
from mai_ops.infra.layout import FROZEN_MANIFEST, RANKING, UPLOAD_RECORDS

from .conftest import PROJECT

RANKED = {
    "quantized_sr": ["aurora", "borealis", "cobalt"],
    "denoising": ["aurora", "borealis", "ember", "cobalt"],
    "depth": ["aurora", "delta", "borealis", "cobalt"],
    "scene_detection": ["aurora", "borealis", "cobalt"],
}
BROKEN = {("denoising", "fjord"): "output_shape", ("depth", "gale"): "custom_op"}
TRACKS = ("learned_isp", "quantized_sr", "video_sr", "denoising", "depth", "scene_detection")
TEAMS = ("aurora", "borealis", "cobalt", "delta", "ember", "fjord", "gale", "haze", "iris")
ORGANIZERS = "organizers@mai-challenge.example"
BOARD_FILES = ("index.html", "results.csv", "results.json", "plot.svg", "plot.png")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, airflow_db):
    """The demo, run once; yields (the finished Demo with its servers up, exit code, output)."""
    import airflow.settings  # noqa: F401 - this session's Airflow, whichever test ran first

    from mai_ops.dev.demo import Demo

    out = io.StringIO()
    with Demo(workdir=tmp_path_factory.mktemp("demo")) as run:
        with contextlib.redirect_stdout(out):
            code = run.run()
        yield run, code, out.getvalue()
        # The S3 server's objects live in this process's memory until emptied.
        run.empty_buckets(run.challenge)


def mails(run) -> list:
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(run.outbox.glob("*.eml"))
    ]


def board_rows(run, track: str) -> tuple[list[dict], dict]:
    folder = run.workdir / "leaderboard" / track
    with open(folder / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads((folder / "results.json").read_text())


def get_json(run, bucket: str, key: str):
    return json.loads(run.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def records(run) -> dict[str, dict]:
    """Every upload record by its upload key."""
    from mai_ops.infra.storage import list_objects

    bucket = run.challenge.buckets.results
    found = {}
    for obj in list_objects(run.s3, bucket, UPLOAD_RECORDS):
        record = get_json(run, bucket, obj["Key"])
        if "status" in record:
            found[record["key"]] = record
    return found


def public_objects(run) -> dict[str, tuple[bytes, str]]:
    """Every object under leaderboard/ and results/ in the public bucket: (bytes, ETag)."""
    from mai_ops.infra.storage import list_objects

    bucket = run.challenge.buckets.public
    out = {}
    for prefix in ("leaderboard/", "results/"):
        for obj in list_objects(run.s3, bucket, prefix):
            body = run.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = (body, obj["ETag"])
    return out


def test_the_demo_succeeds_and_prints_its_summary(demo):
    run, code, output = demo
    assert code == 0, output  # all of it: an approval that timed out says why mid-way
    assert run.problems == []
    assert [r for r in run.results if r.state != "success"] == []
    assert run.duplicates == 0
    summary = output.split("== summary ==")[1]
    for track, teams in RANKED.items():
        assert f"order: {' > '.join(teams)}: as constructed" in summary, track
    for code_name in ("late", "over_daily_limit", "output_shape", "custom_op"):
        assert code_name in summary
    assert "results_not_reproduced" in summary
    # It ends with where everything is.
    tail = summary.rsplit("outputs:", 1)[1]
    assert "leaderboard" in tail and "plot" in tail and "outbox" in tail


def test_the_output_folder_holds_the_leaderboards_and_the_outbox(demo):
    run, _, _ = demo
    board = run.workdir / "leaderboard"
    assert (board / "index.html").is_file()
    for track in TRACKS:
        for name in BOARD_FILES:
            assert (board / track / name).stat().st_size > 0, (track, name)
    # The files are the public bucket's objects, byte for byte.
    public = public_objects(run)
    for path in board.rglob("*"):
        if path.is_file():
            key = f"leaderboard/{path.relative_to(board).as_posix()}"
            assert public[key][0] == path.read_bytes(), key
    assert len(list(run.outbox.glob("*.eml"))) == len(mails(run)) > 0


def test_each_track_ranks_the_teams_as_constructed(demo):
    run, _, _ = demo
    for track, expected in RANKED.items():
        rows, document = board_rows(run, track)
        assert {"rank", "score", "team", "runtime_ms", "flags"} <= set(rows[0]), track
        ranked = [r for r in rows if r["rank"]]
        assert [r["team"] for r in ranked] == expected, track
        assert [int(r["rank"]) for r in ranked] == list(range(1, len(expected) + 1))
        scores = [float(r["score"]) for r in ranked]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0, track
        assert all(float(r["runtime_ms"]) > 0 for r in ranked)
        assert [r["team"] for r in document["rows"]] == [r["team"] for r in rows]
    # Nobody works on the two other tracks: their boards are empty, not missing.
    for track in ("learned_isp", "video_sr"):
        assert board_rows(run, track)[0] == []


def test_broken_submissions_are_listed_unranked_with_their_code(demo):
    run, _, _ = demo
    for (track, team), code in BROKEN.items():
        rows, document = board_rows(run, track)
        row = next(r for r in rows if r["team"] == team)
        assert (row["rank"], row["status"], row["error"], row["score"]) == ("", "failed", code, "")
        assert next(r for r in document["rows"] if r["team"] == team)["error"] == code
    # fjord had been told on the validation server already.
    fjord = records(run)["denoising/validation/fjord/v1.zip"]
    assert fjord["status"] == "failed" and fjord["errors"][0]["code"] == "output_shape"


def test_results_that_the_model_does_not_give_are_flagged_and_still_ranked(demo):
    run, _, _ = demo
    rows, document = board_rows(run, "denoising")
    flags = {r["team"]: r["flags"] for r in rows}
    assert flags["ember"] == "results_not_reproduced"
    assert {t: f for t, f in flags.items() if f} == {"ember": "results_not_reproduced"}
    ember = next(r for r in document["rows"] if r["team"] == "ember")
    assert ember["flags"] == ["results_not_reproduced"] and ember["rank"] == 3
    # aurora's own results/ are what its model gives: not flagged.
    assert next(r for r in document["rows"] if r["team"] == "aurora")["flags"] == []


def test_the_keras_model_is_converted_by_the_pipeline(demo):
    run, _, _ = demo
    table = get_json(run, run.challenge.buckets.results, RANKING)
    delta = next(r for r in table["tracks"]["depth"]["rows"] if r["team"] == "delta")
    assert delta["rank"] == 2
    precheck = records(run)["depth/final/delta/submission.zip"]
    assert precheck["checks"]["converted_from"] == "model.keras"


def test_the_late_upload_was_made_after_the_deadline_and_refused(demo):
    run, _, _ = demo
    from mai_ops.infra.layout import FINAL_PHASE

    manifest = get_json(run, run.challenge.buckets.results, FROZEN_MANIFEST)
    assert not manifest["early"]  # frozen at the deadline, as scheduled
    late = [r for r in manifest["rejected"] if r["code"] == "late"]
    assert [(r["team"], r["key"]) for r in late] == [
        ("haze", f"quantized_sr/{FINAL_PHASE}/haze/submission.zip")
    ]
    assert dt.datetime.fromisoformat(late[0]["uploaded_at"]) > run.deadline
    assert all(
        dt.datetime.fromisoformat(f["uploaded_at"]) <= run.deadline for f in manifest["frozen"]
    )
    assert "haze" not in {f["team"] for f in manifest["frozen"]}
    assert {"track": "quantized_sr", "team": "haze"} in manifest["missing"]
    record = records(run)["quantized_sr/final/haze/submission.zip"]
    assert record["precheck_status"] == "rejected" and record["errors"][0]["code"] == "late"
    keys = {m["X-MAI-Notice"] for m in mails(run) if m["To"] == "haze@teams.example"}
    assert "mai2021/final_receipt/haze" in keys
    assert any(k.endswith("/rejected") and "/final/haze/" in k for k in keys)


def test_the_sixth_validation_upload_of_a_day_is_refused(demo):
    run, _, _ = demo
    found = records(run)
    iris = [found[f"scene_detection/validation/iris/v{n}.zip"] for n in range(1, 7)]
    assert [r["status"] for r in iris] == ["ok"] * 5 + ["rejected"]
    assert [e["code"] for e in iris[5]["errors"]] == ["over_daily_limit"]
    assert all(r["score"] > 0 for r in iris[:5])


def test_the_hidden_test_inputs_of_every_track_are_released_and_no_ground_truth(demo):
    run, _, _ = demo
    from mai_ops.infra.storage import list_objects

    public = [o["Key"] for o in list_objects(run.s3, run.challenge.buckets.public, "releases/")]
    for track in TRACKS:
        assert any(k.startswith(f"releases/test_data_release/test/{track}/input/") for k in public)
    assert not [k for k in public if "/gt/" in k]


def test_every_email_parses_and_each_notice_reaches_its_recipient_once(demo):
    run, _, _ = demo
    messages = mails(run)
    assert all(m["To"] and m["Subject"] and m.get_body() is not None for m in messages)
    notices = [m for m in messages if m["X-MAI-Notice"]]
    alerts = [m for m in messages if not m["X-MAI-Notice"]]
    for m in notices:  # what a mail client needs: both parts, one Message-ID per notice
        assert text_part(m).strip() and html_part(m).strip(), m["Subject"]
        assert m["Message-ID"] and m["Date"] and m["Reply-To"] == ORGANIZERS, m["Subject"]
    ids = {m["X-MAI-Notice"]: m["Message-ID"] for m in notices}
    assert len(set(ids.values())) == len(ids)
    # Organizer alerts carry no notice key: here only the request to approve the results.
    assert [m["To"] for m in alerts] == [ORGANIZERS]
    sent = Counter((m["X-MAI-Notice"], m["To"]) for m in notices)
    assert {k: n for k, n in sent.items() if n != 1} == {}
    kinds: dict[str, Counter] = {team: Counter() for team in TEAMS}
    for key, to in sent:
        team = to.split("@")[0]
        parts = key.split("/")
        kind = parts[1]
        if kind == "upload":
            assert parts[4] == team, key  # <id>/upload/<track>/<phase>/<team>/<file>/...
        else:
            assert parts[-1] == team, key
        kinds[team][kind] += 1
    uploads = Counter(k.split("/")[2] for k in records(run))
    ranked = {t for teams in RANKED.values() for t in teams} | {t for _, t in BROKEN}
    for team in TEAMS:
        expected = {
            "release": 2,
            "validation_server": 1,
            "workshop_notices": 3,
            "reminder": 8,
            "final_receipt": 1,
            "upload": uploads[team],
        }
        if team in ranked:
            expected["preliminary_results"] = 1
        assert kinds[team] == Counter(expected), team


def test_clearing_the_publication_sends_nothing_and_rewrites_the_same_bytes(demo):
    run, _, _ = demo
    from airflow.dag_processing.dagbag import DagBag

    from mai_ops import tasks
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.approver import Approver

    before, sent = public_objects(run), len(mails(run))
    assert any(k.startswith("leaderboard/depth/") for k in before)
    promised = tasks.promised_instant(load_challenge(run.challenge_file))
    # The publish-and-notify task again, as a cleared task runs it.
    outcome = tasks.publish_preliminary_results(run.challenge_file, promised, s3=run.s3)
    ranked = {t for teams in RANKED.values() for t in teams} | {t for _, t in BROKEN}
    assert outcome["published"] and outcome["sent"] == []
    assert len(outcome["already_sent"]) == len(ranked)
    assert public_objects(run) == before
    assert len(mails(run)) == sent
    # The whole DAG run again at the same logical date (already approved: not asked again).
    dag_id = f"{run.challenge.id}__preliminary_results"
    bag = DagBag(dag_folder=str(PROJECT / "dags"))
    with Approver(dag_id) as organizer:
        again = bag.get_dag(dag_id).test(logical_date=promised)
    assert str(again.state) == "success" and organizer.answered == []
    assert public_objects(run) == before
    assert len(mails(run)) == sent


def test_the_demo_data_keeps_the_fidelity_conventions(demo):
    """PNG inputs as stored (uint8 0..255), depth in mm as 16-bit PNG, labels as .npy."""
    run, _, _ = demo
    from mai_ops.models.metric_files import read_array

    data = run.build_dir / "data"
    sr_in = read_array(next((data / "test/quantized_sr/input").glob("*.png")))
    sr_gt = read_array(next((data / "test/quantized_sr/gt").glob("*.png")))
    assert sr_in.shape == (360, 640, 3) and sr_gt.shape == (1080, 1920, 3)
    depth = read_array(next((data / "test/depth/gt").glob("*.png")))
    assert depth.dtype.name == "uint16" and 500 <= depth.min() < depth.max() <= 10000
    label = read_array(next((data / "test/scene_detection/gt").glob("*.npy")))
    assert label.shape == () and 0 <= int(label) < 30
    assert Path(data / "data/train_data_release").is_dir()
