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
    """Answers every pending approval of ``dag_id`` with ``option``, in a thread."""

    dag_id: str
    option: str = "Approve"
    timeout_s: float = 600.0
    answered: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Approver:
        self._thread = threading.Thread(target=self._run, name="approver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app("core"))
        deadline = time.monotonic() + self.timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._answer_pending(client)
            except Exception as exc:  # e.g. the SQLite file locked by the run: ask again
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.5)

    def _answer_pending(self, client) -> None:
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
