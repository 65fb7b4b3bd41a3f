"""DagBag parse time of the shipped DAG files against an empty DAG file, in one run.

Each measurement is a fresh interpreter (as a DAG processor's child would be) that
first imports Airflow itself, then times ``DagBag(dag_folder=...)`` alone: what a
DAG file costs on top of Airflow. Alternating the two folders over several rounds
and taking medians keeps a noisy machine from deciding the ratio.

    .venv/bin/python bench/parse_time.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TARGET_S = 0.5

EMPTY_DAG = """
from airflow.sdk import dag


@dag(dag_id="empty", schedule=None)
def empty():
    pass


empty()
"""

CHILD = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk  # noqa: F401  (Airflow's own import cost is not the DAG file's)
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "dags": len(bag.dag_ids), "errors": len(bag.import_errors)}))
"""


def measure(folder: Path, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty_dir = Path(tmp) / "empty_dags"
        empty_dir.mkdir()
        (empty_dir / "empty_dag.py").write_text(EMPTY_DAG)
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(Path(tmp) / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        }
        ours, empty = [], []
        for _ in range(args.rounds):
            ours.append(measure(PROJECT / "dags", env))
            empty.append(measure(empty_dir, env))
    t_ours = statistics.median(r["seconds"] for r in ours)
    t_empty = statistics.median(r["seconds"] for r in empty)
    dags, errors = ours[0]["dags"], ours[0]["errors"]
    print(f"shipped DAG files: {dags} DAGs, {errors} import errors, median {t_ours:.3f} s")
    print(f"empty DAG file (reference): 1 DAG, median {t_empty:.3f} s")
    print(f"ratio shipped / empty: {t_ours / t_empty:.2f}x over {args.rounds} rounds")
    ok = t_ours < TARGET_S and errors == 0
    print(f"target: all DAGs together under {TARGET_S} s -> {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
