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
    if phase == "final_collection":  # its date in the challenge's zone, whatever the browser's
        assert "final_deadline: 2021-03-20 17:00 PDT (2021-03-21 00:00 UTC)" in dag.doc_md
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} retries {task.retries}"
        # An outage of storage or the mail relay is waited out, longer after each try.
        assert task.retry_exponential_backoff > 1 and task.max_retry_delay is not None
        assert task.owner == "mai-organizers"
        # An approval waits as long as it takes: the one task without a time limit.
        assert task.execution_timeout is not None or task.task_id == "approve_publication"


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
    assert params["team"] is None
    assert "empty: every team" in params.get_param("team").description


def test_scoring_sends_the_device_its_benchmarks_first(dagbag):
    """The device is the scoring run's critical path: a ready benchmark is queued before
    any check, fidelity run or score, and a team's checks and fidelity run come in team
    order, whatever the number of teams (absolute weights, not the downstream sum)."""
    dag = dagbag.dags["mai2021__scoring"]
    track = dag.task_group.get_child_by_label("score_learned_isp")
    tasks = {
        stage: dag.get_task(f"{track.group_id}.{stage}")
        for stage in ("prepare", "benchmark", "fidelity", "score")
    }
    assert {str(t.weight_rule) for t in tasks.values()} == {"absolute"}
    weight = {stage: t.priority_weight for stage, t in tasks.items()}
    assert weight["benchmark"] > weight["prepare"] == weight["fidelity"] > weight["score"]


def _parse_in_child(challenges_dir, dags_dir=PROJECT / "dags") -> dict:
    code = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
bag = DagBag(dag_folder={str(dags_dir)!r})
loaded = set(sys.modules) - before
heavy = sorted(m for m in loaded if m.split(".")[0] in
    {{"tensorflow", "great_expectations", "ai_edge_litert", "boto3", "botocore", "keras"}})
result = {{"dags": sorted(bag.dag_ids), "errors": list(bag.import_errors), "heavy": heavy,
    "tasks": {{d: sorted(bag.dags[d].task_ids) for d in bag.dag_ids}}}}
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


def test_pathological_challenge_files_spare_every_dag_of_a_good_one(tmp_path):
    """A formula of 100000 operators and a file nested 100000 levels deep, next to mai2021.

    Before the limits, the first raised RecursionError/MemoryError out of the challenge
    loop (an import error for every phase file) and the second crashed the parsing
    process (libyaml recursing in C): either way no DAG of mai2021 was left.
    """
    shutil.copy(MAI2021, tmp_path / "mai2021.yaml")
    shutil.copytree(
        PROJECT / "include" / "participants", tmp_path.parent / "participants", dirs_exist_ok=True
    )
    good = MAI2021.read_text()
    formula = '"2 ** (alpha * psnr) / (C * runtime)"'
    assert formula in good
    slip = good.replace("id: mai2021", "id: slip", 1).replace(
        formula, '"' + "-" * 100_000 + 'psnr"', 1
    )
    (tmp_path / "slip.yaml").write_text(slip)
    (tmp_path / "nested.yaml").write_text("id: nested\ntitle: " + "[" * 100_000 + "]" * 100_000)
    code = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(PROJECT / "dags")!r})
print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": list(bag.import_errors),
    "tasks": {{d: sorted(bag.dags[d].task_ids) for d in bag.dag_ids}},
    "docs": {{d: bag.dags[d].doc_md for d in bag.dag_ids if d.endswith("__config_error")}}}}))
"""
    env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    mai2021 = {d for d in EXPECTED if d.startswith("mai2021__")}
    assert set(result["dags"]) == mai2021 | {"slip__config_error", "nested__config_error"}
    assert all(result["tasks"][d] for d in mai2021)
    assert "tracks[0].score.formula" in result["docs"]["slip__config_error"]
    assert "at most 1000 are allowed" in result["docs"]["slip__config_error"]
    assert "nest more than 64 levels deep" in result["docs"]["nested__config_error"]


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


def test_a_code_error_in_one_phase_file_spares_the_other_phases(tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(PROJECT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    scoring = dags / "scoring.py"
    scoring.write_text(scoring.read_text().replace("for_each_challenge(PHASE, build)", "oops()"))
    result = _parse_in_child(CHALLENGES, dags)
    assert result["errors"] == [str(scoring)]
    assert set(result["dags"]) == EXPECTED - {"mai2021__scoring"}


def test_a_challenge_whose_dag_cannot_be_built_gets_a_stand_in_and_spares_the_others(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    source = (PROJECT / "dags" / "reminders.py").read_text()
    broken = source.replace(
        "    def reminders():\n",
        "    def reminders():\n"
        "        if challenge.id == 'mai2021':\n"
        "            raise KeyError('a bug met by one challenge')\n",
    )
    assert broken != source
    (dags / "reminders.py").write_text(broken)
    result = _parse_in_child(CHALLENGES, dags)
    assert result["errors"] == []
    assert result["dags"] == ["mai2021__reminders", "mai2023__reminders"]
    assert result["tasks"]["mai2023__reminders"] == ["send_reminders"]
    assert result["tasks"]["mai2021__reminders"] == ["report_build_error"]


def _form_fields(dag) -> dict:
    """The params as the REST API's DAG details give them to the trigger form."""
    from airflow.serialization.serialized_objects import DagSerialization

    params = DagSerialization.from_dict(DagSerialization.to_dict(dag)).params
    return {name: param.dump() for name, param in params.items()}


def _required_by_the_form(schema: dict) -> bool:
    """The React form's rule: a ``type`` that is not a list containing "null"."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def test_every_trigger_form_submits_as_it_opens(dagbag):
    import jsonschema

    checked = 0
    for dag_id, dag in sorted(dagbag.dags.items()):
        for name, field in _form_fields(dag).items():
            where = f"{dag_id}: param {name!r}"
            assert field["description"], f"{where} says nothing about its value"
            if _required_by_the_form(field["schema"]):
                assert field["value"] not in (None, ""), f"{where} opens required and empty"
            else:
                assert "empty" in field["description"].lower(), f"{where}: what does empty mean?"
                jsonschema.validate(None, field["schema"])  # a cleared field still submits
            if field["value"] is not None:
                jsonschema.validate(field["value"], field["schema"])
            checked += 1
    assert checked >= 8


def test_event_forms_mark_events_without_a_fixed_date(dagbag):
    schema = dagbag.dags["mai2021__workshop_notices"].params.get_param("event").schema
    assert None in schema["enum"] and "workshop_day" in schema["enum"]
    assert schema["values_display"]["None"] == "(by date)"
    assert "not sendable" in schema["values_display"]["workshop_day"]
    assert "not sendable" not in schema["values_display"]["camera_ready"]
