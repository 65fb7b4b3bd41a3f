"""Clients for the systems a task talks to, through the providers' hooks.

Connections come from Airflow (``AIRFLOW_CONN_AWS_DEFAULT``, ``AIRFLOW_CONN_SMTP_DEFAULT``
in the embedded stack and in compose). Airflow is imported inside the functions so
the library stays importable, and DAG files stay fast to parse.
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parseaddr
from typing import Any

from mai_ops.notify.ledger import Notice, NoticeRefused, RelayUnavailable

AWS_CONN_ID = "aws_default"
SMTP_CONN_ID = "smtp_default"


def s3_client(conn_id: str = AWS_CONN_ID) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mai_ops.infra.storage import missing_bucket_fails_fast

    return missing_bucket_fails_fast(S3Hook(aws_conn_id=conn_id).get_conn())


def smtp_sender(conn_id: str = SMTP_CONN_ID) -> Callable[[Notice], str]:
    """A ``send(notice)`` that delivers through the SMTP provider's hook; returns the
    Message-ID it sent.

    The message is built here (:func:`mai_ops.notify.mime.build_message`): a plain-text
    and an HTML part, a Message-ID from the notice key, Reply-To the organizers. The
    hook's ``send_email_smtp`` (provider 2.x/3.x) builds a message with one HTML part
    only, so the message goes out over the session the hook opens and logs in
    (``get_conn``: TLS, login or OAuth2 as the connection says), with the connection's
    ``from_email`` as the sender. One attempt per notice: a failure goes back to the
    ledger, which decides what a retry sends.

    An address the hook cannot carry (a non-ASCII local part: it does not speak
    SMTPUTF8) raises :class:`NoticeRefused` before the relay is contacted. A relay that
    cannot be reached or refuses our session raises :class:`RelayUnavailable`: nothing
    was sent.
    """
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from mai_ops.notify.mime import build_message

    def send(notice: Notice) -> str:
        to = ascii_address(notice.to)
        hook = SmtpHook(smtp_conn_id=conn_id)
        try:
            try:
                hook.get_conn()
            except Exception as exc:
                raise RelayUnavailable(
                    f"the mail relay of connection {conn_id!r} cannot be reached or refused "
                    f"the session: {type(exc).__name__}: {exc}"
                ) from exc
            sender = hook.from_email
            if not sender:
                raise RelayUnavailable(
                    f"connection {conn_id!r} names no sender: set from_email in its extra"
                )
            client = getattr(hook, "_smtp_client", None)
            if client is None:
                raise RelayUnavailable("the SMTP provider's hook opened no session")
            message = build_message(notice, sender, to=to)
            client.send_message(message, from_addr=parseaddr(sender)[1], to_addrs=[to])
            return message["Message-ID"]
        finally:
            if getattr(hook, "_smtp_client", None) is not None:
                hook.__exit__(None, None, None)  # closes the session, as `with hook` does

    return send


def ascii_address(address: str) -> str:
    """``address`` as SMTP without SMTPUTF8 carries it (an IDN domain in its ASCII form)."""
    local, _, domain = address.strip().rpartition("@")
    if not local.isascii() or any(c in address for c in "\r\n"):
        raise NoticeRefused(
            f"the address {address!r} has characters the mail relay cannot carry (a "
            "non-ASCII name needs SMTPUTF8); give the team an ASCII address"
        )
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise NoticeRefused(f"the address {address!r} has an invalid domain: {exc}") from None
    return f"{local}@{domain}"
