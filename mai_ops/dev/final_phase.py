"""A generated final phase: N teams, real TFLite models, a staged hidden test set, a frozen set.

What the final-phase benches (``bench/final_phase_overhead.py``, ``bench/scaleout.py``)
and the Celery integration test share: a challenge file with N registered teams spread
over its tracks, one frozen final submission per team (a real TFLite model in a zip of
its own sha256), synthetic hidden test pairs, the final set frozen, and the scoring DAG
run through Airflow, either with ``dag.test()`` in one process or on the local stack of
``make up`` / ``make up-celery`` through the REST API.

**Graded teams.** With ``graded`` every team of a track runs the same model (a 1x1
convolution that copies the input) with another constant added to its output: team k of
a track adds ``0.1 + 0.05 k``. The hidden ground truth is independent noise, so the
PSNR falls with the offset by at least 0.25 dB per team, and the tracks' score formula
(``2 ** (20 * psnr) / runtime``) turns that into a factor of 30 or more between two
neighbours: the fidelity orders the teams, whatever the runtimes measured on a busy
machine. The order is known before anything runs (:func:`expected_order`).

TensorFlow builds the base model of each track once, in a child process
(``python -m mai_ops.dev.final_phase models CHALLENGE OUT``); each team's model is that
file with its constant written into the bias buffer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from mai_ops import PROJECT_ROOT

# The bias every graded base model is built with, found again in the flatbuffer and
# replaced by the team's constant (exactly representable in float32, and unlikely
# anywhere else in a model).
SENTINEL = 0.3173828125
ZIP_TIME = (2021, 3, 20, 17, 0, 0)
# The scoring DAG's form, everything at its default: every track, every team.
CONF = {"track": "all", "team": None, "remeasure": False, "constants": {}, "apply": False}
# A short benchmark (the challenge file default is 50 runs over at least 1 s): the
# graded teams are ordered by their fidelity, not their runtime.
QUICK_DEVICE = {"backend": "litert", "threads": 1, "runs": 10, "warmup": 2, "min_seconds": 0.2}


def graded_track(track_id: str, device: str, shape: tuple[int, int] = (48, 64)) -> dict:
    """A denoising-like track whose teams are ordered by their PSNR (see the module doc)."""
    h, w = shape
    return {
        "id": track_id,
        "title": track_id.capitalize(),
        "task": "denoising",
        "device": device,
        "inputs": [{"name": "x", "shape": [1, h, w, 3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, h, w, 3], "dtype": "float32"}],
        "metrics": ["psnr", "ssim"],
        "score": {
            "formula": "2 ** (alpha * psnr) / (C * runtime)",
            "constants": {"alpha": 20, "C": 1},
        },
    }


# The device host of the scale-out setting: the second track's device is plugged into it.
LAB_HOST = "lab"


def two_tracks_on_two_devices() -> tuple[list[dict], list[dict]]:
    """The scale-out setting (``bench/scaleout.py``, the Celery integration test): two
    graded tracks, ``denoise`` on device ``cpu`` (no host: the default queue) and
    ``enhance`` on ``lab_cpu``, declared on the host :data:`LAB_HOST`."""
    tracks = [
        graded_track("denoise", "cpu", (128, 160)),
        graded_track("enhance", "lab_cpu", (112, 144)),
    ]
    devices = [
        {"name": "cpu", **QUICK_DEVICE},
        {"name": "lab_cpu", "host": LAB_HOST, **QUICK_DEVICE},
    ]
    return tracks, devices


def team_id(i: int) -> str:
    return f"t{i:03d}"


def team_track(i: int, tracks: list[dict]) -> str:
    """Teams take the tracks in turn."""
    return tracks[i % len(tracks)]["id"]


def team_offset(i: int, tracks: list[dict]) -> float:
    """The constant graded team ``i`` adds: its place among its track's teams."""
    return 0.1 + 0.05 * (i // len(tracks))


def expected_order(teams: int, tracks: list[dict]) -> dict[str, list[str]]:
    """Each track's graded teams, best first (the smallest offset has the best PSNR)."""
    order: dict[str, list[str]] = {t["id"]: [] for t in tracks}
    for i in range(teams):
        order[team_track(i, tracks)].append(team_id(i))
    return order


def challenge_file(
    folder: Path,
    teams: int,
    tracks: list[dict],
    devices: list[dict],
    challenge_id: str = "overhead",
) -> Path:
    """``<folder>/<challenge_id>.yaml`` and its participants list: final deadline tomorrow."""
    today = dt.datetime.now(dt.UTC).date()

    def day(offset: int) -> str:
        return (today + dt.timedelta(days=offset)).isoformat()

    config = {
        "id": challenge_id,
        "title": f"Generated final phase ({challenge_id})",
        "timezone": "UTC",
        "participants": {"source": "file", "path": f"{challenge_id}-teams.csv"},
        "buckets": {
            k: f"{challenge_id}-{k}" for k in ("organizers", "submissions", "public", "results")
        },
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
        "devices": devices,
        "tracks": tracks,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{challenge_id}.yaml"
    path.write_text(json.dumps(config))
    rows = [
        f"{team_id(i)},Team {i},{team_id(i)}@teams.example,{team_track(i, tracks)}"
        for i in range(teams)
    ]
    (folder / f"{challenge_id}-teams.csv").write_text(
        "team_id,team_name,email,tracks\n" + "\n".join(rows) + "\n"
    )
    return path


# ---------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------


def _graded_base(track) -> bytes:
    """A 1x1 convolution that copies the input and adds :data:`SENTINEL` (TensorFlow)."""
    import numpy as np
    import tensorflow as tf

    (inp,) = track.inputs
    channels = inp.shape[3]
    x = inputs = tf.keras.Input(shape=tuple(inp.shape[1:]), batch_size=1)
    eye = np.eye(channels, dtype=np.float32).reshape(1, 1, channels, channels)
    x = tf.keras.layers.Conv2D(
        channels,
        1,
        kernel_initializer=tf.keras.initializers.Constant(eye),
        bias_initializer=tf.keras.initializers.Constant(SENTINEL),
    )(x)
    return tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, x)).convert()


