"""The final phase end to end: three tracks with different metrics, teams of known quality.

Real TFLite models (built in a child process by :mod:`tests.final_phase_models`), real
photographs from scikit-image as the hidden test set (PNG, 8- and 16-bit) and labels as
``.npy``, the loopback S3 and SMTP servers, and real Airflow for the DAG runs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox
from mai_ops.infra.layout import RANKING, data_set_keys, score_key, stage_key
from mai_ops.infra.storage import get_json, list_objects

from .conftest import _HOME, PROJECT
from .test_dag_runs import _task_instances
from .test_metrics_cli import png_bytes
from .test_test_data import npy_bytes

TRACKS = ("denoise", "depth", "scenes")
EXPECTED = ["ada", "bo", "cy"]
ORGANIZERS = "organizers@finals.example"  # the order of every track, by construction
TEAMS = {
    "ada": ("Ada Lab", TRACKS),
    "bo": ("Team Bo", TRACKS),
    "cy": ("Cy Group", TRACKS),
    "dee": ("Dee Works", ("denoise",)),
}


def _challenge_yaml(today: dt.date) -> str:
    def day(offset: int) -> str:
        return (today + dt.timedelta(days=offset)).isoformat()

    def track(tid, title, shape_in, shape_out, metrics, formula, constants, out_dtype="float32"):
        return {
            "id": tid,
            "title": title,
            "task": tid,
            "device": "cpu",
            "inputs": [{"name": "x", "shape": shape_in, "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": shape_out, "dtype": out_dtype}],
            "metrics": metrics,
            "score": {"formula": formula, "constants": constants},
        }

    config = {
        "id": "finals",
        "title": "Finals test challenge",
        "timezone": "UTC",
        "organizers": [ORGANIZERS],
        "participants": {"source": "file", "path": "finals.csv"},
        "buckets": {
            "organizers": "finals-organizers",
            "submissions": "finals-submissions",
            "public": "finals-public",
            "results": "finals-results",
        },
        "timeline": [
            {"name": "train_data_release", "title": "Train", "date": day(-30)},
            {"name": "validation_server_online", "title": "Validation", "date": day(-29)},
            {"name": "test_data_release", "title": "Test data", "date": day(-3)},
            {
                "name": "final_deadline",
                "title": "Final deadline",
                "date": day(1),
                "phase": "final_collection",
            },
            {
                "name": "preliminary_results",
                "title": "Preliminary results",
                "date": day(3),
                "phase": "preliminary_results",
            },
        ],
        "devices": [
            {"name": "cpu", "backend": "litert", "threads": 1, "runs": 5, "min_seconds": 0}
        ],
        "tracks": [
            track(
                "denoise",
                "Denoising",
                [1, 64, 64, 3],
                [1, 64, 64, 3],
                ["psnr", "ssim"],
                "2 ** (alpha * psnr) / (C * runtime)",
                {"alpha": 0.5, "C": 1.0},
            ),
            track(
                "depth",
                "Depth",
                [1, 48, 64, 3],
                [1, 48, 64, 1],
                ["si_rmse", "rmse"],
                "2 ** (-alpha * si_rmse) / (C * runtime)",
                {"alpha": 200, "C": 1.0},
            ),
            track(
                "scenes",
                "Scenes",
                [1, 32, 32, 3],
                [1, 4],
                ["top1", "top3"],
                "2 ** (alpha * top1) / (C * runtime)",
                {"alpha": 20, "C": 1.0},
            ),
        ],
    }
    return json.dumps(config)  # JSON is YAML


@pytest.fixture(scope="module")
def built() -> Path:
    """The teams' models and the hidden test set, built once per module."""
    out = _HOME / "final-phase-models"
    if not (out / "manifest.json").exists():
        subprocess.run(
            [sys.executable, "-m", "tests.final_phase_models", str(out)],
            check=True,
            capture_output=True,
            cwd=PROJECT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    return out


@pytest.fixture
def finals(tmp_path, s3, built):
    """The challenge file, its buckets emptied, the hidden test set staged."""
    from mai_ops.dev.embedded import ensure_challenge_buckets
    from mai_ops.infra.storage import list_versions

    folder = tmp_path / "challenges"
    folder.mkdir()
    path = folder / "finals.yaml"
    path.write_text(_challenge_yaml(dt.datetime.now(dt.UTC).date()))
    rows = [f"{t},{name},{t}@teams.example,{';'.join(tr)}" for t, (name, tr) in TEAMS.items()]
    (folder / "finals.csv").write_text("team_id,team_name,email,tracks\n" + "\n".join(rows) + "\n")
    challenge = load_challenge(path)
    ensure_challenge_buckets(s3, challenge.buckets)
    for bucket in challenge.buckets.model_dump().values():
        for entry in list(list_versions(s3, bucket)):
            s3.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])
    stage_test_set(s3, challenge, built)
    return path


