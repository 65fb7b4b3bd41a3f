"""
### Scoring

Score the frozen final set: per track, one mapped task per frozen submission, named by
its team, in the track's device pool (one benchmark per device at a time). Each
verifies the frozen copy's sha256 and benchmarks its model on the device.

Green: scored. Skipped, labelled `<team>: <code>`: the participant's model failed;
recorded, nothing to do. Red: a failure on our side (device offline, a crash, storage):
fix it and clear the task. `summarize_scores` lists every failure, and fails the run
when a scoring task did.

Runs when the final set is frozen; trigger by hand with `track` / `team` to re-score a
track or one team, `rescore` to measure again submissions already scored.
"""

from __future__ import annotations

from airflow.sdk import Param, get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    DEVICE_TASK_TIMEOUT,
    for_each_challenge,
    frozen_final_set,
    organizer_errors_fail_fast,
    phase_dag,
)
from mai_ops_airflow.outcomes import settle

PHASE = DagPhase.SCORING


def params(challenge) -> dict:
    tracks = [t.id for t in challenge.tracks]
    return {
        "track": Param(
            "all",
            type=["null", "string"],
            enum=[None, "all", *tracks],
            values_display={"None": "(all tracks)", "all": "all tracks"},
            description="Score one track (all or empty: every track).",
        ),
        "team": Param(
            None,
            type=["null", "string"],
            description="Score one team, by its team id (empty: every team).",
        ),
        "rescore": Param(
            False,
            type="boolean",
            description="Measure again even submissions already scored from the same bytes "
            "(off: a stored result of the same bytes is kept).",
        ),
    }


def build(challenge, path, instants):
    from mai_ops.devices.pools import pool_name

    @phase_dag(challenge, path, PHASE, __doc__, [frozen_final_set(challenge)], params(challenge))
    def scoring():
        # none_failed: skipped (participants' failures) are fine; a red task fails the run.
        @task(trigger_rule="none_failed")
        def summarize_scores(*listed, params=None):
            from mai_ops import tasks

            entries = [entry for per_track in listed for entry in per_track]
            if params.get("team") and not entries:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"team {params['team']!r} has no frozen submission")
            return organizer_errors_fail_fast(tasks.summarize_scores, path, entries)

        listed, scored = [], []
        for track in challenge.tracks:

            @task(task_id=f"list_{track.id}")
            def list_frozen_submissions(params=None, track_id=track.id):
                from mai_ops import tasks

                wanted = params.get("track") or "all"
                if wanted not in ("all", track_id):
                    return []
                return organizer_errors_fail_fast(
                    tasks.list_frozen, path, track_id, params.get("team")
                )

            # One pool per device, one slot each: two benchmarks never share a device.
            @task(
                task_id=f"score_{track.id}",
                pool=pool_name(challenge.device(track.device)),
                execution_timeout=DEVICE_TASK_TIMEOUT,
                map_index_template="{{ team }}",
            )
            def score_submission(entry):
                context = get_current_context()
                context["team"] = entry["team"]
                from mai_ops import tasks

                force = bool(context["params"].get("rescore"))
                record = organizer_errors_fail_fast(tasks.score_submission, path, entry, force)
                return settle(record, "team")

            entries = list_frozen_submissions()
            listed.append(entries)
            scored.append(score_submission.expand(entry=entries))
        scored >> summarize_scores(*listed)

    return scoring()


for_each_challenge(PHASE, build)
