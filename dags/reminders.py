"""
### Reminders

Remind every registered team of a deadline some days before it (`remind_days_before`
in the challenge file). Fires at each reminder's instant; trigger by hand to send the
latest reminders due before now (each team gets each reminder once).
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    events_schedule,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
    run_info,
)

PHASE = DagPhase.REMINDERS


def build(challenge, path, instants):
    @phase_dag(challenge, path, PHASE, __doc__, events_schedule(challenge, PHASE, instants))
    def reminders():
        @task
        def send_reminders():
            from mai_ops import tasks

            when, manual = run_info(get_current_context())
            return organizer_errors_fail_fast(tasks.send_reminders, path, when, manual)

        send_reminders()

    return reminders()


for_each_challenge(PHASE, build)
