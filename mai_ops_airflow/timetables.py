"""The phases' schedule: fixed instants, and a missed one still runs, late.

Airflow's ``EventsTimetable`` without catchup looks for the next instant from *now*
whenever it recomputes a DAG's next run: after each run, but also when the DAG is
serialized again (its challenge file changed) or first appears. An instant that passed
in between, such as a final deadline while the scheduler was restarting, then never
gets its run and the freeze never happens. :class:`PhaseEvents` gives the latest such
missed instant its run, at once, when it is at most ``grace_s`` old; older ones stay
skipped, so a challenge file added mid-challenge does not replay its past. Registered
with Airflow by :mod:`mai_ops_airflow.plugin` (custom timetables must be).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.events import EventsTimetable

from mai_ops.timeouts import LATE_PHASE_GRACE_S


class PhaseEvents(EventsTimetable):
    """Runs at each listed instant; the latest instant missed within ``grace_s`` runs late."""

    def __init__(self, *args, grace_s: int = LATE_PHASE_GRACE_S, **kwargs):
        super().__init__(*args, **kwargs)
        self.grace_s = grace_s

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if not restriction.catchup:
            missed = self.latest_missed(last_automated_data_interval, pendulum.now("UTC"))
            if missed is not None and (restriction.latest is None or missed <= restriction.latest):
                return DagRunInfo.exact(missed)
        return super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=restriction
        )

    def latest_missed(self, last: DataInterval | None, now: dt.datetime):
        """The latest instant in (last run, now] at most ``grace_s`` old, or None."""
        floor = now - dt.timedelta(seconds=self.grace_s)
        past = [e for e in self.event_dates if floor <= e <= now]
        if last is not None:
            past = [e for e in past if e > last.end]
        return past[-1] if past else None

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "grace_s": self.grace_s}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> PhaseEvents:
        timetable = cls(
            event_dates=[pendulum.DateTime.fromisoformat(x) for x in data["event_dates"]],
            restrict_to_events=data["restrict_to_events"],
            presorted=True,
            description=data["description"],
            grace_s=data.get("grace_s", LATE_PHASE_GRACE_S),
        )
        timetable._summary = data["_summary"]
        return timetable
