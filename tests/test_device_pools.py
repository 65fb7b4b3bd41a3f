"""One device, one benchmark at a time: pools through the real scheduler.

A small challenge with two phones is run by ``python -m mai_ops.dev.stack`` (the real
scheduler, LocalExecutor, the local S3 server). No phone exists here, so the phones
are the stand-in `adb` (tests/fixtures/adb_standin), whose `benchmark_model` takes
a few seconds and replays a recorded output. The scoring DAG maps two submissions
onto one phone and one onto the other; the task instances' own start and end
times, read back through the REST API, must never overlap on the shared phone and
must overlap across the two.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import time
import zipfile

import pytest
import yaml

from mai_ops.challenge.config import Device, load_challenge
from mai_ops.dev.embedded import free_port, s3_client
from mai_ops.dev.reference_models import build_reference_tflite
from mai_ops.dev.stack import spawn
from mai_ops.devices.pools import (
    VALIDATION_POOL,
    VALIDATION_SLOTS,
    airflow_pools,
    device_pools,
    device_queue,
    device_queues,
    pool_name,
)

from .conftest import PROJECT
from .conftest import rest_api as _api

RUN_TIMEOUT = 420.0

CHALLENGE = {
    "id": "pooltest",
    "title": "Pool test",
    "participants": {"source": "file", "path": "teams.csv"},
    "buckets": {
        "organizers": "pooltest-organizers",
        "submissions": "pooltest-submissions",
        "public": "pooltest-public",
        "results": "pooltest-results",
    },
    "timeline": [
        # The final phase opens at the test data release: uploads before it are refused.
        {
            "name": "test_data_release",
            "title": "Test data",
            "date": str(dt.date.today() - dt.timedelta(days=1)),
        },
        {
            "name": "final_deadline",
            "title": "Final",
            # Ahead of the uploads the test makes: the server's clock judges lateness.
            "date": str(dt.date.today() + dt.timedelta(days=30)),
            "phase": "final_collection",
        },
    ],
    "devices": [
        {"name": "phone_a", "backend": "adb", "serial": "SERIAL-A", "delegate": "gpu"},
        {"name": "phone_b", "backend": "adb", "serial": "SERIAL-B", "delegate": "gpu"},
    ],
    "tracks": [
        {
            "id": track_id,
            "title": track_id,
            "task": "denoise",
            "device": device,
            "inputs": [{"shape": [1, 64, 64, 3], "dtype": "float32"}],
            "outputs": [{"shape": [1, 64, 64, 3], "dtype": "float32"}],
            "metrics": ["psnr"],
            "score": {"formula": "psnr / runtime"},
        }
        for track_id, device in (("on_a", "phone_a"), ("on_b", "phone_b"))
    ],
}


def _wait(predicate, what: str, timeout: float, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"{what} not reached in {timeout:.0f} s\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    challenges = root / "challenges"
    challenges.mkdir()
    (challenges / "pooltest.yaml").write_text(yaml.safe_dump(CHALLENGE))
    (challenges / "teams.csv").write_text(
        "team_id,team_name,email,tracks\n"
        "t1,Team One,one@teams.example,on_a;on_b\n"
        "t2,Team Two,two@teams.example,on_a\n"
    )
    port, s3_port = free_port(), free_port()
    log = root / "stack.log"
    fixtures = PROJECT / "tests" / "fixtures"
    env = {
        **os.environ,
        "MAI_OPS_CHALLENGES_DIR": str(challenges),
        "MAI_OPS_ADB": str(fixtures / "adb_standin" / "adb"),
        "ADB_STANDIN_SCENARIO": "success",
        "ADB_STANDIN_OUTPUT": str(
            fixtures / "benchmark_logs" / "tflite_gpu_full_mixed_prefix_peak_rss.log"
        ),
        # Each benchmark lasts 6 s: long enough for overlaps to be unmistakable.
        "ADB_STANDIN_SLEEP": "6",
    }
    proc = spawn(port, s3_port, root / "airflow", log, env)
    try:
        yield {"port": port, "s3": f"http://127.0.0.1:{s3_port}", "dir": challenges, "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_a_pool_is_the_hardware_a_phone_one_slot_a_cpu_three():
    challenge = load_challenge(PROJECT / "include" / "challenges" / "mai2021.yaml")
    pools = device_pools([challenge])
    # Six litert profiles, one CPU: they take turns at its lock; two more benchmarks get
    # ready while one measures (a LiteRT run lasts about as long as a task's start).
    assert list(pools) == ["mai_device_local_cpu"]
    assert pools["mai_device_local_cpu"]["slots"] == 3
    assert {pool_name(d) for d in challenge.devices} == {"mai_device_local_cpu"}
    phones = load_challenge(PROJECT / "include" / "challenges" / "mai2021.yaml").model_copy(
        update={
            "devices": [
                Device(name="a", backend="adb", serial="R5CN:5555"),
                Device(name="a_again", backend="adb", serial="R5CN:5555"),
                Device(name="b", backend="adb", serial="X1"),
            ]
        }
    )
    pools = device_pools([phones])
    assert sorted(pools) == ["mai_device_adb_R5CN_5555", "mai_device_adb_X1"]
    assert "a_again" in pools["mai_device_adb_R5CN_5555"]["description"]
    assert all(p["slots"] == 1 for p in pools.values())
    # What the project imports: the device pools and the validation server's own pool.
    imported = airflow_pools([phones])
    assert imported[VALIDATION_POOL]["slots"] == VALIDATION_SLOTS >= 2
    assert imported.keys() - {VALIDATION_POOL} == pools.keys()


def test_a_device_host_is_a_queue_and_its_cpu_a_pool_of_its_own():
    """Declared hosts get one queue each; a litert device on a host measures on its CPU."""
    phones = load_challenge(PROJECT / "include" / "challenges" / "mai2021.yaml").model_copy(
        update={
            "devices": [
                Device(name="a", backend="adb", serial="R5CN", host="lab-1"),
                Device(name="b", backend="adb", serial="X1", host="lab-2.example"),
                Device(name="cpu1", host="lab-1"),
                Device(name="cpu1_again", host="lab-1"),
                Device(name="anywhere"),
            ]
        }
    )
    assert device_queues([phones]) == {
        "lab-1": "mai_host_lab-1",
        "lab-2.example": "mai_host_lab-2.example",
    }
    assert device_queue(None) is None  # Airflow's default queue: any worker
    # A phone's pool is its serial, wherever it is plugged in; the CPUs are one per host.
    pools = device_pools([phones])
    assert sorted(pools) == [
        "mai_device_adb_R5CN",
        "mai_device_adb_X1",
        "mai_device_cpu_lab-1",
        "mai_device_local_cpu",
    ]
    assert {name: p["slots"] for name, p in pools.items()} == {
        "mai_device_adb_R5CN": 1,
        "mai_device_adb_X1": 1,
        "mai_device_cpu_lab-1": 3,
        "mai_device_local_cpu": 3,
    }
    assert pools["mai_device_cpu_lab-1"]["description"] == (
        "the CPU of lab-1 (litert): mai2021/cpu1, mai2021/cpu1_again"
    )


def _intervals(tis: list[dict], task_id: str) -> list[tuple[dt.datetime, dt.datetime]]:
    return [
        (dt.datetime.fromisoformat(t["start_date"]), dt.datetime.fromisoformat(t["end_date"]))
        for t in tis
        if t["task_id"] == task_id
    ]


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_standin_phones_one_benchmark_per_phone_through_the_scheduler(pool_stack):
    from mai_ops import tasks
    from mai_ops.dev.test_data import stage_pairs, synthetic_pairs
    from mai_ops.infra.layout import score_key
    from mai_ops.infra.storage import get_json

    port, log = pool_stack["port"], pool_stack["log"]
    _wait(lambda: _api(port, "GET", "/api/v2/pools?limit=100"), "the API", 240, log)
    pools = {p["name"]: p["slots"] for p in _api(port, "GET", "/api/v2/pools?limit=100")["pools"]}
    assert pools.get("mai_device_adb_SERIAL-A") == 1 and pools.get("mai_device_adb_SERIAL-B") == 1

    challenge_file = pool_stack["dir"] / "pooltest.yaml"
    challenge = load_challenge(challenge_file)
    s3 = s3_client(pool_stack["s3"])
    model = build_reference_tflite(challenge.tracks[0])
    for track, team in (("on_a", "t1"), ("on_a", "t2"), ("on_b", "t1")):
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("model.tflite", model)
        s3.put_object(
            Bucket="pooltest-submissions",
            Key=f"{track}/final/{team}/s.zip",
            Body=archive.getvalue(),
        )
    assert tasks.freeze_final(str(challenge_file), s3=s3)["frozen"] == 3
    for track in challenge.tracks:  # the hidden test set the scoring runs the models on
        stage_pairs(s3, "pooltest-organizers", track.id, synthetic_pairs(track, count=1))

    dag = "pooltest__scoring"
    _wait(
        lambda: any(d["dag_id"] == dag for d in _api(port, "GET", "/api/v2/dags")["dags"]),
        "the scoring DAG listed",
        240,
        log,
    )
    run = _api(port, "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": {}})
    run_id = run["dag_run_id"]
    state = _wait(
        lambda: (
            (s := _api(port, "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}")["state"])
            in ("success", "failed")
            and s
        ),
        "the scoring run finished",
        RUN_TIMEOUT,
        log,
    )
    tis = _api(port, "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances?limit=100")
    tis = tis["task_instances"]
    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]

    on_a = _intervals(tis, "score_on_a.benchmark")
    on_b = _intervals(tis, "score_on_b.benchmark")
    assert len(on_a) == 2 and len(on_b) == 1
    assert not _overlap(on_a[0], on_a[1]), f"two benchmarks shared phone_a: {on_a}"
    assert any(_overlap(on_b[0], a) for a in on_a), (
        f"phone_a and phone_b never overlapped: {on_a} {on_b}"
    )
    for ti in tis:
        if ti["task_id"] in ("score_on_a.benchmark", "score_on_b.benchmark"):
            assert ti["pool"] in ("mai_device_adb_SERIAL-A", "mai_device_adb_SERIAL-B")

    records = [
        get_json(s3, "pooltest-results", score_key(e["track"], e["team"], e["sha256"]))
        for e in tasks.list_frozen(str(challenge_file), s3=s3)
    ]
    assert len(records) == 3
    for record in records:
        assert record["status"] == "ok", record
        assert record["runtime"]["backend"] == "adb" and record["runtime"]["count"] > 0
