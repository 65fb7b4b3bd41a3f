"""DagBag integrity: every shipped DAG loads, is labelled, retries, and parses light."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.challenge.timeline import phase_instants

from .conftest import CHALLENGES, MAI2021, PROJECT

EXPECTED = {
    "mai2021__release_data",
    "mai2021__validation_server",
    "mai2021__validation_uploads",
    "mai2021__final_collection",
    "mai2021__scoring",
    "mai2021__preliminary_results",
    "mai2021__reminders",
    "mai2021__workshop_notices",
    "mai2023__reminders",
    "mai2023__workshop_notices",
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_phase_dag_exists(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_header(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    challenge, phase = dag_id.split("__")
    assert {"mai-ops", f"challenge:{challenge}", f"phase:{phase}"} <= set(dag.tags)
    assert dag.doc_md and phase in dag.doc_md
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} retries {task.retries}"
        assert task.owner == "mai-organizers"
        assert task.execution_timeout is not None


def test_release_dag_fires_at_the_timeline_instants(dagbag):
    timetable = dagbag.dags["mai2021__release_data"].timetable
    assert [d.isoformat() for d in timetable.event_dates] == [
        "2021-01-16T01:00:00+00:00",  # Jan 15 17:00 PST
        "2021-03-16T00:00:00+00:00",  # Mar 15 17:00 PDT
    ]


def test_unfixed_dates_schedule_nothing(dagbag):
    notices = dagbag.dags["mai2021__workshop_notices"].timetable.event_dates
    assert all(d.month != 6 for d in notices), "June XX workshop day must not be scheduled"
    mai2023 = dagbag.dags["mai2023__workshop_notices"].timetable.event_dates
    assert [d.isoformat() for d in mai2023] == [
        "2023-02-21T01:00:00+00:00",
        "2023-06-19T15:00:00+00:00",  # workshop day, 08:00 PDT
    ]
    assert all(d.month != 4 for d in mai2023), "April (no day) must not be scheduled"


def test_timetables_match_the_library(dagbag):
    challenge = load_challenge(MAI2021)
    for phase, instants in phase_instants(challenge).items():
        dag = dagbag.dags[f"mai2021__{phase}"]
        if phase == "scoring":
            assert "frozen_final_set" in str(dag.timetable.asset_condition)
            continue
        if phase == "validation_uploads":
            assert "submission_uploads" in str(dag.timetable.asset_condition)
            continue
        assert list(dag.timetable.event_dates) == instants


def test_scoring_dag_offers_a_rescore_form(dagbag):
    params = dagbag.dags["mai2021__scoring"].params
    assert params["track"] == "all"
    assert "learned_isp" in params.get_param("track").schema["enum"]
    assert params["team"] == ""


def _parse_in_child(challenges_dir, extra_code: str = "") -> dict:
    code = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
bag = DagBag(dag_folder={str(PROJECT / "dags")!r})
loaded = set(sys.modules) - before
heavy = sorted(m for m in loaded if m.split(".")[0] in
    {{"tensorflow", "great_expectations", "ai_edge_litert", "boto3", "botocore", "keras"}})
result = {{"dags": sorted(bag.dag_ids), "errors": list(bag.import_errors), "heavy": heavy}}
print(json.dumps(result))
"""
    env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(challenges_dir)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parsing_imports_no_heavy_library():
    result = _parse_in_child(CHALLENGES)
    assert result["errors"] == []
    assert result["heavy"] == [], "DAG files must not import these at parse time"


def test_dag_files_have_no_module_level_heavy_imports():
    for path in (PROJECT / "dags").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                assert not any(
                    lib in line for lib in ("tensorflow", "great_expectations", "ai_edge_litert")
                ), f"{path.name}: {line}"


def test_a_broken_challenge_file_shows_as_a_failing_dag_and_spares_the_others(tmp_path):
    shutil.copy(CHALLENGES / "mai2023.yaml", tmp_path / "mai2023.yaml")
    shutil.copytree(
        PROJECT / "include" / "participants", tmp_path.parent / "participants", dirs_exist_ok=True
    )
    broken = (
        (CHALLENGES / "mai2021.yaml")
        .read_text()
        .replace("date: 2021-03-15, phase: release_data", "date: 2021-01-01, phase: release_data")
    )
    (tmp_path / "mai2021.yaml").write_text(broken)
    result = _parse_in_child(tmp_path)
    assert result["errors"] == []
    assert "mai2021__config_error" in result["dags"]
    assert {"mai2023__reminders", "mai2023__workshop_notices"} <= set(result["dags"])
    assert not any(d.startswith("mai2021__release") for d in result["dags"])


def test_config_error_dag_fails_with_the_reasons(tmp_path):
    (tmp_path / "oops.yaml").write_text(
        "id: oops\ntitle: x\ntimezone: Mars/Olympus\ntimeline: []\n"
    )
    code = f"""
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(PROJECT / "dags")!r})
dag = bag.dags["oops__config_error"]
print(dag.doc_md)
"""
    env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Mars/Olympus" in out.stdout and "timeline" in out.stdout


def test_instants_are_utc(dagbag):
    for dag_id in EXPECTED - {"mai2021__scoring", "mai2021__validation_uploads"}:
        for instant in dagbag.dags[dag_id].timetable.event_dates:
            assert instant.utcoffset() == dt.timedelta(0)
