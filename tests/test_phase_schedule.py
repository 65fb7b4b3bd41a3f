"""The phases' schedule: an instant missed while nothing ran still gets its run, late.

Airflow's ``EventsTimetable`` (no catchup) skips an instant that passed before the DAG's
next run was computed, e.g. a final deadline during a scheduler restart or just as the
challenge file was edited: the freeze would never happen. ``PhaseEvents`` runs the latest
such instant at once, within its grace, and never an instant twice.
"""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.events import EventsTimetable

from mai_ops.timeouts import LATE_PHASE_GRACE_S, LATE_REMINDER_GRACE_S
from mai_ops_airflow.timetables import PhaseEvents

NO_CATCHUP = TimeRestriction(earliest=None, latest=None, catchup=False)


def instants(*minutes_from_now: float) -> list[pendulum.DateTime]:
    now = pendulum.now("UTC").replace(microsecond=0)
    return [now + dt.timedelta(minutes=m) for m in minutes_from_now]


def next_run(timetable, last: pendulum.DateTime | None = None):
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval.exact(last) if last else None,
        restriction=NO_CATCHUP,
    )
    return info.logical_date if info else None


def test_a_deadline_missed_by_minutes_runs_now_where_airflows_timetable_skips_it():
    deadline, results = instants(-5, 60 * 48)
    assert next_run(EventsTimetable([deadline, results])) == results  # the freeze is lost
    assert next_run(PhaseEvents([deadline, results])) == deadline


def test_after_its_late_run_the_next_instant_is_the_next_in_the_future():
    deadline, results = instants(-5, 60 * 48)
    assert next_run(PhaseEvents([deadline, results]), last=deadline) == results


def test_of_several_missed_instants_only_the_latest_runs():
    first, second, later = instants(-90, -30, 60)
    assert next_run(PhaseEvents([first, second, later]), last=None) == second
    assert next_run(PhaseEvents([first, second, later]), last=first) == second


def test_an_instant_older_than_the_grace_stays_skipped():
    old, later = instants(-LATE_PHASE_GRACE_S / 60 - 5, 60)
    assert next_run(PhaseEvents([old, later])) == later
    assert next_run(PhaseEvents([old])) is None


def test_with_nothing_missed_it_is_airflows_timetable():
    past, soon, later = instants(-60, 10, 20)
    for timeline, last in (
        ([soon, later], None),
        ([past, soon, later], past),
        ([past, soon, later], soon),
    ):
        mine = next_run(PhaseEvents(timeline), last=last)
        assert mine == next_run(EventsTimetable(timeline), last=last)
    assert next_run(PhaseEvents([past, soon, later]), last=soon) == later


def test_the_latest_allowed_run_bounds_a_late_one_too():
    deadline, _ = instants(-5, 60)
    restriction = TimeRestriction(
        earliest=None, latest=deadline - dt.timedelta(minutes=1), catchup=False
    )
    info = PhaseEvents([deadline]).next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )
    assert info is None


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    from .conftest import PROJECT

    return DagBag(dag_folder=str(PROJECT / "dags"))


@pytest.mark.parametrize(
    "dag_id, grace",
    [
        ("mai2021__final_collection", LATE_PHASE_GRACE_S),
        ("mai2021__release_data", LATE_PHASE_GRACE_S),
        ("mai2021__reminders", LATE_REMINDER_GRACE_S),
    ],
)
def test_airflow_serializes_the_phase_schedule_through_the_plugin(dagbag, dag_id, grace):
    """What the scheduler reads is a PhaseEvents with the same instants and grace."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[dag_id]
    assert isinstance(dag.timetable, PhaseEvents) and dag.timetable.grace_s == grace
    data = DagSerialization.to_dict(dag)
    assert data["dag"]["timetable"]["__type"] == "mai_ops_airflow.timetables.PhaseEvents"
    back = DagSerialization.from_dict(data).timetable
    assert isinstance(back, PhaseEvents) and back.grace_s == grace
    assert back.event_dates == dag.timetable.event_dates
    assert back.summary == dag.timetable.summary