def load_pairs(built: Path, track: str) -> dict:
    import numpy as np

    pairs = {}
    for path in sorted(built.glob(f"{track}-input-*.npy")):
        name = path.stem.split("-input-")[1]
        gt = built / f"{track}-gt-{name}.npy"
        pairs[name] = (np.load(path), np.load(gt))
    return pairs


def stage_test_set(s3, challenge, built: Path) -> None:
    """Images as PNG (8-bit RGB in, 8-bit RGB or 16-bit depth out), labels as .npy."""
    for track in TRACKS:
        input_prefix, gt_prefix = data_set_keys("test", track)
        for name, (x, y) in load_pairs(built, track).items():
            bucket = challenge.buckets.organizers
            s3.put_object(Bucket=bucket, Key=f"{input_prefix}{name}.png", Body=png_bytes(x))
            if track == "scenes":
                s3.put_object(Bucket=bucket, Key=f"{gt_prefix}{name}.npy", Body=npy_bytes(y))
            else:
                s3.put_object(Bucket=bucket, Key=f"{gt_prefix}{name}.png", Body=png_bytes(y))


def model_output(model: Path, x):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None].astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


def submit(s3, challenge, built: Path, track: str, team: str, results: str | None = None):
    """The team's final upload; ``results``: "own" (its model's outputs) or "other"."""
    import numpy as np

    model_team = "ada" if team == "dee" else team  # dee submits ada's model
    model = built / f"{track}-{model_team}.tflite"
    members = {"model.tflite": model.read_bytes()}
    for name, (x, _y) in load_pairs(built, track).items() if results else ():
        out = model_output(model, x)
        if results == "other":  # not what the model gives: 15 grey levels off
            out = out + np.where(np.arange(out.size).reshape(out.shape) % 2, 15.0, -15.0)
        members[f"results/{name}.png"] = png_bytes(np.clip(np.round(out), 0, 255).astype(np.uint8))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    key = f"{track}/final/{team}/submission.zip"
    s3.put_object(Bucket=challenge.buckets.submissions, Key=key, Body=archive.getvalue())


def submit_everyone(s3, path: Path, built: Path, tracks=TRACKS) -> None:
    challenge = load_challenge(path)
    for team in ("ada", "bo", "cy"):
        for track in tracks:
            submit(s3, challenge, built, track, team, "own" if track == "denoise" else None)
    if "denoise" in tracks:
        submit(s3, challenge, built, "denoise", "dee", "other")
    tasks.freeze_final(path, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))


def score_everything(path: Path) -> dict:
    for entry in tasks.list_frozen(path):
        tasks.score_submission(path, entry)
    return tasks.rank_results(path, "manual__test")


def stored_records(s3, path: Path) -> dict:
    challenge = load_challenge(path)
    out = {}
    for entry in tasks.list_frozen(path):
        key = score_key(entry["track"], entry["team"], entry["sha256"])
        out[(entry["track"], entry["team"])] = get_json(s3, challenge.buckets.results, key)
    return out


def ranked_teams(s3, path: Path, track: str) -> list[str]:
    table = get_json(s3, load_challenge(path).buckets.results, RANKING)
    return [r["team"] for r in table["tracks"][track]["rows"] if r["rank"] is not None]


