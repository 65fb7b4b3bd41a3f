"""An organizer's answer to an approval step, through the REST API the UI uses.

``dag.test()`` parks a human-in-the-loop task until a response is recorded from outside.
The demo (and the tests) answer it as the UI does: the Airflow REST API
(``GET .../hitlDetails``, then ``PATCH .../taskInstances/{task}/{map index}/hitlDetails``),
served in this process by Airflow's own API application on the same metadata DB.
Needs ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True`` (no login), as ``make up``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Approver:
    """Answers every pending approval of ``dag_id`` with ``option``, in a thread.

    Until ``timeout_s`` has passed; then it fails the steps still waiting, as Airflow's
    triggerer does at an approval's response timeout. ``dag.test()`` runs no triggerer
    and waits for an answer for good: without this, an API that keeps failing would
    hang the demo (or a test) instead of ending the run failed, :attr:`errors` saying why.
    """

    dag_id: str
    option: str = "Approve"
    timeout_s: float = 600.0
    answered: list[dict] = field(default_factory=list)
    timed_out: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _client: object = None

    def __enter__(self) -> Approver:
        self._client = self._connect()
        self._thread = threading.Thread(target=self._run, name="approver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._stop.is_set():
            try:  # e.g. the SQLite file locked by the run: ask again
                if time.monotonic() < deadline:
                    self._answer_pending()
                else:
                    self._fail_waiting()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.5)

    @staticmethod
    def _connect():
        """The API application, with every model imported and mapped, in the caller's thread.

        Not in the approver's thread: its first query would configure SQLAlchemy's
        mappers, which imports Airflow's models, while ``dag.test()`` imports modules
        that map classes; each thread then holds the lock the other waits for, for good.
        """
        from airflow.api_fastapi.app import create_app
        from airflow.models import import_all_models
        from fastapi.testclient import TestClient
        from sqlalchemy.orm import configure_mappers

        import_all_models()
        configure_mappers()
        return TestClient(create_app("core"))

    def _answer_pending(self) -> None:
        client = self._client
        listed = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails")
        listed.raise_for_status()
        for detail in listed.json()["hitl_details"]:
            if detail.get("response_received"):
                continue
            ti = detail["task_instance"]
            path = (
                f"/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
            )
            answer = client.patch(path, json={"chosen_options": [self.option], "params_input": {}})
            answer.raise_for_status()
            self.answered.append({"run_id": ti["dag_run_id"], "task_id": ti["task_id"]})

    def _fail_waiting(self) -> None:
        """Past the deadline: each step of ``dag_id`` still awaiting input fails."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            waiting = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).all()
            for ti in waiting:
                ti.set_state(TaskInstanceState.FAILED, session=session)
                self.timed_out.append({"run_id": ti.run_id, "task_id": ti.task_id})
