"""Date-triggered notices: validation server online, reminders, workshop dates."""

from __future__ import annotations

import datetime as dt

from mai_ops.challenge.config import Challenge, Event
from mai_ops.challenge.participants import Team
from mai_ops.challenge.timeline import Reminder, event_instant
from mai_ops.notify.ledger import Notice


def _when(challenge: Challenge, event: Event) -> str:
    instant = event_instant(challenge, event)
    if instant is None:
        return event.date.text()
    return instant.strftime("%A %d %B %Y, %H:%M %Z") + f" ({instant.astimezone(dt.UTC):%H:%M} UTC)"


def event_notices(
    challenge: Challenge, events: list[Event], teams: list[Team], kind: str
) -> list[Notice]:
    """One email per team and event, announcing that the event has happened."""
    return [
        Notice(
            key=f"{challenge.id}/{kind}/{event.name}/{team.team_id}",
            to=team.email,
            subject=f"[{challenge.title}] {event.title}",
            body=f"Dear {team.name},\n\n{event.title}: {_when(challenge, event)}.\n",
        )
        for event in events
        for team in teams
    ]


def reminder_notices(
    challenge: Challenge, reminders: list[Reminder], teams: list[Team]
) -> list[Notice]:
    notices = []
    for reminder in reminders:
        event = challenge.event(reminder.event)
        days = "1 day" if reminder.days_before == 1 else f"{reminder.days_before} days"
        for team in teams:
            notices.append(
                Notice(
                    key=f"{challenge.id}/reminder/{reminder.key}/{team.team_id}",
                    to=team.email,
                    subject=f"[{challenge.title}] Reminder: {event.title} in {days}",
                    body=(
                        f"Dear {team.name},\n\n{event.title} is in {days}: "
                        f"{_when(challenge, event)}.\n"
                    ),
                )
            )
    return notices
