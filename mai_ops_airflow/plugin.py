"""mai-ops's Airflow plugin: what Airflow must know by name to (de)serialize our DAGs.

Loaded through the ``airflow.plugins`` entry point in every Airflow process; kept light
(it imports only the timetable).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mai_ops_airflow.timetables import PhaseEvents


class MaiOpsPlugin(AirflowPlugin):
    name = "mai_ops"
    timetables = [PhaseEvents]