def build_models(path: Path, out: Path, graded: bool) -> dict[str, Path]:
    """Each track's base model in ``out`` (``<track>.tflite``), built in a child process."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mai_ops.dev.final_phase", "models", str(path), str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [*cmd, *(["--graded"] if graded else [])], check=True, env=env, stdout=subprocess.DEVNULL
    )
    return {p.stem: p for p in out.glob("*.tflite")}


def _write_models(path: Path, out: Path, graded: bool) -> None:
    from mai_ops.challenge.config import load_challenge
    from mai_ops.dev.reference_models import build_reference_tflite

    for track in load_challenge(path).tracks:
        model = _graded_base(track) if graded else build_reference_tflite(track)
        (out / f"{track.id}.tflite").write_bytes(model)


def with_offset(base: bytes, channels: int, offset: float) -> bytes:
    """``base`` (a graded model) adding ``offset`` instead of :data:`SENTINEL`."""
    old = struct.pack(f"<{channels}f", *[SENTINEL] * channels)
    if base.count(old) != 1:
        raise ValueError(f"the bias of the base model is not found once ({base.count(old)} times)")
    return base.replace(old, struct.pack(f"<{channels}f", *[offset] * channels))


# ---------------------------------------------------------------------------------
# Staging and freezing
# ---------------------------------------------------------------------------------


def stage(s3, challenge, teams: int, models: dict[str, Path], graded: bool) -> None:
    """The hidden test set (2 pairs per track) and one final upload per team."""
    from mai_ops.dev.test_data import stage_synthetic_test_data
    from mai_ops.infra.layout import upload_key

    tracks = [{"id": t.id} for t in challenge.tracks]
    stage_synthetic_test_data(s3, challenge, [t.id for t in challenge.tracks], count=2)
    for i in range(teams):
        track = challenge.track(team_track(i, tracks))
        model = models[track.id].read_bytes()
        if graded:
            model = with_offset(model, track.inputs[0].shape[3], team_offset(i, tracks))
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            # Fixed member times: the same inputs make the same archives (and sha256)
            # wherever they are staged; every team's archive has its own.
            zf.writestr(zipfile.ZipInfo("model.tflite", ZIP_TIME), model)
            zf.writestr(zipfile.ZipInfo("readme.txt", ZIP_TIME), f"team {i}\n")
        key = upload_key(track.id, "final", team_id(i), "submission.zip")
        s3.put_object(Bucket=challenge.buckets.submissions, Key=key, Body=archive.getvalue())


def stage_and_freeze(
    s3, path: Path, challenge, teams: int, models: dict[str, Path], graded: bool
) -> None:
    """Buckets, uploads and hidden test set, then the final set frozen (as after the deadline)."""
    from mai_ops import tasks
    from mai_ops.dev.embedded import ensure_challenge_buckets

    ensure_challenge_buckets(s3, challenge.buckets)
    print(f"staging {teams} submissions over {len(challenge.tracks)} tracks", flush=True)
    stage(s3, challenge, teams, models, graded)
    tasks.freeze_final(path, s3=s3, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))


def _stage_records(s3, challenge, names: tuple[str, ...]):
    """(key, record) of every stored stage file named one of ``names``."""
    from mai_ops.infra.layout import SCORES
    from mai_ops.infra.storage import get_json, list_objects

    for obj in list_objects(s3, challenge.buckets.results, SCORES):
        if obj["Key"].rsplit("/", 1)[-1] in names:
            yield obj["Key"], get_json(s3, challenge.buckets.results, obj["Key"])


def pure_work(s3, challenge) -> dict[str, float]:
    """Seconds the tasks measured inside themselves, per stage, from the stored records
    (a benchmark's wait for its busy device is not work)."""
    from mai_ops.submissions.evaluation import DEVICE_WAIT

    totals: dict[str, float] = {}
    for _, record in _stage_records(
        s3, challenge, ("checks.json", "benchmark.json", "fidelity.json")
    ):
        for name, seconds in (record.get("seconds") or {}).items():
            if name != DEVICE_WAIT:
                totals[name] = totals.get(name, 0.0) + seconds
    return totals


def runtimes(s3, challenge) -> dict[str, float]:
    """Each stored benchmark's median runtime (ms), by its record's key."""
    return {
        key: record["runtime"]["median_ms"]
        for key, record in _stage_records(s3, challenge, ("benchmark.json",))
        if (record.get("runtime") or {}).get("median_ms")
    }


def work_alone(s3, path: Path, challenge) -> dict[str, float]:
    """Score every frozen submission in this process, one after another, and return the
    pure work per stage: what each stage takes with the machine to itself.

    The reference of the overhead bench: tasks that run side by side on a few cores
    each take longer inside, so their own sum would flatter the DAG's wall time.
    """
    from mai_ops import tasks

    for track in challenge.tracks:
        for entry in tasks.list_frozen(path, track.id, s3=s3):
            tasks.score_submission(path, entry, force=True, s3=s3)
    return pure_work(s3, challenge)


def ranking(s3, challenge) -> dict:
    """The ranked table in force (``scores/ranking.json``)."""
    from mai_ops.infra.layout import RANKING
    from mai_ops.infra.storage import get_json

    return get_json(s3, challenge.buckets.results, RANKING)


def leaderboard(table: dict, challenge) -> dict[str, list[tuple]]:
    """What two runs on the same inputs must agree on, per track: each row's rank, team,
    status, fidelity values (rounded to 9 digits), flags and error code. Runtimes and
    scores are measured and differ from run to run."""
    out = {}
    for track in challenge.tracks:
        rows = table["tracks"][track.id]["rows"]
        out[track.id] = [
            (
                row["rank"],
                row["team"],
                row["status"],
                *(None if row[m] is None else round(row[m], 9) for m in track.metrics),
                tuple(row["flags"]),
                row["error"],
                row["sha256"],
            )
            for row in rows
        ]
    return out


# ---------------------------------------------------------------------------------
# Running the scoring DAG
# ---------------------------------------------------------------------------------


def run_in_process(work: Path, path: Path, challenge, teams: int, models, graded: bool) -> dict:
    """dag.test() in this process, one task at a time (how the demo runs a DAG).

    Sets Airflow's environment for a home under ``work``: call it in a process of its
    own, before anything else imports Airflow. Returns the wall time, the run's state,
    the pure work and the ranked table.
    """
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
        os.environ["MAI_OPS_CHALLENGES_DIR"] = str(path.parent)
        migrate_db({**os.environ})
        import_pools({**os.environ}, [challenge])
        s3 = s3_server.client()
        ensure_challenge_buckets(s3, challenge.buckets)
        stage_and_freeze(s3, path, challenge, teams, models, graded)
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag(f"{challenge.id}__scoring")
        started = time.monotonic()
        run = dag.test(run_conf=CONF)
        wall = time.monotonic() - started
        state = str(getattr(run.state, "value", run.state))
        table = ranking(s3, challenge) if state == "success" else None
        return {"wall": wall, "state": state, "pure": pure_work(s3, challenge), "table": table}
    finally:
        smtp.stop()
        s3_server.stop()


class Api:
    """The REST API of a stack on loopback (no login: the stack admits everyone)."""

    def __init__(self, port: int):
        self.port = port

    def __call__(self, method: str, route: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v2{route}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.load(resp)

    def wait_for_dag(self, dag_id: str, timeout: float, alive: Callable[[], bool]) -> None:
        """Until the DAG is parsed (and the API answers); fails if ``alive()`` turns false."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self("GET", f"/dags/{dag_id}")
                return
            except OSError:
                if not alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{dag_id} did not appear on the stack") from None
                time.sleep(2)

    def trigger(self, dag_id: str, conf: dict) -> str:
        self("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run = self("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 3600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            except OSError:  # the api-server is busy or restarting
                state = None
            if state in ("success", "failed"):
                return state
            time.sleep(0.5)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish in {timeout:.0f} s")

    def task_instances(self, dag_id: str, run_id: str = "~", **query) -> list[dict]:
        """Every task instance of the run (all pages)."""
        found: list[dict] = []
        while True:
            params = urllib.parse.urlencode({**query, "limit": 100, "offset": len(found)})
            page = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?{params}")
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]


def spawn_stack(
    work: Path, challenges: Path, executor: str = "local", options: list[str] | None = None
):
    """The local stack (``make up``, or ``make up-celery``) serving ``challenges``, on free
    ports, its home and log under ``work``. Returns (process, Api, S3 endpoint)."""
    from mai_ops.dev.embedded import free_port
    from mai_ops.dev.stack import spawn

    port, s3_port = free_port(), free_port()
    env = {
        **os.environ,
        "MAI_OPS_CHALLENGES_DIR": str(challenges),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    log = work / f"stack-{executor}.log"
    proc = spawn(
        port, s3_port, work / f"airflow-{executor}", log, env, executor=executor, options=options
    )
    return proc, Api(port), f"http://127.0.0.1:{s3_port}"


def score_on_stack(
    work: Path,
    path: Path,
    challenge,
    teams: int,
    models: dict[str, Path],
    graded: bool,
    executor: str = "local",
    options: list[str] | None = None,
    watch: Callable[[int], contextlib.AbstractContextManager] | None = None,
    alone_first: bool = False,
) -> dict:
    """The scoring DAG through a real stack's scheduler: ``make up`` (LocalExecutor) or
    ``make up-celery``, started on free ports under ``work``, stopped (and a Celery
    stack's database and broker keys dropped) afterwards.

    Stages the uploads and freezes the set into the stack's storage, triggers scoring
    through the REST API and waits for the run. ``watch(session id)`` is entered around
    the run (a bench measures memory with it). ``alone_first`` first scores every
    submission in this process (:func:`work_alone`, kept as ``alone``), then has the
    run measure everything again (``alone_runtimes``: the benchmarks' medians then,
    ``runtimes``: after the run; both None without it). Returns the seconds until the
    DAG was served (``up``) and of the run (``wall``), its state, its task instances,
    the pure work and the ranked table (None unless the run succeeded).
    """
    from mai_ops.dev.embedded import s3_client
    from mai_ops.dev.stack import POSTGRES, REDIS, forget_home

    started = time.monotonic()
    proc, api, s3_endpoint = spawn_stack(work, path.parent, executor, options)
    dag_id = f"{challenge.id}__scoring"
    try:
        try:
            api.wait_for_dag(dag_id, 900, lambda: proc.poll() is None)
        except RuntimeError as exc:
            log = (work / f"stack-{executor}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the {executor} stack did not serve {dag_id}:\n{log}") from exc
        up = time.monotonic() - started
        s3 = s3_client(s3_endpoint)
        stage_and_freeze(s3, path, challenge, teams, models, graded)
        alone = work_alone(s3, path, challenge) if alone_first else None
        alone_runtimes = runtimes(s3, challenge) if alone_first else None
        with watch(proc.pid) if watch else contextlib.nullcontext():
            began = time.monotonic()
            run_id = api.trigger(dag_id, CONF | {"remeasure": alone_first})
            state = api.wait_for_run(dag_id, run_id)
            wall = time.monotonic() - began
        return {
            "executor": executor,
            "up": up,
            "wall": wall,
            "state": state,
            "tis": api.task_instances(dag_id, run_id),
            "pure": pure_work(s3, challenge),
            "alone": alone,
            "alone_runtimes": alone_runtimes,
            "runtimes": runtimes(s3, challenge) if alone_first else None,
            "table": ranking(s3, challenge) if state == "success" else None,
        }
    finally:
        stop_stack(proc)
        if executor == "celery":  # the servers the stack used (its --postgres / --redis)
            forget_home(
                work / f"airflow-{executor}",
                os.environ.get("MAI_OPS_STACK_POSTGRES", POSTGRES),
                os.environ.get("MAI_OPS_STACK_REDIS", REDIS),
            )


def stop_stack(proc) -> None:
    """SIGINT to the stack's session, as Ctrl-C would; SIGKILL if it lingers."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mai_ops.dev.final_phase")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="build each track's base model (TensorFlow)")
    models.add_argument("challenge", type=Path)
    models.add_argument("out", type=Path)
    models.add_argument("--graded", action="store_true")
    score = sub.add_parser("score", help="stage, freeze and score the generated final phase")
    score.add_argument("challenge", type=Path)
    score.add_argument("models", type=Path)
    score.add_argument("-n", type=int, required=True)
    score.add_argument("--graded", action="store_true")
    score.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    score.add_argument(
        "--on",
        choices=("in-process", "local", "celery"),
        default="in-process",
        help="dag.test() in this process (default), or the scheduler of make up "
        "(LocalExecutor) or of make up-celery",
    )
    args = parser.parse_args(argv)
    if args.command == "models":
        _write_models(args.challenge, args.out, args.graded)
        return 0
    from mai_ops.challenge.config import load_challenge

    found = {p.stem: p for p in args.models.glob("*.tflite")}
    challenge = load_challenge(args.challenge)
    with tempfile.TemporaryDirectory(prefix="mai-final-phase-") as tmp:
        if args.on == "in-process":
            result = run_in_process(
                Path(tmp), args.challenge, challenge, args.n, found, args.graded
            )
        else:
            result = score_on_stack(
                Path(tmp), args.challenge, challenge, args.n, found, args.graded, args.on
            )
            result.pop("tis")
    args.out.write_text(json.dumps(result))
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
