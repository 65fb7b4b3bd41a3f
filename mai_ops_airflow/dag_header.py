"""What every phase DAG file shares: the header, the schedule, and the loop over challenges.

A phase file in ``dags/`` is a short ``build(challenge, path, instants)`` handed to
:func:`for_each_challenge`, which builds it once per valid challenge file. A challenge
whose DAG cannot be built (a bug met by one challenge's data) becomes a stand-in DAG
with the same id that says why, and the other challenges keep theirs. Parsing stays
light: no TensorFlow, Great Expectations or boto3 here or in what this imports.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, task

from mai_ops.challenge.config import Challenge, Problem, challenge_files, read_challenge
from mai_ops.challenge.timeline import DagPhase, dag_id, dag_phase_of, phase_instants
from mai_ops.infra.layout import FROZEN_MANIFEST
from mai_ops.timeouts import (
    DEVICE_TASK_TIMEOUT_S,
    LATE_PHASE_GRACE_S,
    LATE_REMINDER_GRACE_S,
    TASK_TIMEOUT_S,
    retry_delay_s,
)
from mai_ops_airflow.timetables import PhaseEvents

log = logging.getLogger(__name__)

# A failure of ours (storage or mail relay unreachable, a crash) is tried again with
# exponential backoff: about 15-30 s, 30-60 s, 1-2 min, then 2-4 min (capped at 5) after
# each failed try, so an outage of a few minutes costs a delay, not a red task.
DEFAULT_ARGS = {
    "owner": "mai-organizers",
    "retries": 4,
    "retry_delay": pendulum.duration(seconds=retry_delay_s()),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(minutes=5),
    "execution_timeout": pendulum.duration(seconds=TASK_TIMEOUT_S),
}

# Room for a conversion (15 min) and three adb attempts (3 x 10 min).
DEVICE_TASK_TIMEOUT = pendulum.duration(seconds=DEVICE_TASK_TIMEOUT_S)


@cache
def _read(path: Path, mtime_ns: int, size: int) -> tuple[Challenge | None, list[Problem]]:
    """One parse per file version: every phase file of a DagBag reads the same files."""
    return read_challenge(path)


def read_challenge_files() -> list[tuple[Path, Challenge | None, list[Problem]]]:
    """Every challenge file with its challenge (None when unusable) and its errors.

    Never raises for one file (``read_challenge`` turns whatever goes wrong into a
    finding), so a broken file costs no other challenge its DAGs.
    """
    found = []
    for path in challenge_files():
        try:
            stat = os.stat(path)
        except OSError:
            continue  # removed since the folder was listed
        challenge, problems = _read(path, stat.st_mtime_ns, stat.st_size)
        errors = [p for p in problems if p.severity == "error"]
        found.append((path, None if errors else challenge, errors))
    return found


def for_each_challenge(phase: str, build: Callable[[Challenge, str, list], object]) -> None:
    """``build(challenge, path, instants)`` for every valid challenge that has ``phase``.

    A challenge whose build raises is logged and gets a stand-in DAG under the same id
    whose task fails with the error, so the UI shows which phase of which challenge is
    broken while every other DAG of the file loads.
    """
    for path, challenge, _ in read_challenge_files():
        if challenge is None:
            continue  # dags/config_errors.py shows it
        instants = phase_instants(challenge).get(phase)
        if instants is None:
            continue
        try:
            build(challenge, str(path), instants)
        except Exception as exc:
            the_id = dag_id(challenge.id, phase)
            log.exception("cannot build %s from %s", the_id, path.name)
            _forget_partial_dag(the_id)
            reason = "".join(traceback.format_exception_only(exc)).strip()
            failing_dag(
                the_id,
                f"### {the_id} could not be built\n\nFrom `{path.name}`:\n\n```\n{reason}\n```",
                f"{the_id} could not be built from {path.name}: {reason}",
                task_id="report_build_error",
                tags=phase_tags(challenge.id, phase),
            )


def _forget_partial_dag(the_id: str) -> None:
    """Drop a half-built DAG: leaving ``with DAG(...)`` on an error still registers it."""
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    for entry in [e for e in DagContext.autoregistered_dags if e[0].dag_id == the_id]:
        DagContext.autoregistered_dags.discard(entry)


def _dates_md(challenge, phase: str) -> str:
    """The phase's dates in the challenge's zone: the UI itself shows the browser's zone."""
    from mai_ops.challenge.timeline import phase_dates

    lines = phase_dates(challenge, phase)
    if not lines:
        return ""
    return f"\n\nDates ({challenge.timezone}):\n\n" + "\n".join(f"- {line}" for line in lines)


