"""
### Scoring

Score the frozen final set. Per track, `list_<track>` checks the hidden test data and
lists the frozen submissions; then each submission, named by its team, goes through
four tasks of the group `score_<track>`, each able to fail and be cleared on its own:

- `prepare`: sha256 against the manifest, unpack, convert, checks;
- `benchmark`: the runtime on the track's device (in the device's pool, behind its
  lock: one benchmark measures per device at a time, sent before the other stages; on
  the workers of the device's `host` when it declares one);
- `fidelity`: the frozen model on the hidden test set, and the team's own results
  against its output (`results_not_reproduced`);
- `score`: the record, with the track's formula.

`rank_results` ranks every track, validates the table with Great Expectations and
stores it; a failed validation fails the run and nothing is published.

Green: done. Skipped, labelled `<team>: <code>`: the participant's model failed;
recorded, nothing to do. Red: a failure on our side (device offline, a crash,
storage): fix it and clear that task; its stored neighbours are kept, so clearing a
benchmark never recomputes fidelity.

Runs when the final set is frozen. Trigger by hand to re-score: `track` / `team`
narrow what is measured, `remeasure` measures again, `constants` tries other formula
constants (stored only with `apply`); the log of `rank_results` shows every team whose
rank moved.
"""

from __future__ import annotations

from airflow.sdk import Param, get_current_context, task, task_group

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
# The device is the run's critical path: its benchmarks are sent first, then the checks
# that feed it and the fidelity runs, taken in team order, then the light score.
PRIORITY = {"benchmark": 4, "prepare": 3, "fidelity": 3, "score": 1}


def params(challenge) -> dict:
    tracks = [t.id for t in challenge.tracks]
    return {
        "track": Param(
            "all",
            type=["null", "string"],
            enum=[None, "all", *tracks],
            values_display={"None": "(all tracks)", "all": "all tracks"},
            description="Measure one track (all or empty: every track). Every track is "
            "ranked again from the stored records.",
        ),
        "team": Param(
            None,
            type=["null", "string"],
            description="Measure one team, by its team id (empty: every team).",
        ),
        "remeasure": Param(
            False,
            type="boolean",
            description="Run the checks, benchmark and fidelity again even where a result "
            "of the same bytes is stored (off: stored measurements are kept).",
        ),
        "constants": Param(
            {},
            type=["null", "object"],
            description='Other score constants to try, e.g. {"C": 2.0}: applied to the '
            "chosen track, or to every track that has them (empty: the config's).",
        ),
        "apply": Param(
            False,
            type="boolean",
            description="Store the ranking computed with other constants as the results "
            "(off: it is shown and kept as this run's, the results stay). A run without "
            "other constants always stores its ranking.",
        ),
    }


def build(challenge, path, instants):
    from mai_ops.devices.pools import VALIDATION_POOL, device_queue, pool_name

    @phase_dag(challenge, path, PHASE, __doc__, [frozen_final_set(challenge)], params(challenge))
    def scoring():
        def stage_task(stage: str, **options):
            """One stage of one team's submission; the grid shows the team's name."""

            @task(
                task_id=stage,
                map_index_template="{{ team }}",
                priority_weight=PRIORITY[stage],
                weight_rule="absolute",
                **options,
            )
            def run(entry):
                context = get_current_context()
                context["team"] = entry["team"]
                from mai_ops import tasks

                force = bool(context["params"].get("remeasure"))
                record = organizer_errors_fail_fast(tasks.score_stage, path, entry, stage, force)
                return settle(record, "team")

            return run

        def stages_of(track):
            """The group of one track: four tasks per frozen submission, by team."""
            device = challenge.device(track.device)
            # On the workers of the device's host, when it names one (any worker if not).
            on_host = {"queue": device_queue(device.host)} if device.host else {}

            @task_group(group_id=f"score_{track.id}")
            def score_submission(entry):
                prepared = stage_task("prepare", pool=VALIDATION_POOL)(entry)
                # The device's pool; its lock lets one benchmark measure at a time.
                benchmark = stage_task(
                    "benchmark",
                    pool=pool_name(device),
                    execution_timeout=DEVICE_TASK_TIMEOUT,
                    **on_host,
                )(entry)
                fidelity = stage_task("fidelity", pool=VALIDATION_POOL)(entry)
                # none_failed: a participant's failure upstream (skipped) still gets its
                # record; a failure of ours (red) waits for the organizer's clear.
                scored = stage_task("score", trigger_rule="none_failed")(entry)
                prepared >> [benchmark, fidelity] >> scored

            return score_submission

        # After every track's group: a ranking needs every stored record.
        @task(trigger_rule="none_failed")
        def rank_results(params=None, run_id=None):
            from mai_ops import tasks

            return organizer_errors_fail_fast(
                tasks.rank_results,
                path,
                run_id,
                track=params.get("track"),
                constants=params.get("constants") or None,
                apply=bool(params.get("apply")),
            )

        ranked = rank_results()
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

            stages_of(track).expand(entry=list_frozen_submissions()) >> ranked

    return scoring()


for_each_challenge(PHASE, build)
