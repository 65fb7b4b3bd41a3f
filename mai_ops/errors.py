"""Errors that waiting cannot fix.

A task that fails on a network hiccup should retry; a task that fails because the
config is wrong or the data was never staged should fail at once, with the reason,
so the organizer fixes it and clears the task. The DAGs turn these into Airflow's
fail-without-retry exception.
"""


class NeedsOrganizer(Exception):
    """Something an organizer must fix before a re-run can succeed."""
