"""A notice as the email that goes out: one multipart/alternative message.

The plain-text part comes first and the HTML part last (a client shows the last part it
can render). Headers: ``From`` (the relay connection's sender), ``To``, ``Subject``,
``Date``, a ``Message-ID`` derived from the notice key alone (so a copy sent again
after a crash is the same message to a mail client), ``Reply-To`` the organizers when
the challenge names them, ``X-MAI-Notice`` the notice key, and ``Auto-Submitted`` so
that out-of-office robots do not answer.
"""

from __future__ import annotations

import datetime as dt
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

from mai_ops.notify.ledger import Notice

FALLBACK_DOMAIN = "mai-ops.invalid"


def sender_domain(sender: str) -> str:
    """The domain of a sender (``Name <user@domain>`` or ``user@domain``), in ASCII."""
    domain = parseaddr(sender)[1].rpartition("@")[2].strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii") if domain else ""
    except UnicodeError:
        domain = ""
    return domain or FALLBACK_DOMAIN


def build_message(
    notice: Notice, sender: str, to: str | None = None, now: dt.datetime | None = None
) -> EmailMessage:
    """The email for ``notice`` from ``sender``; ``to`` overrides the notice's address
    (its ASCII form for the relay)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = to or notice.to
    message["Subject"] = notice.subject
    message["Date"] = format_datetime((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))
    message["Message-ID"] = notice.message_id(sender_domain(sender))
    if notice.reply_to:
        message["Reply-To"] = [Address(addr_spec=a) for a in notice.reply_to]
    message["X-MAI-Notice"] = notice.header
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps the stored message readable as it is (base64 would not).
    message.set_content(notice.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(notice.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message
