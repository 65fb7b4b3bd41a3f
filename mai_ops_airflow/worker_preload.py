"""What every task process needs, imported once per executor worker instead of once per task.

Airflow forks each task from an executor worker; a module the worker already holds costs
the task nothing (copy-on-write), one it lacks is imported again by every task. Without
this, each of the ~400 tasks of a final phase of 100 submissions spends about 2.5 s of CPU
importing Airflow's task runner, the Amazon provider, boto3, NumPy and LiteRT before its
work starts: on two cores that was most of the scoring DAG's overhead
(``bench/final_phase_overhead.py``).

The scheduler's LocalExecutor loads it through ``[scheduler] mp_start_method =
forkserver`` and ``mp_forkserver_preload = mai_ops_airflow.worker_preload`` (set by the
embedded stack and in ``docker-compose.yaml``). Importing must stay side-effect free: no
connections, no threads, nothing read from storage. TensorFlow is left out: only the
rare Keras or SavedModel conversion needs it, and it would triple every worker's memory.
"""

from __future__ import annotations

import inspect
from importlib import import_module

MODULES = (
    # Airflow: the executor's worker loop, the supervisor that forks the task, the task
    # runner the fork executes (about 2 s on its own) and the DagBag it parses with.
    "airflow.executors.local_executor",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    # The providers' hooks the tasks talk through, and what they pull in (boto3).
    "airflow.providers.amazon.aws.hooks.s3",
    "airflow.providers.smtp.hooks.smtp",
    # What the DAG files use: the alert notifier, the approval step, branches.
    "airflow.providers.smtp.notifications.smtp",
    "airflow.providers.standard.operators.hitl",
    "airflow.providers.standard.decorators.branch_python",
    # The numerical and model libraries of the stages.
    "numpy",
    "PIL.Image",
    "ai_edge_litert.interpreter",
    # The project: what the DAG files import when a task parses them, and the stages.
    "mai_ops_airflow.dag_header",
    "mai_ops_airflow.alerts",
    "mai_ops_airflow.hooks",
    "mai_ops_airflow.outcomes",
    "mai_ops_airflow.triggers",
    "mai_ops.tasks",
    "mai_ops.submissions.scoring",
    "mai_ops.models.fidelity",
    "mai_ops.devices.benchmark",
)

for _name in MODULES:
    import_module(_name)

# The Amazon provider's hook reads the call stack to name its caller in the user agent;
# ``inspect`` then maps every loaded module to its file once per process (realpath on each
# of ~2,000 modules) and caches the map. Filled here, every task inherits it.
inspect.getmodule(inspect.currentframe())

# The S3 service model, its endpoint rules and the partitions, decoded once into the
# loader every task's S3 client shares (mai_ops_airflow/aws_session.py).
import_module("mai_ops_airflow.aws_session").warm()
