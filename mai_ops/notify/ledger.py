"""Emails to teams, sent at most once each.

A notice has a key derived from what it is about (challenge, event, team), never
from the time it was sent. Before sending, the results bucket is asked whether a
marker for that key exists; after sending, the marker is written. Clearing and
re-running a task therefore sends nothing twice, and a task that failed halfway
sends only what is still missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mai_ops.infra.layout import notice_marker_key
from mai_ops.infra.storage import object_exists, put_json

_KEY = re.compile(r"^[A-Za-z0-9._/-]+$")


@dataclass(frozen=True)
class Notice:
    key: str
    to: str
    subject: str
    body: str

    def __post_init__(self) -> None:
        if not _KEY.match(self.key) or ".." in self.key:
            raise ValueError(f"notice key {self.key!r} must be a plain path of [A-Za-z0-9._-/]")


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def marker_key(notice: Notice) -> str:
    return notice_marker_key(notice.key)


def deliver(
    notices: Iterable[Notice],
    send: Callable[[Notice], None],
    s3: Any,
    bucket: str,
) -> DeliveryReport:
    """Send each notice not sent before; ``send`` raises on failure, which stops here."""
    report = DeliveryReport()
    for notice in notices:
        key = marker_key(notice)
        if object_exists(s3, bucket, key):
            report.already_sent.append(notice.key)
            continue
        send(notice)
        put_json(s3, bucket, key, {"to": notice.to, "subject": notice.subject})
        report.sent.append(notice.key)
    return report