def test_the_ranking_is_known_by_construction_and_unreproduced_results_are_flagged(
    s3, airflow_connections, finals, built
):
    submit_everyone(s3, finals, built)
    outcome = score_everything(finals)
    assert outcome["applied"]
    table = get_json(s3, load_challenge(finals).buckets.results, RANKING)
    assert table["validated"], table["validation"]
    for track in ("depth", "scenes"):
        assert ranked_teams(s3, finals, track) == EXPECTED, track
    # dee runs ada's model: the same fidelity, so the two lead; then bo, then cy.
    denoise = ranked_teams(s3, finals, "denoise")
    assert set(denoise[:2]) == {"ada", "dee"} and denoise[2:] == ["bo", "cy"]
    rows = {r["team"]: r for r in table["tracks"]["scenes"]["rows"]}
    assert rows["ada"]["top1"] == 1.0 and rows["bo"]["top1"] == 0.625
    assert rows["cy"]["top1"] == 0.25
    assert [r["rank"] for r in table["tracks"]["depth"]["rows"]] == [1, 2, 3]
    records = stored_records(s3, finals)
    for (track, team), record in records.items():
        assert record["status"] == "ok", (track, team, record["errors"])
        assert record["stages"][-3:] == ["benchmark", "fidelity", "score"]
        assert record["runtime_ms"] > 0 and record["score"] > 0

    # dee's results are not what its model gives: flagged, and (by default) still ranked.
    dee, ada = records[("denoise", "dee")], records[("denoise", "ada")]
    assert dee["flags"] == ["results_not_reproduced"] and not dee["excluded"]
    assert max(float(v) for v in dee["reproduction"].values()) < 40
    assert ada["flags"] == [] and min(float(v) for v in ada["reproduction"].values()) >= 40
    table = get_json(s3, load_challenge(finals).buckets.results, RANKING)
    row = next(r for r in table["tracks"]["denoise"]["rows"] if r["team"] == "dee")
    assert row["flags"] == ["results_not_reproduced"] and row["rank"] is not None
    tasks.publish_preliminary_results(finals)
    public = get_json(s3, load_challenge(finals).buckets.public, "results/preliminary.json")
    public_dee = next(r for r in public["tracks"]["denoise"]["rows"] if r["team"] == "dee")
    assert public_dee["flags"] == ["results_not_reproduced"]
    mail = next(m for m in read_outbox(airflow_connections.folder) if m["To"].startswith("dee"))
    assert "results_not_reproduced" in mail.get_body().get_content()


def test_other_constants_show_moved_ranks_stored_only_when_applied_and_may_overflow(
    s3, airflow_connections, finals, built
):
    submit_everyone(s3, finals, built)
    score_everything(finals)
    bucket = load_challenge(finals).buckets.results
    before = get_json(s3, bucket, RANKING)
    # With alpha 0 fidelity no longer counts: runtime alone orders the scenes track.
    outcome = tasks.rank_results(finals, "manual__try", track="scenes", constants={"alpha": 0})
    assert not outcome["applied"]
    assert get_json(s3, bucket, RANKING) == before  # shown, not stored
    tried = get_json(s3, bucket, "scores/runs/manual__try.json")
    assert tried["tracks"]["scenes"]["constants"]["alpha"] == 0
    assert tried["tracks"]["depth"] == before["tracks"]["depth"]  # other tracks as they were
    by_runtime = [
        r["team"] for r in sorted(tried["tracks"]["scenes"]["rows"], key=lambda r: r["runtime_ms"])
    ]
    assert [r["team"] for r in tried["tracks"]["scenes"]["rows"]] == by_runtime
    moved = {m["team"] for m in outcome["moved"]}
    assert moved == {t for t, old in zip(by_runtime, EXPECTED, strict=True) if t != old}
    applied = tasks.rank_results(finals, "manual__apply", "scenes", {"alpha": 0}, apply=True)
    assert applied["applied"] and ranked_teams(s3, finals, "scenes") == by_runtime
    with pytest.raises(Exception, match="unknown constant .beta."):
        tasks.rank_results(finals, "manual__typo", "scenes", {"beta": 1})

    # ada's PSNR (~48 dB) with alpha 25 is 2 ** 1200: past a float. bo and cy still score.
    tasks.rank_results(finals, "manual__huge", "denoise", {"alpha": 25}, apply=True)
    table = get_json(s3, load_challenge(finals).buckets.results, RANKING)
    rows = {r["team"]: r for r in table["tracks"]["denoise"]["rows"]}
    assert rows["ada"]["status"] == "failed" and rows["ada"]["error"] == "score_not_computable"
    assert rows["ada"]["rank"] is None
    assert [t for t in ("bo", "cy") if rows[t]["rank"] is not None] == ["bo", "cy"]


