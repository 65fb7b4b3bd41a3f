"""Scale-out: the final scoring of N submissions on LocalExecutor and on CeleryExecutor.

The same generated final phase (:mod:`mai_ops.dev.final_phase`, shared with
``bench/final_phase_overhead.py`` and the Celery integration test): N teams over two
tracks and two ``litert`` devices, one of them declared on the device host ``lab``, real
TFLite models built once and staged into each stack, the set frozen, then the scoring
DAG triggered through the REST API on

- ``local``: the stack of ``make up`` (``airflow standalone``: LocalExecutor, SQLite);
- ``celery``: the stack of ``make up-celery`` (PostgreSQL, Redis, a ``default`` worker
  and the ``lab`` host's worker: two workers).

For each: the DAG's wall time, task instances per minute, the stack's memory (PSS of
every process of its session: shared pages counted once; at rest before the run and
the largest seen during it; the PostgreSQL and Redis servers the Celery stack uses are
this machine's and not counted), and where the time goes, from the task instances the
API returns: scheduled -> queued (the scheduler's loop, waiting for a pool slot: four
for checks and fidelity, three per CPU device, and executor slots), queued ->
running (the executor's delivery and the task process's start), the time the tasks ran,
and the work the tasks measured inside themselves (checks, benchmark, fidelity, from the
stored stage records). Then the ratio of the wall times (celery / local).

    .venv/bin/python bench/scaleout.py           # n = 100
    .venv/bin/python bench/scaleout.py -n 6      # a quick look

The stacks run one after the other, each on free ports with a home of its own in a
temporary folder; the Celery stack's database and broker keys are dropped afterwards.

Last measured on two quiet cores, n = 100 (403 task instances), every installed module
compiled at install (as ``make`` does), Airflow's 1 s scheduler idle sleep, the pools and
priorities of today (a CPU device's pool three slots, the validation pool four, the
benchmarks sent first, eight executor slots on the local stack): local 164.6 s (146.9
tasks/min, 1179 MiB at rest, 1744 MiB at most), celery 287.1 s (84.2 tasks/min, 1447
and 1978 MiB), ratio 1.74. Median scheduled -> queued 0.88 s local, 6.62 s celery;
queued -> running 1.27 s and 0.48 s; the tasks ran 1.07 s and 0.72 s at the median
(the local stack's tasks share the two cores with more of each other), 128.8 and 109.2
s of measured work. The Celery stack's two workers (four and two task slots) run
fewer tasks at once than the local stack's eight. Before, with one device slot, two
validation slots and four executor slots: local 310.6 s, celery 485.3 s, ratio 1.56.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def session_pss(sid: int) -> int:
    """Bytes of PSS of every live process of the session ``sid``."""
    import psutil

    total = 0
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                total += proc.memory_full_info().pss
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return total


class PeakMemory(threading.Thread):
    """The largest PSS of the session seen while running (every 5 s)."""

    def __init__(self, sid: int):
        super().__init__(daemon=True)
        self.sid, self.peak, self.done = sid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, session_pss(self.sid))
            self.done.wait(5)


def _when(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def delays(tis: list[dict]) -> dict[str, list[float]]:
    """Per task instance: seconds scheduled -> queued, queued -> running, and running."""
    out: dict[str, list[float]] = {"scheduled->queued": [], "queued->running": [], "running": []}
    for ti in tis:
        scheduled, queued = _when(ti.get("scheduled_when")), _when(ti.get("queued_when"))
        start = _when(ti.get("start_date"))
        if scheduled and queued:
            out["scheduled->queued"].append((queued - scheduled).total_seconds())
        if queued and start:
            out["queued->running"].append((start - queued).total_seconds())
        if ti.get("duration") is not None:
            out["running"].append(ti["duration"])
    return out


def run_stack(executor: str, work: Path, path: Path, challenge, n: int, models) -> dict:
    from mai_ops.dev import final_phase

    memory: dict[str, int] = {}

    @contextlib.contextmanager
    def watch(sid: int):
        memory["rest"] = session_pss(sid)
        peak = PeakMemory(sid)
        peak.start()
        try:
            yield
        finally:
            peak.done.set()
            peak.join()
            memory["peak"] = max(peak.peak, memory["rest"])

    options = ["--device-host", final_phase.LAB_HOST] if executor == "celery" else None
    result = final_phase.score_on_stack(
        work, path, challenge, n, models, True, executor, options, watch
    )
    tis = result.pop("tis")
    return {
        **result,
        "tis": len(tis),
        "delays": delays(tis),
        "pss_rest": memory["rest"],
        "pss_peak": memory["peak"],
    }


def report(result: dict) -> None:
    d = result["delays"]
    mib = 2**20

    def line(name: str) -> str:
        values = d[name]
        if not values:
            return f"{name}: none"
        return (
            f"{name}: median {statistics.median(values):.2f} s, max {max(values):.1f} s, "
            f"sum {sum(values):.0f} s"
        )

    pure = sum(result["pure"].values())
    print(f"== {result['executor']} ==")
    print(f"stack up (DAG served) after {result['up']:.0f} s; run state: {result['state']}")
    print(
        f"wall time {result['wall']:.1f} s; {result['tis']} task instances, "
        f"{result['tis'] / (result['wall'] / 60):.1f} tasks/min"
    )
    print(
        f"memory (PSS of the stack's processes): {result['pss_rest'] / mib:.0f} MiB at rest, "
        f"{result['pss_peak'] / mib:.0f} MiB at most during the run"
    )
    for name in ("scheduled->queued", "queued->running", "running"):
        print("  " + line(name))
    print(
        f"  work measured inside the tasks: {pure:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result["pure"].items()))
        + ")"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="frozen submissions (default 100)")
    args = parser.parse_args()

    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev import final_phase

    results = []
    with tempfile.TemporaryDirectory(prefix="mai-scaleout-") as tmp:
        work = Path(tmp)
        tracks, devices = final_phase.two_tracks_on_two_devices()
        path = final_phase.challenge_file(work / "challenges", args.n, tracks, devices, "scaleout")
        challenge = load_challenge(path)
        print("building each track's model", flush=True)
        models = final_phase.build_models(path, work / "models", graded=True)
        for executor in ("local", "celery"):
            print(f"starting the {executor} stack", flush=True)
            results.append(run_stack(executor, work, path, challenge, args.n, models))
    print()
    for result in results:
        report(result)
    local, celery = results
    print(
        f"wall time celery / local: {celery['wall']:.1f} / {local['wall']:.1f} s = "
        f"{celery['wall'] / local['wall']:.2f}; memory (PSS at rest) celery / local: "
        f"{celery['pss_rest'] / local['pss_rest']:.2f}"
    )
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
