"""
### Announcements

Email every registered team that a phase has begun: the validation server is open
(`validation_server` events), or a workshop date has come (`workshop_notice` events:
submission server online, decisions, camera-ready, workshop day). Fires at each event's
instant; trigger by hand to re-run the latest event, or pick one in the form (`event`).
An event whose date is not fixed yet (`June XX`) is never sent.
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


def build_for(phase: str):
    def build(challenge, path, instants):
        @phase_dag(
            challenge,
            path,
            phase,
            __doc__,
            schedule=events_schedule(challenge, phase, instants),
            params={"event": event_param(challenge, phase)},
        )
        def announcements():
            @task(task_id=f"announce_{phase}")
            def announce(params=None):
                from mai_ops import tasks

                when, manual = run_info(get_current_context())
                return organizer_errors_fail_fast(
                    tasks.announce_events, path, phase, when, params.get("event"), manual
                )

            announce()

        return announcements()

    return build


for _phase in (DagPhase.VALIDATION_SERVER, DagPhase.WORKSHOP_NOTICES):
    for_each_challenge(_phase, build_for(_phase))
