"""How long a task may run, and what the Celery broker derives from it.

The DAG header turns these into ``execution_timeout``; the Celery stack and the compose
file set the broker's visibility timeout from them. Kept here, free of Airflow, so the
launcher and the tests read the same numbers as the DAGs.
"""

from __future__ import annotations

import os

# Before the first retry of a failed try (doubling for each further one, at most 5 min),
# unless MAI_OPS_RETRY_DELAY_S says otherwise.
RETRY_DELAY_S = 15
# Every task by default: checks, fidelity, freeze, emails.
TASK_TIMEOUT_S = 30 * 60
# Room for a conversion (15 min) and three adb attempts (3 x 10 min).
DEVICE_TASK_TIMEOUT_S = 60 * 60
# An upload whose processing started this long ago and still has no record is stuck: its
# task was cut by its timeout on every try, or its worker died. Two whole device-task
# timeouts: a try that is still running is never taken for a stuck one.
STUCK_AFTER_S = 2 * DEVICE_TASK_TIMEOUT_S
# A phase whose instant passed with no run (the scheduler was down, or the challenge file
# changed or arrived just then) still starts, late, within this long; an older missed
# instant is skipped, so a challenge file added mid-challenge does not replay its past.
LATE_PHASE_GRACE_S = 24 * 3600
# A reminder ("the deadline is in 3 days") is worth sending late only by a few hours.
LATE_REMINDER_GRACE_S = 6 * 3600
# What a task may take beyond its timeout before its message is acknowledged: starting
# its process, the timeout's own kill and the final state report.
ACK_MARGIN_S = 30 * 60


def visibility_timeout_s() -> int:
    """Seconds a delivered, unacknowledged Celery message waits before Redis hands it out again.

    Airflow acknowledges a task's message when the task ends (``task_acks_late``), so
    the timeout must outlast the longest task, or a running benchmark would be given to
    a second worker and measured twice. Celery's default (24 h) is far too long the
    other way: a task lost with its worker would wait a day to be delivered again. A
    task that waits for a person (the approval) defers and frees its message, so the
    longest ``execution_timeout`` plus a margin is the bound.
    """
    return max(TASK_TIMEOUT_S, DEVICE_TASK_TIMEOUT_S) + ACK_MARGIN_S


def retry_delay_s() -> int:
    """Seconds a failed task waits before its first retry: ``MAI_OPS_RETRY_DELAY_S`` or 15 s.

    Read where the DAGs are parsed (the DAG processor), so a deployment sets it in the
    environment of its Airflow components; the fault drills shorten it to see a lost
    task's retry within seconds.
    """
    value = os.environ.get("MAI_OPS_RETRY_DELAY_S", "").strip()
    return int(value) if value else RETRY_DELAY_S
