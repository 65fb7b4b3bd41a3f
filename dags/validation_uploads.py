"""
### Validation uploads

Answer each validation upload: intake rules, archive and model checks, benchmark on the
track's device, validation score, reply email. Runs on every upload notification (an
asset watcher on the uploads queue) and every 10 minutes as a sweep for anything
missed. One mapped task per team with new uploads, named `<team>/<file>` (a team's
uploads are answered in order: its quota counts the earlier ones). Teams are answered
side by side, as many at once as the `mai_validation` pool has slots; only the benchmark
waits for the track's device, one at a time. The uploads of a track whose device declares
a `host` are answered by that machine's workers, in `validate_uploads_on_<host>`.

Final-phase uploads (`<track>/final/<team>/`) are answered too, with a pre-check: the
intake rules that apply (no quota, no duplicate refusal: a team uploads its final as
often as it likes until the deadline), archive and model checks, then an email saying
it was received (server time, sha256), how the pre-check went, and that the last upload
received by the deadline is frozen and scored whatever its pre-check says. No benchmark,
no score, no effect on the validation quota; final collection and scoring are unchanged.

Green: answered. Skipped, labelled `<team>/<file>: <code>`: the participant's upload
failed a rule or a check; they got the reason by email. Red: a failure on our side
(device offline, a crash): fix it and clear the task; the team hears the new outcome.
A failed task is first retried 30-60 s later (not minutes), then a little longer each
time, so a run never holds the next upload's answer for long.

`sweep_stuck_uploads` runs first: an upload whose processing started more than two
hours ago and never finished (every try cut by its time limit, or its worker died) gets
a failed record (`processing_stuck`) and its team the reply; the task then fails red,
at once, so the organizers get its failure alert naming the uploads. Nothing else is
held up by it.

`publish_validation_leaderboard` then puts each team's best verified upload per track
on the public validation leaderboard (`leaderboard/validation/`), after every run that
answered an upload.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    DEVICE_TASK_TIMEOUT,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
)
from mai_ops_airflow.outcomes import settle_uploads, uploads_label

PHASE = DagPhase.VALIDATION_UPLOADS
SWEEP_MINUTES = 10
RETRY_SOON = dt.timedelta(seconds=30)


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
    from mai_ops.devices.pools import DEFAULT_QUEUE, VALIDATION_POOL, challenge_queues

    @phase_dag(challenge, path, PHASE, __doc__, validation_schedule(challenge))
    def validation_uploads():
        # First, any upload whose processing started long ago and never finished gets a
        # failed record with its reason (its team is answered); the task then fails at
        # once, so its failure alert tells the organizers. The collection runs anyway
        # and takes no stuck upload again.
        @task
        def sweep_stuck_uploads():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.sweep_stuck_uploads, path)

        @task(trigger_rule="all_done")
        def collect_uploads(triggering_asset_events=None):
            from mai_ops import tasks

            events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
            return organizer_errors_fail_fast(tasks.collect_uploads, path, events)

        @task(
            pool=VALIDATION_POOL,
            execution_timeout=DEVICE_TASK_TIMEOUT,
            retry_delay=RETRY_SOON,
            map_index_template="{{ uploads }}",
        )
        def validate_uploads(keys):
            get_current_context()["uploads"] = uploads_label(keys)
            from mai_ops import tasks

            results = organizer_errors_fail_fast(tasks.validate_uploads, path, keys)
            return settle_uploads(results, "uploads")

        # all_done: the uploads answered are on the board even when another failed red.
        @task(trigger_rule="all_done")
        def publish_validation_leaderboard(batches):
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.publish_validation_leaderboard, path, batches)

        batches = collect_uploads()
        sweep_stuck_uploads() >> batches
        hosts = challenge_queues(challenge)
        if not hosts:
            validate_uploads.expand(keys=batches) >> publish_validation_leaderboard(batches)
            return

        # The uploads of a track whose device sits on a host are answered by that host's
        # workers (its benchmark needs the device); the others by any worker.
        @task
        def uploads_for(batches, queue):
            from mai_ops import tasks

            return tasks.uploads_for_queue(path, batches, queue)

        answered = [validate_uploads.expand(keys=uploads_for(batches, DEFAULT_QUEUE))]
        for host, queue in hosts.items():
            name = host.replace(".", "_")
            picked = uploads_for.override(task_id=f"uploads_for_{name}")(batches, queue)
            on_host = validate_uploads.override(task_id=f"validate_uploads_on_{name}", queue=queue)
            answered.append(on_host.expand(keys=picked))
        answered >> publish_validation_leaderboard(batches)

    return validation_uploads()


for_each_challenge(PHASE, build)
