"""Alerts to the organizers: a failed task, and preliminary results not out in time.

Both go through the SMTP provider's notifier (``SmtpNotifier``) on the project's SMTP
connection, to the challenge's ``organizers:``. A task's ``on_failure_callback`` fires
once, when the task fails for good (its retries use ``on_retry_callback``): one email per
failure, with the reason and a link to the log, tried again while the mail relay is
down (:func:`alert_pauses`). A challenge without organizers gets no alert.

Publication on time: the preliminary results DAG runs at the promised instant, so at
that instant the organizers hear either nothing (published), that the results wait for
their approval (:func:`approval_request`: not published yet), or that a task failed
(no validated results of the frozen set, say). This scheduled check stands in for
Airflow's deadline alerts: in Airflow 3.3.2 ``dag.test()``, which the demo and the tests
run every DAG with, cannot finish a run of a DAG that has one (it looks the alert up
by its definition instead of its id).
"""

from __future__ import annotations

import logging
import smtplib
import time
from dataclasses import dataclass

from mai_ops.challenge.config import Challenge
from mai_ops.timeouts import retry_delay_s
from mai_ops_airflow.hooks import SMTP_CONN_ID

log = logging.getLogger(__name__)
# Tries of one alert before it is given up (the task stays red in the UI).
ALERT_TRIES = 5

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


def _notifier(challenge: Challenge, subject: str, html: str):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to=list(challenge.organizers),
        subject=subject,
        html_content=html,
        smtp_conn_id=SMTP_CONN_ID,
    )


@dataclass(frozen=True)
class FreshNotifier:
    """A notifier built anew for every call.

    A notifier renders its templates into its own fields; one instance shared by every
    task of a DAG (``default_args``) would mail the first failure's subject for all the
    failures that follow in the same process.
    """

    challenge: Challenge
    subject: str
    html: str

    def __call__(self, context) -> None:
        pauses = alert_pauses()
        for pause in [*pauses, None]:
            try:
                _notifier(self.challenge, self.subject, self.html)(context)
                return
            except (OSError, smtplib.SMTPException) as err:
                if pause is None:
                    raise
                log.warning("the alert could not be sent (%s); trying again in %s s", err, pause)
                time.sleep(pause)


def alert_pauses() -> list[int]:
    """Pauses between the tries of an alert: a failure must not go unheard because the
    mail relay was down at that moment. The tasks' own retry rhythm (15, 30, 60, 120 s
    by default), so an outage a task's retries ride out does not swallow its alert; a
    relay that dropped the line after taking the message may make it arrive twice."""
    first = retry_delay_s()
    return [first * 2**k for k in range(ALERT_TRIES - 1)]


def failure_alert(challenge: Challenge) -> dict:
    """``default_args`` entries that email the organizers when a task fails for good."""
    if not challenge.organizers:
        return {}
    fields = {"short": challenge.short_name, "title": challenge.title}
    subject = FAILURE_SUBJECT.format(**fields)
    return {"on_failure_callback": FreshNotifier(challenge, subject, FAILURE_HTML.format(**fields))}


APPROVAL_SUBJECT = "[{short}] preliminary results not published: waiting for your approval"
APPROVAL_HTML = (
    "<p>The preliminary results of {title} are validated and are not published: they wait "
    "for an organizer's approval. Open Required Actions in the Airflow UI (DAG "
    "<code>{{{{ ti.dag_id }}}}</code>, run <code>{{{{ run_id }}}}</code>), read the tables "
    "and approve or reject.</p>"
    "<p>They are published at the promised instant once approved, at once if approved "
    "later.</p>"
)


def approval_request(challenge: Challenge) -> list:
    """Notifiers for the approval step: the organizers hear that it waits for them."""
    if not challenge.organizers:
        return []
    fields = {"short": challenge.short_name, "title": challenge.title}
    return [_notifier(challenge, APPROVAL_SUBJECT.format(**fields), APPROVAL_HTML.format(**fields))]
