"""Airflow's overhead on the final scoring: DAG wall time against the work inside the tasks.

Generates a challenge with three tracks (PSNR/SSIM, si-RMSE, top-k), N registered teams
and N frozen final submissions spread over the tracks (real TFLite models, a staged
hidden test set), then runs the scoring DAG through Airflow on the embedded default:
the local stack of ``make up`` (scheduler, LocalExecutor, the local S3-compatible and
SMTP servers), the run triggered through the REST API; ``--in-process`` runs it with
``dag.test()`` one task at a time, as ``make demo`` does. Pure work
is what the tasks measured inside themselves, from the stored stage records: the
checks (integrity, unpack, conversion, checks), the benchmark and the fidelity run of
every submission. Everything else (task start, XCom, the per-task S3 reads and writes,
the ranking and its Great Expectations validation, the scheduler loop) is overhead.

Reference: the pure work itself (ratio 1.0). Target: wall / pure work <= 1.3 at N = 100.

    .venv/bin/python bench/final_phase_overhead.py -n 20
    .venv/bin/python bench/final_phase_overhead.py -n 100

The last line is ``ratio=<wall / pure work>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET = 1.3
TRACKS = [
    {
        "id": "denoise",
        "title": "Denoising",
        "task": "denoising",
        "device": "cpu",
        "inputs": [{"name": "x", "shape": [1, 96, 128, 3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 96, 128, 3], "dtype": "float32"}],
        "metrics": ["psnr", "ssim"],
        "score": {
            "formula": "2 ** (alpha * psnr) / (C * runtime)",
            "constants": {"alpha": 0.5, "C": 1},
        },
    },
    {
        "id": "depth",
        "title": "Depth",
        "task": "depth",
        "device": "cpu",
        "inputs": [{"name": "x", "shape": [1, 96, 128, 3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 96, 128, 1], "dtype": "float32"}],
        "metrics": ["si_rmse"],
        "score": {
            "formula": "2 ** (-alpha * si_rmse) / (C * runtime)",
            "constants": {"alpha": 20, "C": 1},
        },
    },
    {
        "id": "scenes",
        "title": "Scenes",
        "task": "classification",
        "device": "cpu",
        "inputs": [{"name": "x", "shape": [1, 64, 64, 3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 8], "dtype": "float32"}],
        "metrics": ["top1", "top3"],
        "score": {
            "formula": "2 ** (alpha * top1) / (C * runtime)",
            "constants": {"alpha": 10, "C": 1},
        },
    },
]


def challenge_file(folder: Path, teams: int) -> Path:
    today = dt.datetime.now(dt.UTC).date()

    def day(offset: int) -> str:
        return (today + dt.timedelta(days=offset)).isoformat()

    config = {
        "id": "overhead",
        "title": "Final phase overhead bench",
        "timezone": "UTC",
        "participants": {"source": "file", "path": "teams.csv"},
        "buckets": {k: f"overhead-{k}" for k in ("organizers", "submissions", "public", "results")},
        "timeline": [
            {"name": "train_data_release", "title": "Train", "date": day(-30)},
            {"name": "validation_server_online", "title": "Validation", "date": day(-29)},
            {"name": "test_data_release", "title": "Test", "date": day(-3)},
            {
                "name": "final_deadline",
                "title": "Deadline",
                "date": day(1),
                "phase": "final_collection",
            },
            {
                "name": "preliminary_results",
                "title": "Results",
                "date": day(3),
                "phase": "preliminary_results",
            },
        ],
        # The device defaults of a challenge file (50 timed runs lasting at least 1 s).
        "devices": [{"name": "cpu", "backend": "litert", "threads": 1}],
        "tracks": TRACKS,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "overhead.yaml"
    path.write_text(json.dumps(config))
    rows = [f"t{i:03d},Team {i},t{i:03d}@teams.example,{TRACKS[i % 3]['id']}" for i in range(teams)]
    (folder / "teams.csv").write_text("team_id,team_name,email,tracks\n" + "\n".join(rows) + "\n")
    return path


def stage(s3, challenge, teams: int) -> None:
    from mai_ops.dev.reference_models import build_reference_tflite
    from mai_ops.dev.test_data import stage_synthetic_test_data
    from mai_ops.infra.layout import upload_key

    models = {t.id: build_reference_tflite(t) for t in challenge.tracks}
    stage_synthetic_test_data(s3, challenge, [t.id for t in challenge.tracks], count=2)
    for i in range(teams):
        track = TRACKS[i % 3]["id"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("model.tflite", models[track])
            zf.writestr("readme.txt", f"team {i}\n")  # every archive has its own sha256
        key = upload_key(track, "final", f"t{i:03d}", "submission.zip")
        s3.put_object(Bucket=challenge.buckets.submissions, Key=key, Body=archive.getvalue())


def pure_work(s3, challenge) -> dict[str, float]:
    """Seconds the tasks measured inside themselves, per stage, from the stored records."""
    from mai_ops.infra.layout import SCORES
    from mai_ops.infra.storage import get_json, list_objects

    totals: dict[str, float] = {}
    for obj in list_objects(s3, challenge.buckets.results, SCORES):
        name = obj["Key"].rsplit("/", 1)[-1]
        if name in ("checks.json", "benchmark.json", "fidelity.json"):
            record = get_json(s3, challenge.buckets.results, obj["Key"])
            for stage, seconds in (record.get("seconds") or {}).items():
                totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


CONF = {"track": "all", "team": None, "remeasure": False, "constants": {}, "apply": False}


def run_in_process(work: Path, path: Path, challenge, n: int) -> tuple[float, str, dict]:
    """dag.test() in this process, one task at a time (how the demo runs a DAG)."""
    from mai_ops.dev.demo import airflow_env, migrate_db
    from mai_ops.dev.embedded import LocalS3, LocalSMTP, connection_env, ensure_challenge_buckets
    from mai_ops.devices.pools import import_pools

    s3_server = LocalS3().start()
    smtp = LocalSMTP(work / "outbox")
    smtp.start()
    try:
        os.environ.update(airflow_env(work / "airflow"))
        os.environ.update(connection_env(s3_server.endpoint_url, smtp.host, smtp.port))
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
        migrate_db({**os.environ})
        import_pools({**os.environ}, [challenge])
        s3 = s3_server.client()
        ensure_challenge_buckets(s3, challenge.buckets)
        stage_and_freeze(s3, path, challenge, n)
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(PROJECT / "dags")).get_dag("overhead__scoring")
        started = time.monotonic()
        run = dag.test(run_conf=CONF)
        return time.monotonic() - started, str(run.state), pure_work(s3, challenge)
    finally:
        smtp.stop()
        s3_server.stop()


def run_on_stack(work: Path, path: Path, challenge, n: int) -> tuple[float, str, dict]:
    """The local stack of ``make up`` (scheduler, LocalExecutor, API server), by its API."""
    import signal
    import subprocess
    import urllib.request

    from mai_ops.dev.embedded import free_port, s3_client
    from mai_ops.dev.stack import spawn

    def api(method: str, route: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v2{route}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.load(resp)

    port, s3_port = free_port(), free_port()
    env = {**os.environ, "MAI_OPS_CHALLENGES_DIR": str(path.parent)}
    stack = spawn(port, s3_port, work / "airflow", work / "stack.log", env)
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                api("GET", "/dags/overhead__scoring")
                break
            except OSError:
                if stack.poll() is not None or time.monotonic() > deadline:
                    print((work / "stack.log").read_text()[-3000:])
                    raise SystemExit("the stack did not come up") from None
                time.sleep(2)
        s3 = s3_client(f"http://127.0.0.1:{s3_port}")
        stage_and_freeze(s3, path, challenge, n)
        api("PATCH", "/dags/overhead__scoring", {"is_paused": False})
        started = time.monotonic()
        run = api(
            "POST",
            "/dags/overhead__scoring/dagRuns",
            {"logical_date": None, "conf": CONF},
        )
        while True:
            state = api("GET", f"/dags/overhead__scoring/dagRuns/{run['dag_run_id']}")["state"]
            if state in ("success", "failed"):
                break
            time.sleep(0.5)
        return time.monotonic() - started, state, pure_work(s3, challenge)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)


def stage_and_freeze(s3, path: Path, challenge, n: int) -> None:
    from mai_ops import tasks
    from mai_ops.dev.embedded import ensure_challenge_buckets

    ensure_challenge_buckets(s3, challenge.buckets)
    print(f"building models and staging {n} submissions over 3 tracks", flush=True)
    stage(s3, challenge, n)
    tasks.freeze_final(path, s3=s3, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="frozen submissions (default 20)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the DAG with dag.test() in this process, one task at a time, as the demo "
        "does (default: on the local stack of make up: scheduler and LocalExecutor)",
    )
    args = parser.parse_args()

    from mai_ops.challenge.config import load_challenge

    with tempfile.TemporaryDirectory(prefix="mai-overhead-") as tmp:
        work = Path(tmp)
        path = challenge_file(work / "challenges", args.n)
        os.environ["MAI_OPS_CHALLENGES_DIR"] = str(path.parent)
        challenge = load_challenge(path)
        runner = run_in_process if args.in_process else run_on_stack
        wall, state, work_by_stage = runner(work, path, challenge, args.n)
    pure = sum(work_by_stage.values())
    tasks_run = 4 * args.n + len(TRACKS) + 1
    mode = "dag.test in process, one task at a time" if args.in_process else "local stack"
    print(f"run state: {state}; {tasks_run} task instances; {mode}")
    print(f"wall time of the scoring DAG: {wall:.1f} s")
    print(
        "pure work inside the tasks: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(work_by_stage.items()))
    )
    per_task = (wall - pure) / tasks_run
    print(
        f"pure work total: {pure:.1f} s; wall minus pure work {wall - pure:.1f} s "
        f"({per_task:.2f} s per task instance)"
    )
    print(f"target: ratio <= {TARGET} at N = 100")
    print(f"ratio={wall / pure:.2f}")
    return 0 if state.endswith("success") else 1


if __name__ == "__main__":
    sys.exit(main())
