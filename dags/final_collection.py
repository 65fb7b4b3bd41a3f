"""
### Final collection

Freeze every team's final submission (its latest upload received by the deadline,
copied with its sha256 into `frozen/` and listed in a manifest) and send each team a
receipt. Produces the frozen final set, which triggers scoring. Fires at the final
deadline.

By hand: before the deadline a freeze is refused, unless the form's `early_freeze` is
set; then the receipts say the organizers froze the set early, and the scheduled freeze
at the deadline still runs and picks up later uploads. `refreeze` freezes again from the
bucket (by default a stored final set is kept).
"""

from __future__ import annotations

from airflow.sdk import Param, get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    events_schedule,
    for_each_challenge,
    frozen_final_set,
    organizer_errors_fail_fast,
    phase_dag,
    run_info,
)

PHASE = DagPhase.FINAL_COLLECTION

PARAMS = {
    "refreeze": Param(
        False,
        type="boolean",
        description="Freeze again from the bucket (off: a stored final set is kept).",
    ),
    "early_freeze": Param(
        False,
        type="boolean",
        description="Allow a freeze before the final deadline (off: a manual run before "
        "the deadline is refused). The receipts then say the organizers froze the set "
        "early; the scheduled freeze at the deadline still picks up later uploads.",
    ),
}


def build(challenge, path, instants):
    @phase_dag(
        challenge,
        path,
        PHASE,
        __doc__,
        schedule=events_schedule(challenge, PHASE, instants),
        params=PARAMS,
    )
    def final_collection():
        @task(outlets=[frozen_final_set(challenge)])
        def freeze_final_set(params=None):
            from mai_ops import tasks

            _, manual = run_info(get_current_context())
            return organizer_errors_fail_fast(
                tasks.freeze_final,
                path,
                bool(params.get("refreeze")),
                manual=manual,
                early=bool(params.get("early_freeze")),
            )

        @task
        def send_receipts():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.send_receipts, path)

        freeze_final_set() >> send_receipts()

    return final_collection()


for_each_challenge(PHASE, build)
