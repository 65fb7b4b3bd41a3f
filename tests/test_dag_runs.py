"""Whole DAG runs in real Airflow (dag.test) against the loopback S3 and SMTP servers."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from mai_ops import tasks
from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox
from mai_ops.infra.layout import FROZEN_MANIFEST, RANKING
from mai_ops.infra.storage import get_json, list_objects

from .conftest import PROJECT, reference_model
from .conftest import REHEARSAL as MAI2021
from .test_phases import TEST_RELEASE, TRAIN, at, stage, upload

CH = load_challenge(MAI2021)


@pytest.fixture(scope="module")
def bag():
    """The DAGs of the date-shifted copy (dag.test re-parses the folder with this env)."""
    before = os.environ["MAI_OPS_CHALLENGES_DIR"]
    os.environ["MAI_OPS_CHALLENGES_DIR"] = str(MAI2021.parent)
    try:
        yield _rehearsal_bag()
    finally:
        os.environ["MAI_OPS_CHALLENGES_DIR"] = before


def _rehearsal_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))


def _state(dag_run) -> str:
    return str(dag_run.state)


def test_release_dag_run_then_cleared_rerun(bag, airflow_db, s3, airflow_connections):
    stage(s3)
    dag = bag.dags["mai2021__release_data"]
    when = TRAIN
    assert _state(dag.test(logical_date=when)) == "success"
    assert len(read_outbox(airflow_connections.folder)) == 3
    # dag.test on the same logical date clears the task instances and runs them again.
    assert _state(dag.test(logical_date=when)) == "success"
    assert len(read_outbox(airflow_connections.folder)) == 3


def test_release_dag_fails_readably_when_nothing_is_staged(
    bag, airflow_db, s3, airflow_connections
):
    dag = bag.dags["mai2021__release_data"]
    run = dag.test(logical_date=TEST_RELEASE)
    assert _state(run) == "failed"
    # No team hears anything; the organizers get one alert naming the task.
    (alert,) = read_outbox(airflow_connections.folder)
    assert alert["To"] == "organizers@mai-challenge.example"
    assert (
        alert["Subject"]
        == "[MAI2021] task failed: mai2021__release_data / publish_release_and_notify"
    )
    assert "nothing to release" in alert.get_body().get_content()


def test_final_collection_then_scoring_with_a_rescore_form(
    bag, airflow_db, s3, airflow_connections
):
    upload(s3, "learned_isp", "aurora")
    upload(s3, "learned_isp", "cobalt")
    upload(s3, "depth", "borealis")
    final = bag.dags["mai2021__final_collection"]
    # The rehearsal's deadline is tomorrow: a freeze now is an early one, on purpose.
    run = final.test(logical_date=at("final_deadline"), run_conf={"early_freeze": True})
    assert _state(run) == "success"
    assert len(get_json(s3, CH.buckets.results, FROZEN_MANIFEST)["frozen"]) == 3

    def records() -> list[str]:
        keys = [o["Key"] for o in list_objects(s3, CH.buckets.results, "scores/")]
        return sorted("/".join(k.split("/")[1:3]) for k in keys if k.endswith("/record.json"))

    scoring = bag.dags["mai2021__scoring"]
    assert _state(scoring.test(run_conf={"track": "learned_isp", "team": "cobalt"})) == "success"
    assert records() == ["learned_isp/cobalt"]
    # Two submissions are not scored yet: the ranking is kept as the run's, not as results.
    assert not list(list_objects(s3, CH.buckets.results, RANKING))
    # Explicit conf: in-process dag.test keeps the previous run's params as defaults.
    assert _state(scoring.test(run_conf={"track": "all", "team": ""})) == "success"
    assert records() == ["depth/borealis", "learned_isp/aurora", "learned_isp/cobalt"]
    assert get_json(s3, CH.buckets.results, RANKING)["validated"]


def test_the_scheduler_timetable_walks_the_whole_timeline(bag):
    """The scheduler's own next_dagrun_info, from the start, gives every instant in order."""
    from airflow.timetables.base import TimeRestriction

    from mai_ops.challenge.timeline import phase_instants

    for phase, instants in phase_instants(CH).items():
        if not instants:  # set off by an asset (scoring, uploads), not by dates
            continue
        timetable = bag.dags[f"mai2021__{phase}"].timetable
        seen, last = [], None
        while info := timetable.next_dagrun_info(
            last_automated_data_interval=last,
            restriction=TimeRestriction(earliest=None, latest=None, catchup=True),
        ):
            seen.append(info.logical_date)
            last = info.data_interval
        assert seen == instants, phase


def test_without_catchup_past_events_are_not_run(bag):
    from airflow.timetables.base import TimeRestriction

    timetable = bag.dags["mai2021__release_data"].timetable
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=False),
    )
    assert info is None  # all 2021 instants are in the past: nothing fires by surprise