def test_a_table_that_fails_validation_is_never_published(s3, airflow_connections, finals, built):
    from mai_ops.errors import NeedsOrganizer

    submit_everyone(s3, finals, built, ("depth",))
    score_everything(finals)
    challenge = load_challenge(finals)
    bucket = challenge.buckets.results
    # A fidelity result out of any possible range (a bug of ours, or a tampered file).
    entry = next(e for e in tasks.list_frozen(finals, "depth", "bo"))
    key = stage_key("depth", "bo", entry["sha256"], "fidelity.json")
    fidelity = get_json(s3, bucket, key)
    fidelity["metrics"]["si_rmse"] = -1.0
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(fidelity).encode())
    tasks.score_stage(finals, entry, "score")
    with pytest.raises(NeedsOrganizer, match="si_rmse") as failed:
        tasks.rank_results(finals, "manual__bad")
    assert "bo" in str(failed.value)
    assert get_json(s3, bucket, RANKING)["validated"]  # the earlier, valid results remain
    assert not get_json(s3, bucket, "scores/runs/manual__bad.json")["validated"]
    # The next scoring run fails the same way and replaces nothing; publishing refuses a
    # stored table that did not pass (here: one written by hand).
    table = get_json(s3, bucket, RANKING) | {"validated": False}
    s3.put_object(Bucket=bucket, Key=RANKING, Body=json.dumps(table).encode())
    with pytest.raises(NeedsOrganizer, match="did not pass validation"):
        tasks.publish_preliminary_results(finals)
    assert list(list_objects(s3, challenge.buckets.public, "results/")) == []
    assert read_outbox(airflow_connections.folder) == []


def test_staging_mistakes_stop_the_run_naming_the_object(s3, airflow_connections, finals, built):
    from mai_ops.errors import NeedsOrganizer

    submit_everyone(s3, finals, built, ("depth", "scenes"))
    challenge = load_challenge(finals)
    _, gt_prefix = data_set_keys("test", "depth")
    s3.delete_object(Bucket=challenge.buckets.organizers, Key=f"{gt_prefix}img01.png")
    with pytest.raises(NeedsOrganizer, match="img01"):
        tasks.list_frozen(finals, "depth")
    for obj in list(list_objects(s3, challenge.buckets.organizers, "test/scenes/")):
        s3.delete_object(Bucket=challenge.buckets.organizers, Key=obj["Key"])
    with pytest.raises(NeedsOrganizer, match="scenes"):
        tasks.list_frozen(finals, "scenes")


# --- real Airflow --------------------------------------------------------------------


