"""
### Validation uploads

Answer each validation upload: intake rules, archive and model checks, benchmark on the
track's device, validation score, reply email. Runs on every upload notification (an
asset watcher on the uploads queue) and every 10 minutes as a sweep for anything
missed. Per track, one mapped task per upload, named `<team>/<file>`, in the track's
device pool.

Final-phase uploads (`<track>/final/<team>/`) are answered too, with a pre-check: the
intake rules that apply (no quota, no duplicate refusal: a team uploads its final as
often as it likes until the deadline), archive and model checks, then an email saying
it was received (server time, sha256), how the pre-check went, and that the last upload
received by the deadline is frozen and scored whatever its pre-check says. No benchmark,
no score, no effect on the validation quota; final collection and scoring are unchanged.

Green: answered. Skipped, labelled `<team>/<file>: <code>`: the participant's upload
failed a rule or a check; they got the reason by email. Red: a failure on our side
(device offline, a crash): fix it and clear the task; the team hears the new outcome.
"""

from __future__ import annotations

from airflow.sdk import Asset, get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    DEVICE_TASK_TIMEOUT,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
)
from mai_ops_airflow.outcomes import settle, upload_label

PHASE = DagPhase.VALIDATION_UPLOADS
SWEEP_MINUTES = 10


def validation_schedule(challenge):
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


def build(challenge, path, instants):
    from mai_ops.devices.pools import pool_name

    @phase_dag(challenge, path, PHASE, __doc__, validation_schedule(challenge))
    def validation_uploads():
        for track in [*challenge.tracks, None]:
            lane = track.id if track else "_unknown"
            name = track.id if track else "unrouted"

            @task(task_id=f"collect_{name}")
            def collect_uploads(triggering_asset_events=None, lane=lane):
                from mai_ops import tasks

                events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
                found = organizer_errors_fail_fast(tasks.collect_uploads, path, events)
                return found.get(lane, [])

            # A track's uploads run in its device's pool: one benchmark per device.
            @task(
                task_id=f"validate_{name}",
                execution_timeout=DEVICE_TASK_TIMEOUT,
                map_index_template="{{ upload }}",
                **({"pool": pool_name(challenge.device(track.device))} if track else {}),
            )
            def validate_upload(key):
                get_current_context()["upload"] = upload_label(key)
                from mai_ops import tasks

                result = organizer_errors_fail_fast(tasks.validate_upload, path, key)
                return settle(result, "upload")

            validate_upload.expand(key=collect_uploads())

    return validation_uploads()


for_each_challenge(PHASE, build)
