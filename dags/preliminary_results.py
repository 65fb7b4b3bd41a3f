"""
### Preliminary results

Publish the preliminary results table (JSON and CSV, from the stored scores) to the
public bucket and email each team its own rows. Fires at the `preliminary_results`
event; trigger by hand to publish again (each team is emailed once).
"""

from __future__ import annotations

from airflow.sdk import task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    events_schedule,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
)

PHASE = DagPhase.PRELIMINARY_RESULTS


def build(challenge, path, instants):
    @phase_dag(challenge, path, PHASE, __doc__, events_schedule(challenge, PHASE, instants))
    def preliminary_results():
        @task
        def publish_preliminary_results():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.publish_preliminary_results, path)

        publish_preliminary_results()

    return preliminary_results()


for_each_challenge(PHASE, build)
