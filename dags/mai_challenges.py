"""
### MAI challenge phases

One DAG per phase of every challenge file in `include/challenges/`, each fired by
Airflow's `EventsTimetable` at the exact instants of the challenge timeline (5 pm
Pacific Time unless the event says otherwise, daylight saving included). Scoring
follows the frozen final set (an asset). Dates not fixed yet schedule nothing.

Re-run a phase by clearing its task; trigger a DAG by hand to run its latest event,
or name one in the trigger form (`event`). The work is in `mai_ops.tasks`.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, task

# The core class, not airflow.sdk.EventsTimetable: in Airflow 3.3.2 the SDK one fails
# to serialize when given a description (KeyError '_summary').
from airflow.timetables.events import EventsTimetable

from mai_ops.challenge.config import Challenge, Phase, challenge_files, read_challenge
from mai_ops.challenge.timeline import DagPhase, dag_id, phase_instants

DEFAULT_ARGS = {
    "owner": "mai-organizers",
    "retries": 2,
    "retry_delay": pendulum.duration(minutes=2),
    "execution_timeout": pendulum.duration(minutes=30),
}

SWEEP_MINUTES = 10

PHASE_DOCS = {
    DagPhase.RELEASE_DATA: "Publish the staged data for the release event, with sha256 "
    "manifest and time-limited links, and email every registered team.",
    DagPhase.VALIDATION_SERVER: "Open the validation server and tell every team.",
    DagPhase.VALIDATION_UPLOADS: "Answer each validation upload: intake rules, archive and "
    "model checks, benchmark on the track's device, validation score, reply email. Runs on "
    "every upload notification (asset watcher on the uploads queue) and every "
    f"{SWEEP_MINUTES} minutes as a sweep for anything missed.",
    DagPhase.FINAL_COLLECTION: "Freeze every team's final submission (sha256 manifest) and "
    "send receipts. Produces the frozen final set that triggers scoring.",
    DagPhase.SCORING: "Score the frozen final set, one mapped task per submission. Trigger "
    "by hand with `track` / `team` to re-score a track or one team.",
    DagPhase.PRELIMINARY_RESULTS: "Publish the preliminary results table and email each "
    "team its own results.",
    DagPhase.REMINDERS: "Remind every team of a deadline some days before it.",
    DagPhase.WORKSHOP_NOTICES: "Workshop dates: submission server online, decisions, "
    "camera-ready, workshop day.",
}


def _run_info(context) -> tuple[pendulum.DateTime, bool]:
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


def frozen_final_set(challenge: Challenge) -> Asset:
    # Named, not an s3:// URI: an s3 URI makes Airflow import the Amazon provider and
    # boto3 at parse time (+0.5 s per parse). The location travels in `extra`.
    return Asset(
        name=f"{challenge.id}_frozen_final_set",
        extra={"location": f"s3://{challenge.buckets.results}/frozen/manifest.json"},
    )


def validation_schedule(challenge: Challenge):
    """Every upload notification, or every few minutes, whichever comes first."""
    from airflow.sdk import AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

    sweep = CronTriggerTimetable(f"*/{SWEEP_MINUTES} * * * *", timezone="UTC")
    if not challenge.uploads_queue:
        return sweep
    from mai_ops_airflow.triggers import UploadQueueTrigger

    uploads = Asset(
        name=f"{challenge.id}_submission_uploads",
        extra={"location": f"s3://{challenge.buckets.submissions}"},
        watchers=[
            AssetWatcher(
                name=f"{challenge.id}_uploads_queue",
                trigger=UploadQueueTrigger(queue_name=challenge.uploads_queue),
            )
        ],
    )
    return AssetOrTimeSchedule(timetable=sweep, assets=uploads)


def build_phase_dag(challenge: Challenge, path: str, phase: str, instants: list):
    event_names = [
        e.name
        for e in challenge.timeline
        if {
            DagPhase.RELEASE_DATA: Phase.RELEASE_DATA,
            DagPhase.VALIDATION_SERVER: Phase.VALIDATION_SERVER,
            DagPhase.WORKSHOP_NOTICES: Phase.WORKSHOP_NOTICE,
        }.get(phase)
        == e.phase
    ]
    params = {}
    if phase == DagPhase.FINAL_COLLECTION:
        params["refreeze"] = Param(
            False,
            type="boolean",
            description="Freeze again from the bucket (default: a stored final set is kept).",
        )
    if event_names:
        params["event"] = Param(
            "",
            type="string",
            enum=["", *event_names],
            description="Run this event instead of the one at the run's date (empty: by date).",
        )
    if phase == DagPhase.VALIDATION_UPLOADS:
        schedule = validation_schedule(challenge)
    elif phase == DagPhase.SCORING:
        schedule = [frozen_final_set(challenge)]
        params["track"] = Param(
            "all", type="string", enum=["all", *[t.id for t in challenge.tracks]]
        )
        params["team"] = Param("", type="string", description="Re-score one team (empty: all).")
        params["rescore"] = Param(
            False,
            type="boolean",
            description="Measure again even submissions already scored from the same bytes.",
        )

    else:
        schedule = EventsTimetable(
            event_dates=[pendulum.instance(i) for i in instants],
            restrict_to_events=True,
            presorted=True,
            description=f"{len(instants)} {phase} instant(s) of {challenge.id}",
        )

    @dag(
        dag_id=dag_id(challenge.id, phase),
        description=f"{challenge.title}: {phase.replace('_', ' ')}",
        doc_md=f"{__doc__}\n\n#### {challenge.title}: {phase}\n\n{PHASE_DOCS[phase]}\n\n"
        f"Challenge file: `{Path(path).name}`",
        schedule=schedule,
        start_date=None,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        tags=["mai-ops", f"challenge:{challenge.id}", f"phase:{phase}"],
    )
    def phase_dag():
        _wire_phase(challenge, path, phase)

    return phase_dag()


def _wire_phase(challenge: Challenge, path: str, phase: str) -> None:
    from airflow.sdk import get_current_context

    if phase == DagPhase.RELEASE_DATA:

        @task
        def publish_release_and_notify(params=None):
            from mai_ops import tasks

            when, manual = _run_info(get_current_context())
            return organizer_errors_fail_fast(
                tasks.release_data, path, when, params.get("event") or None, manual
            )

        publish_release_and_notify()

    elif phase in (DagPhase.VALIDATION_SERVER, DagPhase.WORKSHOP_NOTICES):

        @task(task_id=f"announce_{phase}")
        def announce(params=None):
            from mai_ops import tasks

            when, manual = _run_info(get_current_context())
            return organizer_errors_fail_fast(
                tasks.announce_events, path, phase, when, params.get("event") or None, manual
            )

        announce()

    elif phase == DagPhase.REMINDERS:

        @task
        def send_reminders():
            from mai_ops import tasks

            when, manual = _run_info(get_current_context())
            return organizer_errors_fail_fast(tasks.send_reminders, path, when, manual)

        send_reminders()

    elif phase == DagPhase.FINAL_COLLECTION:

        @task(outlets=[frozen_final_set(challenge)])
        def freeze_final_set():
            from mai_ops import tasks

            return organizer_errors_fail_fast(
                tasks.freeze_final, path, bool(get_current_context()["params"].get("refreeze"))
            )

        @task
        def send_receipts():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.send_receipts, path)

        freeze_final_set() >> send_receipts()

    elif phase == DagPhase.VALIDATION_UPLOADS:
        from mai_ops.devices.pools import pool_name

        for track in [*challenge.tracks, None]:
            lane = track.id if track else "_unknown"

            @task(task_id=f"collect_{track.id if track else 'unrouted'}")
            def collect_uploads(triggering_asset_events=None, lane=lane):
                from mai_ops import tasks

                events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
                found = organizer_errors_fail_fast(tasks.collect_uploads, path, events)
                return found.get(lane, [])

            # A track's uploads run in its device's pool: one benchmark per device.
            @task(
                task_id=f"validate_{track.id if track else 'unrouted'}",
                # Room for a conversion (15 min) and three adb attempts (3 x 10 min).
                execution_timeout=pendulum.duration(minutes=60),
                **({"pool": pool_name(challenge.device(track.device))} if track else {}),
            )
            def validate_upload(key):
                from mai_ops import tasks

                return organizer_errors_fail_fast(tasks.validate_upload, path, key)

            validate_upload.expand(key=collect_uploads())

    elif phase == DagPhase.SCORING:
        from mai_ops.devices.pools import pool_name

        @task(multiple_outputs=False, trigger_rule="none_failed")
        def summarize_scores(*per_track, params=None):
            # Index each lazy XCom sequence by its length: iterating it probes one past
            # the end and logs a spurious "XCom not found".
            records = [seq[i] for seq in per_track for i in range(len(seq))]
            if params.get("team") and not records:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"team {params['team']!r} has no frozen submission")
            return {
                "scored": len(records),
                "failed": [
                    f"{r['track']}/{r['team']}: {r['errors'][0]['code']}"
                    for r in records
                    if r["status"] != "ok"
                ],
            }

        scored = []
        for track in challenge.tracks:

            @task(task_id=f"list_{track.id}")
            def list_frozen_submissions(params=None, track_id=track.id):
                from mai_ops import tasks

                wanted = params.get("track") or "all"
                if wanted not in ("all", track_id):
                    return []
                return organizer_errors_fail_fast(
                    tasks.list_frozen, path, track_id, params.get("team") or None
                )

            # One pool per device, one slot each: two benchmarks never share a device.
            @task(
                task_id=f"score_{track.id}",
                pool=pool_name(challenge.device(track.device)),
                execution_timeout=pendulum.duration(minutes=60),
            )
            def score_submission(entry):
                from mai_ops import tasks

                force = bool(get_current_context()["params"].get("rescore"))
                return organizer_errors_fail_fast(tasks.score_submission, path, entry, force)

            scored.append(score_submission.expand(entry=list_frozen_submissions()))
        summarize_scores(*scored)

    elif phase == DagPhase.PRELIMINARY_RESULTS:

        @task
        def publish_preliminary_results():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.publish_preliminary_results, path)

        publish_preliminary_results()


def build_config_error_dag(path: Path, problems: list) -> None:
    """A broken challenge file shows in the UI as a DAG that fails with the reasons."""
    text = "\n".join(f"- {p}" for p in problems)

    @dag(
        dag_id=f"{path.stem}__config_error",
        doc_md=f"### `{path.name}` cannot be loaded\n\n{text}",
        schedule=None,
        catchup=False,
        default_args=DEFAULT_ARGS,
        tags=["mai-ops", "config-error"],
    )
    def config_error():
        @task
        def report_config_errors():
            raise ValueError(f"{path.name} has errors:\n{text}")

        report_config_errors()

    config_error()


for _path in challenge_files():
    _challenge, _problems = read_challenge(_path)
    _errors = [p for p in _problems if p.severity == "error"]
    if _challenge is None or _errors:
        build_config_error_dag(_path, _errors)
        continue
    for _phase, _instants in phase_instants(_challenge).items():
        build_phase_dag(_challenge, str(_path), _phase, _instants)