def failing_dag(the_id: str, doc_md: str, reason: str, task_id: str, tags: list[str]):
    """A DAG that never runs on its own and whose one task fails with ``reason``."""

    @dag(
        dag_id=the_id,
        doc_md=doc_md,
        schedule=None,
        catchup=False,
        default_args=DEFAULT_ARGS,
        tags=tags,
    )
    def report():
        @task(task_id=task_id)
        def fail_with_reason():
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(reason)

        fail_with_reason()

    return report()


def phase_tags(challenge_id: str, phase: str) -> list[str]:
    return ["mai-ops", f"challenge:{challenge_id}", f"phase:{phase}"]


def phase_dag(
    challenge: Challenge,
    path: str,
    phase: str,
    doc: str,
    schedule,
    params: dict | None = None,
):
    """The ``@dag`` every phase uses: ``doc`` is the phase file's docstring.

    Every task that fails for good emails the challenge's organizers
    (:func:`mai_ops_airflow.alerts.failure_alert`).
    """
    from mai_ops_airflow.alerts import failure_alert

    return dag(
        dag_id=dag_id(challenge.id, phase),
        description=f"{challenge.title}: {phase.replace('_', ' ')}",
        doc_md=f"{doc.strip()}\n\n#### {challenge.title}: {phase}\n\n"
        f"Challenge file: `{Path(path).name}`. The work is in `mai_ops.tasks`."
        + _dates_md(challenge, phase),
        schedule=schedule,
        start_date=None,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS | failure_alert(challenge),
        params={k: v for k, v in (params or {}).items() if v is not None},
        tags=phase_tags(challenge.id, phase),
    )


def events_schedule(challenge: Challenge, phase: str, instants: list) -> PhaseEvents:
    """Fire at the phase's instants only (an unfixed date gives none); a missed one late,
    within a day (a reminder within a few hours)."""
    late = LATE_REMINDER_GRACE_S if phase == DagPhase.REMINDERS else LATE_PHASE_GRACE_S
    return PhaseEvents(
        event_dates=[pendulum.instance(i) for i in instants],
        restrict_to_events=True,
        presorted=True,
        description=f"{len(instants)} {phase} instant(s) of {challenge.id}",
        grace_s=late,
    )


def frozen_final_set(challenge: Challenge) -> Asset:
    """What the final collection produces and scoring consumes."""
    # Named, not an s3:// URI: an s3 URI makes Airflow import the Amazon provider and
    # boto3 at parse time (+0.5 s per parse). The location travels in `extra`.
    return Asset(
        name=f"{challenge.id}_frozen_final_set",
        extra={"location": f"s3://{challenge.buckets.results}/{FROZEN_MANIFEST}"},
    )


NOT_SENDABLE = "(date not fixed: not sendable)"


def event_param(challenge: Challenge, phase: str) -> Param | None:
    """The form's optional ``event`` select; events without a fixed date say they are not sent."""
    events = [e for e in challenge.timeline if dag_phase_of(e) == phase]
    if not events:
        return None
    return Param(
        None,
        type=["null", "string"],
        enum=[None, *(e.name for e in events)],
        values_display={
            "None": "(by date)",
            **{e.name: e.name if e.date.fixed else f"{e.name} {NOT_SENDABLE}" for e in events},
        },
        description="Run this event instead of the one at the run's date. Empty: the "
        "event at the run's date, or for a manual run the latest one before now. An event "
        "whose date is not fixed yet is never sent.",
    )


def run_info(context) -> tuple[pendulum.DateTime, bool]:
    """The instant a run stands for, and whether a person triggered it."""
    run = context["dag_run"]
    when = context.get("logical_date") or run.run_after
    return when, str(run.run_type).lower().endswith("manual")


def organizer_errors_fail_fast(fn, *args, **kwargs):
    """Run ``fn``; an error a retry cannot fix fails the task at once, with its reason."""
    from airflow.sdk.exceptions import AirflowFailException

    from mai_ops.errors import NeedsOrganizer

    try:
        return fn(*args, **kwargs)
    except NeedsOrganizer as exc:
        raise AirflowFailException(str(exc)) from exc