@pytest.fixture
def finals_bag(finals, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from mai_ops_airflow import dag_header

    monkeypatch.setenv("MAI_OPS_CHALLENGES_DIR", str(finals.parent))
    monkeypatch.setitem(dag_header.DEFAULT_ARGS, "retries", 0)
    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_one_task_per_team_and_stage_and_clearing_changes_nothing(
    s3, airflow_connections, airflow_db, finals, finals_bag, built, monkeypatch
):
    """A phone offline for one benchmark and a crash of ours in one fidelity run: each
    is its own red task; the re-run (what clearing does) measures only those two, and
    clearing the whole run again changes no record and sends no email."""
    from mai_ops.devices import benchmark
    from mai_ops.models import fidelity

    submit_everyone(s3, finals, built)
    dag = finals_bag.dags["finals__scoring"]
    when = dt.datetime.now(dt.UTC).replace(microsecond=0)
    conf = {"track": "all", "team": None, "remeasure": False, "constants": {}, "apply": False}
    bo_depth = (built / "depth-bo.tflite").read_bytes()
    cy_scenes = (built / "scenes-cy.tflite").read_bytes()
    real_benchmark, real_fidelity = benchmark.run_benchmark, fidelity.evaluate_model
    calls = {"benchmark": [], "fidelity": [], "broken": True}

    def device(model, *args, **kwargs):
        mine = Path(model).read_bytes()
        calls["benchmark"].append(mine)
        if calls["broken"] and mine == bo_depth:
            raise benchmark.BenchmarkError("benchmark_device_offline", "no phone answers")
        return real_benchmark(model, *args, **kwargs)

    def evaluate(model, *args, **kwargs):
        mine = Path(model).read_bytes()
        calls["fidelity"].append(mine)
        if calls["broken"] and mine == cy_scenes:
            raise RuntimeError("the evaluation worker lost its scratch disk")
        return real_fidelity(model, *args, **kwargs)

    monkeypatch.setattr(benchmark, "run_benchmark", device)
    monkeypatch.setattr(fidelity, "evaluate_model", evaluate)

    run = dag.test(logical_date=when, run_conf=conf)
    assert str(run.state) == "failed"
    states = _task_instances(run)
    assert states[("score_depth.benchmark", "bo: benchmark_device_offline")] == "failed"
    assert states[("score_scenes.fidelity", "cy: internal_error")] == "failed"
    assert states[("score_depth.fidelity", "bo")] == "success"
    assert states[("score_scenes.benchmark", "cy")] == "success"
    assert states[("score_depth.benchmark", "ada")] == "success"
    assert states[("rank_results", None)] == "upstream_failed"
    assert len(calls["benchmark"]) == len(calls["fidelity"]) == 10

    calls.update(benchmark=[], fidelity=[], broken=False)  # the phone is back, disk fixed
    run = dag.test(logical_date=when, run_conf=conf)  # clearing the failed tasks
    assert str(run.state) == "success"
    assert calls["benchmark"] == [bo_depth] and calls["fidelity"] == [cy_scenes]
    assert _task_instances(run)[("score_depth.benchmark", "bo")] == "success"
    assert ranked_teams(s3, finals, "depth") == EXPECTED
    records = stored_records(s3, finals)
    # The organizers heard of each failure once (a task that failed for good), with a link.
    alerts = [m for m in read_outbox(airflow_connections.folder) if m["To"] == ORGANIZERS]
    assert sorted(a["Subject"] for a in alerts) == [
        "[FINALS] task failed: finals__scoring / score_depth.benchmark",
        "[FINALS] task failed: finals__scoring / score_scenes.fidelity",
    ]
    assert all("/dags/finals__scoring/runs/" in a.get_body().get_content() for a in alerts)
    tasks.publish_preliminary_results(finals)
    sent = len(read_outbox(airflow_connections.folder))
    assert sent == len(TEAMS) + len(alerts)

    calls.update(benchmark=[], fidelity=[])
    run = dag.test(logical_date=when, run_conf=conf)  # clearing the whole run
    assert str(run.state) == "success"
    assert calls["benchmark"] == [] and calls["fidelity"] == []
    assert stored_records(s3, finals) == records
    tasks.publish_preliminary_results(finals)
    assert len(read_outbox(airflow_connections.folder)) == sent


def _promised(path: Path) -> dt.datetime:
    return tasks.promised_instant(load_challenge(path)).astimezone(dt.UTC)


def _team_mails(folder) -> list:
    return [m for m in read_outbox(folder) if m["To"] != ORGANIZERS]


def test_results_wait_for_approval_and_never_show_before_the_promised_instant(
    s3, airflow_connections, airflow_db, finals, finals_bag, built
):
    from mai_ops.dev.approver import Approver

    submit_everyone(s3, finals, built, ("depth",))
    score_everything(finals)
    challenge = load_challenge(finals)
    dag = finals_bag.dags["finals__preliminary_results"]
    promised = _promised(finals)

    # Nobody answers in time (the REST API never reached): at the approver's deadline the
    # step fails, as at a response timeout, instead of the run waiting for good.
    with Approver("finals__preliminary_results", option="Reject", timeout_s=0) as late:
        run = dag.test(logical_date=promised - dt.timedelta(days=3))
    assert str(run.state) == "failed" and late.answered == [] and late.timed_out
    assert _task_instances(run)[("approve_publication", None)] == "failed"
    assert list(list_objects(s3, challenge.buckets.public)) == []

    # Rejected: nothing is published, no team hears anything.
    with Approver("finals__preliminary_results", option="Reject") as organizer:
        run = dag.test(logical_date=promised - dt.timedelta(days=2))
    assert organizer.answered and not organizer.errors
    states = _task_instances(run)
    assert states[("approve_publication", None)] == "success"
    assert states[("publish_preliminary_results", None)] == "skipped"
    assert list(list_objects(s3, challenge.buckets.public)) == []

    # Approved a day ahead, through the REST API: recorded, still nothing public.
    with Approver("finals__preliminary_results") as organizer:
        run = dag.test(logical_date=promised - dt.timedelta(days=1))
    assert str(run.state) == "success" and organizer.answered
    assert _task_instances(run)[("record_approval", None)] == "success"
    assert list(list_objects(s3, challenge.buckets.public)) == []
    assert _team_mails(airflow_connections.folder) == []
    request = [m for m in read_outbox(airflow_connections.folder) if m["To"] == ORGANIZERS]
    assert request and "waiting for your approval" in request[0]["Subject"]

    # At the promised instant the approved table is published without asking again.
    run = dag.test(logical_date=promised)
    assert str(run.state) == "success"
    states = _task_instances(run)
    assert states[("approve_publication", None)] == "skipped"
    assert states[("publish_preliminary_results", None)] == "success"
    public = {o["Key"] for o in list_objects(s3, challenge.buckets.public)}
    assert {"results/preliminary.json", "leaderboard/depth/index.html"} <= public
    assert sorted(m["To"] for m in _team_mails(airflow_connections.folder)) == [
        "ada@teams.example",
        "bo@teams.example",
        "cy@teams.example",
    ]


def test_storage_lost_in_the_middle_of_publishing_shows_nothing_half_done_and_sends_once(
    s3_server, s3, airflow_connections, finals, built
):
    """The public bucket answers one more object, then is gone; twice, at two places."""
    submit_everyone(s3, finals, built, ("depth",))
    score_everything(finals)
    public = load_challenge(finals).buckets.public
    index = "leaderboard/index.html"
    for armed in (f"PUT /{public}/", f"PUT /{public}/{index}"):
        s3_server.arm_outage(armed, seconds=None)
        try:
            with pytest.raises(Exception, match="Could not connect|Connection was closed"):
                tasks.publish_preliminary_results(finals)
            assert s3_server.down
        finally:
            s3_server.back()
        written = {o["Key"] for o in list_objects(s3, public)}
        if index in written:  # the page the emails link to: only over a whole publication
            expected = {"results/preliminary.json", "results/preliminary.csv"}
            expected |= {f"leaderboard/depth/{name}" for name in ("index.html", "results.csv")}
            assert expected <= written, written
        assert _team_mails(airflow_connections.folder) == []
    assert index in written  # the second outage came after the last public object

    tasks.publish_preliminary_results(finals)  # the retry
    tasks.publish_preliminary_results(finals)  # and a cleared task
    mails = _team_mails(airflow_connections.folder)
    assert sorted(m["To"] for m in mails) == [f"{t}@teams.example" for t in ("ada", "bo", "cy")]
    assert len({m["Message-ID"] for m in mails}) == 3
