"""Clients for the systems a task talks to, through the providers' hooks.

Connections come from Airflow (``AIRFLOW_CONN_AWS_DEFAULT``, ``AIRFLOW_CONN_SMTP_DEFAULT``
in the embedded stack and in compose). Airflow is imported inside the functions so
the library stays importable, and DAG files stay fast to parse.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from mai_ops.notify.ledger import Notice, NoticeRefused

AWS_CONN_ID = "aws_default"
SMTP_CONN_ID = "smtp_default"


def s3_client(conn_id: str = AWS_CONN_ID) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mai_ops.infra.storage import missing_bucket_fails_fast

    return missing_bucket_fails_fast(S3Hook(aws_conn_id=conn_id).get_conn())


def smtp_sender(conn_id: str = SMTP_CONN_ID) -> Callable[[Notice], None]:
    """A ``send(notice)`` that delivers through the SMTP provider's hook.

    An address the hook cannot carry (a non-ASCII local part: it does not speak
    SMTPUTF8) raises :class:`NoticeRefused` before the relay is contacted; the hook
    would otherwise fail mid-transaction and report a misleading error.
    """
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    def send(notice: Notice) -> None:
        to = ascii_address(notice.to)
        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(
                to=to,
                subject=notice.subject,
                html_content=_as_html(notice.body),
                mime_subtype="mixed",
                custom_headers={"X-MAI-Notice": notice.header},
            )

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


def _as_html(text: str) -> str:
    return f'<html><body><pre style="font-family: inherit">{html.escape(text)}</pre></body></html>'
