"""Emails to teams: what one is (:class:`Notice`), and the ledger that sends each once.

A notice has a key derived from what it is about (challenge, event, team), never from
the time it was sent. The ledger keeps two records per notice in the results bucket
(:mod:`mai_ops.infra.layout`): an *intent*, written before each try to send it, and a
*sent-marker*, the result, written once the mail relay has taken it. :func:`deliver`
goes through the notices in order and, for each one:

1. a sent-marker exists: sent before, skip it;
2. write the intent (storage down here: stop, nothing is sent);
3. send it, with a ``Message-ID`` derived from its key alone;
4. write the sent-marker (storage down here: stop at once, raising
   :class:`SendNotRecorded`; no other notice is sent by this try).

So a crash, or a storage outage, between 3 and 4 leaves an intent without a marker:
the next try cannot know whether the relay took the email, and sends it again with the
same ``Message-ID``, which mail clients show once. That is the only duplicate there
can be, at most one per such interruption and only of the notice being sent then,
never a batch (docs/notifications.md). Any failure to read or write the ledger stops
the delivery instead of sending without a record.

One address the mail server refuses (a recipient it rejects, an address it cannot
carry) fails that one notice, with the server's reason, and the others are still
sent: :attr:`DeliveryReport.failed` lists them, and :meth:`DeliveryReport.raise_for_failures`
fails the task once everything else is done. Nothing was sent, so its intent is
removed and no marker written: a re-run sends it as a new email. A relay that is down
or refuses us (connection, authentication, our sender address) stops the delivery at
once: every notice would fail the same way, and a retry sends what is left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import smtplib
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mai_ops.errors import NeedsOrganizer
from mai_ops.infra.layout import notice_intent_key, notice_marker_key
from mai_ops.infra.storage import get_json, is_missing, object_exists, put_json

_KEY = re.compile(r"^[A-Za-z0-9._/~-]+$")
MAX_KEY_CHARS = 400  # the marker key stays far below S3's 1024 bytes
MAX_SUBJECT_CHARS = 200
MAX_HEADER_CHARS = 120
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
log = logging.getLogger(__name__)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` as one clean line: control characters (CR, LF, TAB, NUL, ...) become
    spaces, runs of white space one space, cut to ``limit`` characters with an ellipsis.

    Every string a participant controls (a team name, a file name, a message) passes
    here before it reaches a header or the plain text of an email.
    """
    text = re.sub(r"\s+", " ", _CONTROL.sub(" ", str(text))).strip()
    if limit is not None and len(text) > limit:
        return text[: limit - 1].rstrip() + "…"
    return text


def clean_subject(subject: str) -> str:
    """A subject fit for one header line: no CR, LF or other control characters, bounded."""
    return one_line(subject, MAX_SUBJECT_CHARS)


def message_id_local_part(notice_key: str) -> str:
    """The left-hand side of a notice's ``Message-ID``: 32 hex digits of its key's sha256."""
    return hashlib.sha256(notice_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Notice:
    """One email to one team: what it is about (``key``), its two bodies, who answers.

    ``text`` is the plain-text part and ``html`` the HTML part of one
    multipart/alternative message, both rendered from the same template pair
    (:mod:`mai_ops.notify.render`); ``reply_to`` are the organizers' addresses.
    """

    key: str
    to: str
    subject: str
    text: str
    html: str
    reply_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _KEY.match(self.key) or ".." in self.key or len(self.key) > MAX_KEY_CHARS:
            raise ValueError(
                f"notice key {self.key!r} must be a plain path of [A-Za-z0-9._-/~], "
                f"at most {MAX_KEY_CHARS} characters"
            )
        object.__setattr__(self, "subject", clean_subject(self.subject))
        replies = tuple(one_line(a) for a in self.reply_to if one_line(a))
        object.__setattr__(self, "reply_to", replies)

    @property
    def header(self) -> str:
        """The notice key for an email header (``X-MAI-Notice``): short, ASCII, one line.

        A long key keeps its start and ends with a digest of the whole key.
        """
        if len(self.key) <= MAX_HEADER_CHARS:
            return self.key
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:24]
        return f"{self.key[: MAX_HEADER_CHARS - 26]}~~{digest}"

    def message_id(self, domain: str) -> str:
        """``<sha256(key)[:32]@domain>``: the same for every copy of this notice.

        ``domain`` is the sender address's; a copy sent again after a crash carries the
        same id, and mail clients show it once.
        """
        return f"<{message_id_local_part(self.key)}@{domain}>"


class NoticeRefused(Exception):
    """This one notice cannot be delivered (its address); the others still can.

    ``transient``: the server asked to try again later (a 4xx reply).
    """

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class RelayUnavailable(ConnectionError):
    """The mail relay could not be reached, or refused our session: nothing was sent.

    The delivery stops (every notice would fail the same way); a retry sends what is
    left.
    """


class UndeliveredNotices(NeedsOrganizer):
    """Notices refused for their addresses; every other notice was sent.

    An organizer corrects the addresses (the participants list) and clears the task:
    the re-run sends only the missing notices.
    """


class NoticesDeferred(RuntimeError):
    """Notices the mail server asked to try again later; a retry sends only those."""


