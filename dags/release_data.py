"""
### Release data

Publish the staged data of a `release_data` event (`data/<event>/` in the organizers'
bucket) to the public bucket, with a sha256 manifest and time-limited links, and email
every registered team. Fires at the event's instant (5 pm in the challenge's time zone
unless the event says otherwise). Trigger by hand to run the latest event, or pick one
in the form (`event`); an event whose date is not fixed yet is never sent.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    event_param,
    events_schedule,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
    run_info,
)

PHASE = DagPhase.RELEASE_DATA


def build(challenge, path, instants):
    @phase_dag(
        challenge,
        path,
        PHASE,
        __doc__,
        schedule=events_schedule(challenge, PHASE, instants),
        params={"event": event_param(challenge, PHASE)},
    )
    def release_data():
        @task
        def publish_release_and_notify(params=None):
            from mai_ops import tasks

            when, manual = run_info(get_current_context())
            return organizer_errors_fail_fast(
                tasks.release_data, path, when, params.get("event"), manual
            )

        publish_release_and_notify()

    return release_data()


for_each_challenge(PHASE, build)
