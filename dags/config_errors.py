"""
### Challenge files that cannot be loaded

A broken challenge file shows in the UI as a `<file>__config_error` DAG whose task
fails with every problem found (file and field), so the organizers see it at once; the
other challenge files keep their DAGs.
"""

from __future__ import annotations

from mai_ops_airflow.dag_header import failing_dag, read_challenge_files

for _path, _challenge, _errors in read_challenge_files():
    if _challenge is None:
        _text = "\n".join(f"- {p}" for p in _errors)
        failing_dag(
            f"{_path.stem}__config_error",
            f"### `{_path.name}` cannot be loaded\n\n{_text}",
            f"{_path.name} has errors:\n{_text}",
            task_id="report_config_errors",
            tags=["mai-ops", "config-error"],
        )
