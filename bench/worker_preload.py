"""CPU a task spends before its work: forked from a bare executor worker vs a preloaded one.

Airflow forks every task from an executor worker. The child then imports the task runner,
parses its DAG file and imports what the task calls. This bench forks such children
from two parents and measures each child's CPU time (user + system, from the kernel,
so a busy machine does not change it much):

- reference: a parent holding what a LocalExecutor worker held before the preload (it
  was forked from the scheduler: Airflow's core, the scheduler and the executor);
- preloaded: a parent that also imported ``mai_ops_airflow.worker_preload``, as the
  stack's workers do (``[scheduler] mp_forkserver_preload``, Celery's ``imports``).

Each child does what a scoring task does before its own work: import the task runner,
parse ``dags/scoring.py`` with the DagBag, import the stage modules and create the S3
client through the provider's hook.

    .venv/bin/python bench/worker_preload.py [-n 10]

The last line is ``ratio=<reference CPU / preloaded CPU>``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

PARENT = """
import os, resource, sys
# What a LocalExecutor worker held before: it was forked from the scheduler.
import airflow.executors.local_executor, airflow.jobs.scheduler_job_runner
if sys.argv[1] == "preloaded":
    import mai_ops_airflow.worker_preload

def child():
    import airflow.sdk.execution_time.task_runner
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[2])
    assert bag.dags and not bag.import_errors, bag.import_errors
    import mai_ops.tasks, mai_ops.submissions.scoring, mai_ops.models.fidelity
    import mai_ops.devices.benchmark
    from mai_ops_airflow import hooks
    hooks.s3_client()

for _ in range(int(sys.argv[3])):
    pid = os.fork()
    if pid == 0:
        child()
        os._exit(0)
    _, status, usage = os.wait4(pid, 0)
    assert status == 0
    print(usage.ru_utime + usage.ru_stime, flush=True)
"""


def measure(kind: str, runs: int, env: dict[str, str]) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", PARENT, kind, str(PROJECT / "dags" / "scoring.py"), str(runs)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return [float(line) for line in out.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10, help="tasks forked per parent")
    args = parser.parse_args()

    sys.path.insert(0, str(PROJECT))
    from mai_ops.dev.demo import airflow_env
    from mai_ops.dev.embedded import connection_env

    with tempfile.TemporaryDirectory(prefix="mai-preload-") as tmp:
        env = {**os.environ, **airflow_env(Path(tmp) / "airflow"), "PYTHONPATH": str(PROJECT)}
        env.update(connection_env("http://127.0.0.1:9", "127.0.0.1", 9))
        results = {kind: measure(kind, args.n, env) for kind in ("reference", "preloaded")}
    for kind, cpu in results.items():
        print(
            f"{kind}: CPU before the work per task: median {statistics.median(cpu):.3f} s, "
            f"min {min(cpu):.3f} s, max {max(cpu):.3f} s over {len(cpu)} tasks"
        )
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f}; own CPU {resource.getrusage(0).ru_utime:.2f} s")
    ratio = statistics.median(results["reference"]) / statistics.median(results["preloaded"])
    print(f"ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