def _task_instances(run) -> dict[tuple[str, str | None], str]:
    """(task id, its name in the grid) -> state, read back from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
        return {
            (ti.task_id, ti.rendered_map_index if ti.map_index >= 0 else None): str(ti.state)
            for ti in rows
        }


def _xcom(run, task_id: str):
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
            )
        ).one()
    return json.loads(value) if isinstance(value, str) else value


def test_a_manual_final_collection_before_the_deadline_is_refused(
    bag, airflow_db, s3, airflow_connections
):
    upload(s3, "depth", "borealis")
    final = bag.dags["mai2021__final_collection"]
    run = final.test(run_conf={"early_freeze": False, "refreeze": False})
    assert _state(run) == "failed"
    assert _task_instances(run)[("freeze_final_set", None)] == "failed"
    assert list(list_objects(s3, CH.buckets.results, "frozen/")) == []
    assert [m["To"] for m in read_outbox(airflow_connections.folder)] == [
        "organizers@mai-challenge.example"
    ]


def test_scoring_tasks_are_named_by_team_and_a_participants_failure_is_skipped(
    bag, airflow_db, s3, airflow_connections
):
    upload(s3, "learned_isp", "aurora")
    upload(s3, "learned_isp", "cobalt", b"not a flatbuffer")
    tasks.freeze_final(MAI2021)
    run = bag.dags["mai2021__scoring"].test(run_conf={"track": "learned_isp", "team": None})
    assert _state(run) == "success"
    states = _task_instances(run)
    for name in ("prepare", "benchmark", "fidelity", "score"):
        assert states[(f"score_learned_isp.{name}", "aurora")] == "success", name
    assert states[("score_learned_isp.prepare", "cobalt: not_tflite")] == "skipped"
    assert states[("score_learned_isp.score", "cobalt: not_tflite")] == "skipped"
    assert states[("rank_results", None)] == "success"
    assert _xcom(run, "rank_results")["ranked"]["learned_isp"] == 2


def test_a_failure_on_our_side_is_red_and_fails_the_run_until_fixed(
    bag, airflow_db, s3, airflow_connections, monkeypatch
):
    from mai_ops.devices import benchmark
    from mai_ops_airflow import dag_header

    # No retries: a DAG bag parsed with these defaults (dag.test parses the files again).
    monkeypatch.setitem(dag_header.DEFAULT_ARGS, "retries", 0)
    monkeypatch.setitem(dag_header.DEFAULT_ARGS, "retry_delay", dt.timedelta(0))
    dag = _rehearsal_bag().dags["mai2021__scoring"]

    def phone_offline(*args, **kwargs):
        raise benchmark.BenchmarkError("benchmark_device_offline", "no phone answers")

    run_benchmark = benchmark.run_benchmark
    monkeypatch.setattr(benchmark, "run_benchmark", phone_offline)
    upload(s3, "depth", "borealis")
    tasks.freeze_final(MAI2021)
    when = at("final_deadline") + dt.timedelta(hours=1)
    conf = {"track": "depth", "team": None, "remeasure": False, "constants": {}, "apply": False}
    for _ in range(2):  # the second run clears the tasks and runs them again
        run = dag.test(logical_date=when, run_conf=conf)
        assert _state(run) == "failed"
        states = _task_instances(run)
        assert states[("score_depth.benchmark", "borealis: benchmark_device_offline")] == "failed"
        assert states[("score_depth.fidelity", "borealis")] == "success"
        assert states[("rank_results", None)] == "upstream_failed"

    monkeypatch.setattr(benchmark, "run_benchmark", run_benchmark)  # the phone is back
    run = dag.test(logical_date=when, run_conf=conf)  # clearing is the fix
    assert _state(run) == "success"
    assert _task_instances(run)[("score_depth.benchmark", "borealis")] == "success"


def test_validation_tasks_are_named_by_upload(bag, airflow_db, s3, airflow_connections):
    from .test_validation import put_zip

    isp = reference_model("learned_isp")
    put_zip(s3, "depth/validation/borealis/good.zip", {"model.tflite": reference_model("depth")})
    put_zip(s3, "learned_isp/validation/aurora/bad.zip", {"model.tflite": b"not a flatbuffer"})
    put_zip(s3, "learned_isp/validation/cobalt/one.zip", {"model.tflite": isp})
    put_zip(s3, "learned_isp/validation/cobalt/two.zip", {"model.tflite": b"not a flatbuffer"})
    run = bag.dags["mai2021__validation_uploads"].test()
    assert _state(run) == "success"
    states = _task_instances(run)
    assert states[("validate_uploads", "borealis/good.zip")] == "success"
    assert states[("validate_uploads", "aurora/bad.zip: not_tflite")] == "skipped"
    # One team's uploads are one task, answered in order; its label shows each outcome.
    assert states[("validate_uploads", "cobalt/one.zip, two.zip: not_tflite")] == "success"
    replies = [m["Subject"] for m in read_outbox(airflow_connections.folder)]
    assert len(replies) == 4
