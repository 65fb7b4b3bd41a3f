"""Organizer alerts through the SMTP provider's notifier, against the loopback SMTP server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mai_ops.challenge.config import load_challenge
from mai_ops.dev.embedded import read_outbox

from .conftest import MAI2021

CH = load_challenge(MAI2021)


def failed_task_context() -> dict:
    """What the alert's templates read of a task that failed for good."""
    ti = SimpleNamespace(
        dag_id="mai2021__release_data",
        task_id="publish_release_and_notify",
        map_index=-1,
        log_url="http://127.0.0.1:8080/dags/mai2021__release_data/runs/r/tasks/t",
    )
    return {"ti": ti, "run_id": "scheduled__r", "exception": ValueError("nothing to release")}


def test_an_alert_waits_out_a_mail_relay_that_is_down_and_is_sent_once(
    airflow_connections, monkeypatch
):
    from mai_ops_airflow.alerts import alert_pauses, failure_alert

    monkeypatch.setenv("MAI_OPS_RETRY_DELAY_S", "1")
    assert alert_pauses() == [1, 2, 4, 8]
    smtp = airflow_connections
    smtp.outage(2.5)  # back during the second pause
    failure_alert(CH)["on_failure_callback"](failed_task_context())
    (alert,) = read_outbox(smtp.folder)
    assert alert["To"] == "organizers@mai-challenge.example"
    assert alert["Subject"] == (
        "[MAI2021] task failed: mai2021__release_data / publish_release_and_notify"
    )
    body = alert.get_body().get_content()
    assert "nothing to release" in body and "scheduled__r" in body


def test_an_alert_is_given_up_after_its_tries_and_says_so(airflow_connections, monkeypatch):
    from mai_ops_airflow.alerts import failure_alert

    monkeypatch.setenv("MAI_OPS_RETRY_DELAY_S", "0")  # every try at once
    smtp = airflow_connections
    smtp.outage()
    with pytest.raises(OSError):
        failure_alert(CH)["on_failure_callback"](failed_task_context())
    smtp.back()
    assert read_outbox(smtp.folder) == []
