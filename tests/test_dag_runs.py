"""Whole DAG runs in real Airflow (dag.test) against the loopback S3 and SMTP servers."""

from __future__ import annotations

import os

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox
from mai_ops.infra.layout import FROZEN_MANIFEST
from mai_ops.infra.storage import get_json

from .conftest import PROJECT
from .conftest import REHEARSAL as MAI2021
from .test_phases import TEST_RELEASE, TRAIN, at, stage, upload

CH = load_challenge(MAI2021)


@pytest.fixture(scope="module")
def bag():
    """The DAGs of the date-shifted copy (dag.test re-parses the folder with this env)."""
    from airflow.dag_processing.dagbag import DagBag

    before = os.environ["MAI_OPS_CHALLENGES_DIR"]
    os.environ["MAI_OPS_CHALLENGES_DIR"] = str(MAI2021.parent)
    try:
        yield DagBag(dag_folder=str(PROJECT / "dags"))
    finally:
        os.environ["MAI_OPS_CHALLENGES_DIR"] = before


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
    assert read_outbox(airflow_connections.folder) == []


def test_final_collection_then_scoring_with_a_rescore_form(
    bag, airflow_db, s3, airflow_connections
):
    upload(s3, "learned_isp", "aurora")
    upload(s3, "learned_isp", "cobalt")
    upload(s3, "depth", "borealis")
    final = bag.dags["mai2021__final_collection"]
    assert _state(final.test(logical_date=at("final_deadline"))) == "success"
    assert len(get_json(s3, CH.buckets.results, FROZEN_MANIFEST)["frozen"]) == 3

    scoring = bag.dags["mai2021__scoring"]
    assert _state(scoring.test(run_conf={"track": "learned_isp", "team": "cobalt"})) == "success"
    from mai_ops.infra.storage import list_objects

    scored = sorted(o["Key"] for o in list_objects(s3, CH.buckets.results, "scores/"))
    assert scored == ["scores/learned_isp/cobalt.json"]
    # Explicit conf: in-process dag.test keeps the previous run's params as defaults.
    assert _state(scoring.test(run_conf={"track": "all", "team": ""})) == "success"
    scored = sorted(o["Key"] for o in list_objects(s3, CH.buckets.results, "scores/"))
    assert len(scored) == 3


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