def refusal(exc: BaseException) -> NoticeRefused | None:
    """Whether ``exc``, raised by a sender, concerns this notice only; None if the relay's."""
    if isinstance(exc, NoticeRefused):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = [
            f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
            for code, msg in exc.recipients.values()
        ]
        transient = all(400 <= code < 500 for code, _ in exc.recipients.values())
        return NoticeRefused(
            f"the mail server refused the recipient: {'; '.join(replies)}", transient
        )
    if isinstance(exc, smtplib.SMTPDataError):
        msg = exc.smtp_error
        text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        return NoticeRefused(
            f"the mail server refused the message: {exc.smtp_code} {text}",
            400 <= exc.smtp_code < 500,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError | UnicodeEncodeError):
        return NoticeRefused(f"the address cannot be sent to: {exc}")
    return None


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    # "<notice key>: <address>: <reason>" of each notice not delivered
    failed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    # Sent again (also in ``sent``): an earlier try may have sent it without recording it.
    resent: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    def merge(self, other: DeliveryReport) -> DeliveryReport:
        for name in ("sent", "already_sent", "failed", "deferred", "resent"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def raise_for_failures(self) -> None:
        """Fail the task when a notice was not delivered (after every other was sent).

        Refused addresses need an organizer (fail at once); notices the server only
        deferred are retried.
        """
        sent = f"{len(self.sent)} sent, {len(self.already_sent)} sent before"
        if self.failed:
            raise UndeliveredNotices(
                f"{len(self.failed)} email(s) refused by the mail server ({sent}); correct "
                "the address in the participants list, then clear the task to send only "
                "these: " + " | ".join(self.failed + self.deferred)
            )
        if self.deferred:
            raise NoticesDeferred(
                f"{len(self.deferred)} email(s) deferred by the mail server ({sent}); the "
                "retry sends only these: " + " | ".join(self.deferred)
            )


class SendNotRecorded(RuntimeError):
    """A notice went out but its sent-marker could not be stored: the delivery stops.

    The retry finds the intent without a marker and sends this one notice again, with
    the same Message-ID; no other notice is sent meanwhile.
    """


def marker_key(notice: Notice) -> str:
    return notice_marker_key(notice.key)


def intent_key(notice: Notice) -> str:
    return notice_intent_key(notice.key)


# Sender errors that prove the relay never took the message: it was not reached.
_NOT_REACHED = (
    RelayUnavailable,
    ConnectionRefusedError,
    socket.gaierror,
    smtplib.SMTPConnectError,
)


def _stored_intent(s3: Any, bucket: str, key: str) -> dict | None:
    """The intent stored at ``key``, or None; any other storage error propagates."""
    try:
        return get_json(s3, bucket, key)
    except s3.exceptions.ClientError as exc:
        if is_missing(exc):
            return None
        raise


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _forget_intent(s3: Any, bucket: str, key: str) -> None:
    """Remove an intent whose notice certainly did not go out (best effort).

    If the storage fails here the intent stays: the notice is then sent again as a
    "maybe sent" one, which is still right.
    """
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - the intent only makes the next try careful
        log.warning("intent %s kept: %s: %s", key, type(exc).__name__, exc)


def deliver(
    notices: Iterable[Notice],
    send: Callable[[Notice], str | None],
    s3: Any,
    bucket: str,
) -> DeliveryReport:
    """Send each notice not sent before: intent, send, sent-marker (see the module).

    ``send`` delivers one notice and may return the Message-ID it used (kept in the
    marker). A notice refused for its address (:func:`refusal`) is reported in
    ``failed`` (or ``deferred``) and the others are sent; any other error of ``send``,
    and every storage error, stops here.
    """
    report = DeliveryReport()
    for notice in notices:
        marker = marker_key(notice)
        if object_exists(s3, bucket, marker):
            report.already_sent.append(notice.key)
            continue
        intent = intent_key(notice)
        earlier = _stored_intent(s3, bucket, intent)
        attempts = int((earlier or {}).get("attempts") or 0) + 1
        if earlier is not None:
            log.warning(
                "%s: an earlier try (started %s) may have sent it without recording it; "
                "sending it again with the same Message-ID",
                notice.key,
                earlier.get("started_at", "?"),
            )
        record = {"notice": notice.key, "to": notice.to, "subject": notice.subject}
        # Written before every try: a storage that cannot take it stops us before a send.
        put_json(s3, bucket, intent, record | {"attempts": attempts, "started_at": _now()})
        try:
            message_id = send(notice)
        except Exception as exc:
            refused = refusal(exc)
            # Nothing went out on this try: its own intent goes (one left by an earlier
            # try that may have sent stays, so the next send still says so).
            if earlier is None and (refused is not None or isinstance(exc, _NOT_REACHED)):
                _forget_intent(s3, bucket, intent)
            if refused is None:
                raise
            line = f"{notice.key}: {notice.to!r}: {refused.reason}"
            log.error("email not delivered: %s", line)
            (report.deferred if refused.transient else report.failed).append(line)
            continue
        result = record | {"message_id": message_id, "attempts": attempts, "sent_at": _now()}
        try:
            put_json(s3, bucket, marker, result)
        except Exception as exc:
            raise SendNotRecorded(
                f"{notice.key} was sent to {notice.to!r} but its sent-marker could not be "
                f"stored ({type(exc).__name__}: {exc}); the delivery stops here. The retry "
                "sends this one email again, with the same Message-ID, and then the rest"
            ) from exc
        report.sent.append(notice.key)
        if earlier is not None:
            report.resent.append(notice.key)
    return report
