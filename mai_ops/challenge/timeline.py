"""From a challenge's timeline to the instants each phase DAG fires at.

One place decides which DAG an event triggers and when, so the DAG factory, the
``mai-ops timeline`` command and the demo can never disagree about it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from mai_ops.challenge.config import Challenge, Event, Phase
from mai_ops.challenge.dates import local_instant, utc_iso


class DagPhase:
    """Names of the per-phase DAGs; a DAG id is ``<challenge id>__<phase>``."""

    RELEASE_DATA = "release_data"
    VALIDATION_SERVER = "validation_server"
    VALIDATION_UPLOADS = "validation_uploads"
    FINAL_COLLECTION = "final_collection"
    SCORING = "scoring"
    PRELIMINARY_RESULTS = "preliminary_results"
    REMINDERS = "reminders"
    WORKSHOP_NOTICES = "workshop_notices"

    ALL = (
        RELEASE_DATA,
        VALIDATION_SERVER,
        VALIDATION_UPLOADS,
        FINAL_COLLECTION,
        SCORING,
        PRELIMINARY_RESULTS,
        REMINDERS,
        WORKSHOP_NOTICES,
    )


_EVENT_PHASE_TO_DAG = {
    Phase.RELEASE_DATA: DagPhase.RELEASE_DATA,
    Phase.VALIDATION_SERVER: DagPhase.VALIDATION_SERVER,
    Phase.FINAL_COLLECTION: DagPhase.FINAL_COLLECTION,
    Phase.PRELIMINARY_RESULTS: DagPhase.PRELIMINARY_RESULTS,
    Phase.WORKSHOP_NOTICE: DagPhase.WORKSHOP_NOTICES,
}


def dag_phase_of(event: Event) -> str | None:
    """The DAG phase an event sets off, None for an event that only informs."""
    return _EVENT_PHASE_TO_DAG.get(event.phase)


def dag_id(challenge_id: str, phase: str) -> str:
    return f"{challenge_id}__{phase}"


@dataclass(frozen=True)
class Reminder:
    event: str
    days_before: int
    instant: dt.datetime

    @property
    def key(self) -> str:
        return f"{self.event}-{self.days_before}d"


@dataclass(frozen=True)
class TimelineEntry:
    event: Event
    local: dt.datetime | None
    dag_phase: str | None
    reminders: list[Reminder] = field(default_factory=list)

    @property
    def utc(self) -> dt.datetime | None:
        return self.local.astimezone(dt.UTC) if self.local else None


def event_instant(challenge: Challenge, event: Event) -> dt.datetime | None:
    """The aware local instant of ``event``, None while its date is not fixed."""
    return local_instant(event.date, event.time or challenge.deadline_time, challenge.timezone)


def timeline(challenge: Challenge) -> list[TimelineEntry]:
    """Every event in file order with its instant, its DAG and its reminders."""
    entries = []
    for event in challenge.timeline:
        local = event_instant(challenge, event)
        reminders = [
            Reminder(event.name, days, local - dt.timedelta(days=days))
            for days in sorted(set(event.remind_days_before), reverse=True)
            if local is not None
        ]
        entries.append(TimelineEntry(event, local, dag_phase_of(event), reminders))
    return entries


def phase_instants(challenge: Challenge) -> dict[str, list[dt.datetime]]:
    """UTC instants per DAG phase, sorted and without duplicates (for EventsTimetable).

    A phase whose events are all unfixed still gets an entry, with no instants: its
    DAG exists, shows in the UI and schedules nothing until the date is set.
    """
    out: dict[str, set[dt.datetime]] = {}
    for entry in timeline(challenge):
        if entry.dag_phase:
            bucket = out.setdefault(entry.dag_phase, set())
            if entry.utc:
                bucket.add(entry.utc)
        if entry.event.remind_days_before:
            bucket = out.setdefault(DagPhase.REMINDERS, set())
            bucket.update(r.instant.astimezone(dt.UTC) for r in entry.reminders)
    if DagPhase.FINAL_COLLECTION in out:
        # Scoring follows the frozen final set (an asset), not a date of its own.
        out.setdefault(DagPhase.SCORING, set())
    if DagPhase.VALIDATION_SERVER in out and challenge.tracks:
        # Each upload is an event (the queue), with a periodic sweep as the safety net.
        out.setdefault(DagPhase.VALIDATION_UPLOADS, set())
    return {phase: sorted(out[phase]) for phase in DagPhase.ALL if phase in out}


def events_at(challenge: Challenge, phase: str, instant: dt.datetime) -> list[Event]:
    """The events of ``phase`` that fire at ``instant`` (a DAG run's logical date)."""
    target = instant.astimezone(dt.UTC)
    found = []
    for entry in timeline(challenge):
        if entry.dag_phase == phase and entry.utc == target:
            found.append(entry.event)
    return found


def all_reminders(challenge: Challenge) -> list[Reminder]:
    return [r for entry in timeline(challenge) for r in entry.reminders]


def reminders_at(challenge: Challenge, instant: dt.datetime) -> list[Reminder]:
    target = instant.astimezone(dt.UTC)
    return [r for r in all_reminders(challenge) if r.instant.astimezone(dt.UTC) == target]


def timeline_rows(challenge: Challenge) -> list[dict]:
    """The rows of ``mai-ops timeline --json``."""
    rows = []
    for entry in timeline(challenge):
        rows.append(
            {
                "name": entry.event.name,
                "title": entry.event.title,
                "group": entry.event.group,
                "date": entry.event.date.text(),
                "fixed": entry.event.date.fixed,
                "local": entry.local.isoformat() if entry.local else None,
                "utc": utc_iso(entry.local),
                "dag_id": dag_id(challenge.id, entry.dag_phase) if entry.dag_phase else None,
                "reminders": [
                    {
                        "days_before": r.days_before,
                        "utc": utc_iso(r.instant),
                        "dag_id": dag_id(challenge.id, DagPhase.REMINDERS),
                    }
                    for r in entry.reminders
                ],
            }
        )
    return rows


def phase_dates(challenge: Challenge, phase: str) -> list[str]:
    """The dates a phase's DAG fires, as an organizer reads them in its docs.

    In the challenge's own zone first (the UI shows the browser's zone), then UTC; an
    event whose date is not fixed yet says so.
    """

    def both(instant: dt.datetime) -> str:
        utc = instant.astimezone(dt.UTC)
        return f"{instant:%Y-%m-%d %H:%M %Z} ({utc:%Y-%m-%d %H:%M} UTC)"

    lines = []
    for entry in timeline(challenge):
        if entry.dag_phase == phase:
            when = both(entry.local) if entry.local else f"{entry.event.date.text()}, not fixed"
            lines.append(f"{entry.event.name}: {when}")
        if phase == DagPhase.REMINDERS:
            lines += [
                f"{r.days_before} d before {r.event}: {both(r.instant)}" for r in entry.reminders
            ]
    return lines
