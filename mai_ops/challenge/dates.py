"""Timeline dates as organizers write them, including the ones not fixed yet.

The source pages say "June XX" and "April": a date may be known to the month, or
not at all. Such a date is kept as text, schedules nothing, and is reported by
``mai-ops validate``; a fixed date becomes an exact instant in the challenge's time
zone (MAI deadlines are 5 pm Pacific Time), converted to UTC with daylight saving.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DAY_UNKNOWN = re.compile(r"^(\d{4})-(\d{2})-(XX|xx|\?\?)$")
_MONTH_ONLY = re.compile(r"^(\d{4})-(\d{2})$")
_UNKNOWN_WORDS = {"tbd", "tba", "unknown", "not fixed"}
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class EventDate:
    """A calendar date, or a partial one (year and month, or nothing) when not fixed."""

    year: int | None = None
    month: int | None = None
    day: int | None = None
    # "June XX" (the day will come) reads differently from "April" (month only).
    day_placeholder: bool = False

    @property
    def fixed(self) -> bool:
        return self.day is not None

    def text(self) -> str:
        """How the date reads to a person: "2021-01-15", "June XX 2021", "April 2023"."""
        if self.fixed:
            return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
        if self.month is not None:
            day = " XX" if self.day_placeholder else ""
            return f"{calendar.month_name[self.month]}{day} {self.year}"
        return "not fixed"

    def as_date(self) -> dt.date:
        if not self.fixed:
            raise ValueError(f"date {self.text()} is not fixed")
        return dt.date(self.year, self.month, self.day)


def parse_event_date(value: object) -> EventDate:
    """Read a YAML value: a date, "YYYY-MM-DD", "YYYY-MM-XX", "YYYY-MM", "TBD" or null."""
    if value is None:
        return EventDate()
    if isinstance(value, dt.datetime):
        raise ValueError("give the date alone (YYYY-MM-DD) and the time in the event's 'time'")
    if isinstance(value, dt.date):
        return EventDate(value.year, value.month, value.day)
    if not isinstance(value, str):
        raise ValueError(f"expected a date like 2021-01-15, got {value!r}")
    text = value.strip()
    if text.lower() in _UNKNOWN_WORDS:
        return EventDate()
    if m := _ISO_DATE.match(text):
        year, month, day = (int(g) for g in m.groups())
        try:
            dt.date(year, month, day)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a calendar date: {exc}") from None
        return EventDate(year, month, day)
    if m := _DAY_UNKNOWN.match(text) or _MONTH_ONLY.match(text):
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise ValueError(f"{text!r} has no month {month}")
        return EventDate(year, month, day_placeholder=m.re is _DAY_UNKNOWN)
    raise ValueError(
        f"{text!r} is not a date; write YYYY-MM-DD, YYYY-MM-XX or YYYY-MM when the day "
        "is not fixed, or TBD"
    )


def parse_time_of_day(value: object) -> dt.time:
    """Read "HH:MM" (24 h). YAML 1.1 turns 17:00 unquoted into 1020 minutes; accept that too."""
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return dt.time(value // 60, value % 60)
    if isinstance(value, str) and (m := _TIME.match(value.strip())):
        return dt.time(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"expected a time of day like 17:00, got {value!r}")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name like "America" is a folder of the tz database, not a zone.
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name like America/Los_Angeles)"
        ) from None


def local_instant(date: EventDate, time: dt.time, tz_name: str) -> dt.datetime | None:
    """The aware local datetime of a fixed date at ``time``; None when not fixed."""
    if not date.fixed:
        return None
    return dt.datetime.combine(date.as_date(), time, tzinfo=zone(tz_name))


def utc_iso(instant: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a trailing Z, the form ``mai-ops timeline --json`` prints."""
    if instant is None:
        return None
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
