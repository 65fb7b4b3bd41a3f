"""Alerts to the organizers: a failed task, and preliminary results not out in time.

Both go through the SMTP provider's notifier (``SmtpNotifier``) on the project's SMTP
connection, to the challenge's ``organizers:``. A task's ``on_failure_callback`` fires
once, when the task fails for good (its retries use ``on_retry_callback``): one email per
failure, with the reason and a link to the log. A challenge without organizers gets no
alert.

Publication on time is guarded by an Airflow deadline alert on the preliminary results
DAG: if its run has not finished :data:`PUBLICATION_GRACE` after the promised instant
(its logical date), the organizers are told. Deadlines are checked by the scheduler,
so they work wherever the scheduler runs (``make up``, production); ``dag.test()`` runs
have no scheduler and no deadline.
"""

from __future__ import annotations

from datetime import timedelta

from mai_ops.challenge.config import Challenge
from mai_ops_airflow.hooks import SMTP_CONN_ID

PUBLICATION_GRACE = timedelta(minutes=30)

FAILURE_SUBJECT = "[{short}] task failed: {{{{ ti.dag_id }}}} / {{{{ ti.task_id }}}}"
FAILURE_HTML = (
    "<p>A task of {title} failed for good, after its retries.</p>"
    "<ul><li>DAG: <code>{{{{ ti.dag_id }}}}</code></li>"
    "<li>task: <code>{{{{ ti.task_id }}}}</code> (map index {{{{ ti.map_index }}}})</li>"
    "<li>run: <code>{{{{ run_id }}}}</code></li>"
    "<li>reason: {{{{ exception | string | e }}}}</li></ul>"
    '<p><a href="{{{{ ti.log_url }}}}">The task log</a>. Fix the cause, then clear the task '
    "in the UI: a cleared task runs again and keeps what was already done.</p>"
)
LATE_SUBJECT = "[{short}] preliminary results not published at the promised time"
LATE_HTML = (
    "<p>The preliminary results of {title} were promised for {{{{ dag_run.logical_date }}}}; "
    "{grace} minutes later the run <code>{{{{ dag_run.run_id }}}}</code> has not finished "
    "(waiting for approval, or failed). Open the DAG <code>{{{{ dag_run.dag_id }}}}</code>.</p>"
)


def short_name(challenge: Challenge) -> str:
    return getattr(challenge, "short_name", None) or challenge.id.upper()


def _notifier(challenge: Challenge, subject: str, html: str):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to=list(challenge.organizers),
        subject=subject,
        html_content=html,
        smtp_conn_id=SMTP_CONN_ID,
    )


def failure_alert(challenge: Challenge) -> dict:
    """``default_args`` entries that email the organizers when a task fails for good."""
    if not challenge.organizers:
        return {}
    fields = {"short": short_name(challenge), "title": challenge.title}
    subject = FAILURE_SUBJECT.format(**fields)
    return {"on_failure_callback": _notifier(challenge, subject, FAILURE_HTML.format(**fields))}


def publication_deadline(challenge: Challenge):
    """A deadline alert: the run of the promised instant not finished within the grace."""
    if not challenge.organizers:
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk import DeadlineAlert, DeadlineReference
    from airflow.sdk.definitions.deadline import AsyncCallback

    fields = {
        "short": short_name(challenge),
        "title": challenge.title,
        "grace": int(PUBLICATION_GRACE.total_seconds() // 60),
    }
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=PUBLICATION_GRACE,
        callback=AsyncCallback(
            SmtpNotifier,
            kwargs={
                "to": list(challenge.organizers),
                "subject": LATE_SUBJECT.format(**fields),
                "html_content": LATE_HTML.format(**fields),
                "smtp_conn_id": SMTP_CONN_ID,
            },
        ),
    )
